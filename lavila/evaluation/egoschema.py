"""EgoSchema scoring and submission files.

Predictions are written in the official submission format, a JSON object ``{q_uid: answer index}``, plus the CSV
``q_uid,answer`` that the reference also writes. With an answers file (``{q_uid: answer index}``, e.g. the public
500-question subset) the accuracy is computed locally over the answered questions; nothing is posted anywhere.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["score", "write_predictions", "load_predictions", "load_answers"]


def _read_json_mapping(path: str | os.PathLike, what: str) -> dict[str, int]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EgoSchema {what} file {path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"EgoSchema {what} file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"EgoSchema {what} file {path} must hold a JSON object {{q_uid: answer index}}")
    try:
        return {str(k): int(v) for k, v in data.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"EgoSchema {what} file {path}: answers must be integers 0-4 ({exc})") from exc


def load_answers(path: str | os.PathLike) -> dict[str, int]:
    """Answers file ``{q_uid: correct option index}``."""
    return _read_json_mapping(path, "answers")


def load_predictions(path: str | os.PathLike) -> dict[str, int]:
    """A submission JSON ``{q_uid: predicted option index}`` (as written by :func:`write_predictions`)."""
    return _read_json_mapping(path, "predictions")


def score(predictions: Mapping[str, int], answers: Mapping[str, int]) -> dict[str, float | int]:
    """Accuracy (fraction) over the questions that have both an answer and a prediction.

    Returns ``accuracy``, ``correct``, ``total`` (questions scored), ``unanswered`` (predictions without a known
    answer, not scored) and ``missing`` (answers without a prediction, not scored).
    """
    scored = [q for q in predictions if q in answers]
    correct = sum(int(predictions[q]) == int(answers[q]) for q in scored)
    total = len(scored)
    return {
        "accuracy": correct / total if total else float("nan"),
        "correct": correct,
        "total": total,
        "unanswered": len(predictions) - total,
        "missing": sum(q not in predictions for q in answers),
    }


def write_predictions(predictions: Mapping[str, int], output_dir: str | os.PathLike,
                      name: str = "egoschema_predictions") -> tuple[Path, Path]:
    """Write ``<name>.json`` (official submission format) and ``<name>.csv`` (``q_uid,answer``); returns both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"{name}.json", out / f"{name}.csv"
    json_path.write_text(json.dumps({str(k): int(v) for k, v in predictions.items()}, indent=1))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["q_uid", "answer"])
        for q, a in predictions.items():
            writer.writerow([q, int(a)])
    return json_path, csv_path
