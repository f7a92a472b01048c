"""Errors of annotation files that do not parse, naming the file, the line and the column (what the dataset
modules raise; the entry scripts print them as one ``error:`` line)."""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import pandas as pd


class AnnotationError(ValueError):
    """An annotation file (CSV / JSON / pickle) whose content does not parse."""


def row_error(path: str | os.PathLike, line: int, column: str, value: Any, expected: str) -> AnnotationError:
    """``<path>, line <line>, column <column>: <value> ...; expected <expected>``."""
    return AnnotationError(f"{path}, line {line}, column {column}: cannot parse {value!r}; expected {expected}")


def csv_line(row_position: int) -> int:
    """The file line of a CSV data row (0-based position in the DataFrame; the header is line 1)."""
    return row_position + 2


def parse_column(df: pd.DataFrame, column: str, parse: Callable[[Any], Any], path: str | os.PathLike,
                 expected: str) -> list[Any]:
    """``parse`` applied to every value of ``df[column]``; the first value that fails names its line and column."""
    out = []
    for position, value in enumerate(df[column]):
        try:
            out.append(parse(value))
        except (TypeError, ValueError) as exc:
            raise row_error(path, csv_line(position), column, value, expected) from exc
    return out


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """``pandas.read_csv``; a malformed row (wrong number of fields, bad quoting) names the file and its line."""
    try:
        return pd.read_csv(path)
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f", line {line.group(1)}" if line else ""
        raise AnnotationError(f"{path}{where}: not a valid CSV row ({str(exc).strip()}); fix or remove that line"
                              ) from exc
    except (UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise AnnotationError(f"{path}: not a readable CSV file ({exc})") from exc


def load_json(path: str | os.PathLike) -> Any:
    """``json.load``; invalid JSON names the file, line and column."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from exc
        except UnicodeDecodeError as exc:
            raise AnnotationError(f"{path}: not a UTF-8 JSON file ({exc})") from exc
