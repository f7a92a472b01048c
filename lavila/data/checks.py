"""Start-up checks of EK100-format annotations, run before the first step (and before any model is built).

Each failure is one :class:`DataCheckError` line naming the file, the line (as an editor numbers it: the header is
line 1) and the column, with the fix. Checked:

* required columns (clip CSVs: ``narration_id video_id start_timestamp stop_timestamp narration``, plus
  ``verb_class noun_class`` where labels are used; sentence CSVs: ``narration_id narration``);
* timestamps parse as ``HH:MM:SS.ff`` (a message says so when they look like seconds) and start <= stop;
* narrations are not empty; class ids are integers;
* every ``video_id`` resolves to files under the video root: a folder of chunks, or with ``--video-chunk-length 0``
  ``<root>/<id>.mp4`` (the message names the other layout when that one is on disk);
* segments lie within their video: the duration comes from the container headers (no frame is decoded), and the
  segments ending after it are counted and logged once (their frames are taken from the video's end).

Only CSVs and video headers are read: a 100k-row CSV over a few hundred videos is checked in seconds.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lavila.data.video import VideoDecodeError, _chunk_file, find_chunk_layout, video_path_key

log = logging.getLogger("lavila")

CLIP_COLUMNS = ("narration_id", "video_id", "start_timestamp", "stop_timestamp", "narration")
LABEL_COLUMNS = ("verb_class", "noun_class")
SENTENCE_COLUMNS = ("narration_id", "narration")
CHUNK_FLAG = "--video-chunk-length"
END_TOLERANCE_S = 0.5  # annotation rounding; the loader clamps to the last frame anyway
_HMS = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")
_SECONDS = re.compile(r"^\d+(\.\d+)?$")


class DataCheckError(ValueError):
    """An annotation or video layout problem found at start-up (one line: file, line, column, fix)."""


def _where(path: str | os.PathLike, index: int, column: str) -> str:
    return f"{path}, line {index + 2}, column {column}"  # +1 for the header, +1 for 1-based lines


def _read(path: str | os.PathLike, flag: str) -> pd.DataFrame:
    if not os.path.isfile(path):
        raise DataCheckError(f"annotation file {path} not found (check {flag})")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataCheckError(f"{path} is not a readable CSV ({str(exc).splitlines()[0]}); check {flag}") from None


def _require(df: pd.DataFrame, path: str | os.PathLike, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataCheckError(f"{path}, line 1: the {what} lacks column(s) {', '.join(missing)} (has: "
                             f"{', '.join(df.columns)}); EK100 columns are described in docs/OWN_DATA.md")


def _not_empty(df: pd.DataFrame, path: str | os.PathLike, column: str) -> None:
    empty = np.flatnonzero(df[column].str.strip().eq("").to_numpy())
    if len(empty):
        raise DataCheckError(f"{_where(path, int(empty[0]), column)}: empty {column} ({len(empty)} empty row(s)); "
                             "fill in the text or remove the row")


def _seconds(df: pd.DataFrame, path: str | os.PathLike, column: str) -> np.ndarray:
    values = df[column].str.strip()
    parts = values.str.extract(_HMS)  # one pass: NaN where the value is not HH:MM:SS.ff
    bad = np.flatnonzero(parts[0].isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        value = values.iat[i]
        hint = (f"it looks like seconds; write times as HH:MM:SS.ff (e.g. {_as_hms(float(value))})"
                if _SECONDS.match(value) else "expected HH:MM:SS.ff, e.g. 00:01:02.50")
        raise DataCheckError(f"{_where(path, i, column)}: timestamp {value!r} does not parse ({len(bad)} such "
                             f"row(s)); {hint}")
    h, m, s = (parts[k].to_numpy(dtype=np.float64) for k in range(3))
    return h * 3600 + m * 60 + s


def _as_hms(seconds: float) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


def _integers(df: pd.DataFrame, path: str | os.PathLike, column: str) -> None:
    bad = np.flatnonzero(~df[column].str.strip().str.fullmatch(r"\d+").to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataCheckError(f"{_where(path, i, column)}: {df[column].iat[i]!r} is not a class id (a whole number "
                             f">= 0; {len(bad)} such row(s))")


def _header_duration(path: str) -> float | None:
    """Seconds in a video file from its container header (PyAV; None when it does not say)."""
    try:
        import av

        with av.open(path) as container:
            if container.duration is not None:
                return container.duration / 1_000_000  # AV_TIME_BASE
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to report, with its policy
        return None
    return None


def _other_layout_hint(root: str, video_id: str, chunk_len: float) -> str:
    if chunk_len > 0:
        try:
            single = video_path_key(root, video_id, 0)
        except VideoDecodeError:
            return f"check the root folder, and {CHUNK_FLAG} (15-s chunk folders: 15; one file per video: 0)"
        return f"{single} exists: for one file per video pass {CHUNK_FLAG} 0"
    try:
        folder = video_path_key(root, video_id, 15.0)
    except VideoDecodeError:
        return f"check the root folder, and {CHUNK_FLAG} (15-s chunk folders: 15; one file per video: 0)"
    return f"{folder}/ is a folder of chunks: pass {CHUNK_FLAG} with their length in seconds (15 for EK100)"


def video_duration(root: str | os.PathLike, video_id: str, chunk_len: float) -> float | None:
    """Duration in seconds of ``video_id`` from headers only (chunked: the last chunk's start + its duration)."""
    key = video_path_key(root, video_id, chunk_len)
    if chunk_len <= 0:
        return _header_duration(key)
    naming, present = find_chunk_layout(key, chunk_len)
    last = _header_duration(_chunk_file(key, present[-1], naming, chunk_len))
    return None if last is None else present[-1] * chunk_len + last


def check_videos(path: str | os.PathLike, video_ids: pd.Series, stops: np.ndarray | None, root: str | os.PathLike,
                 chunk_len: float, root_flag: str = "--root", locate: Any = None) -> int:
    """Every id resolves to files under ``root``; returns how many segments end after their video. ``locate(path,
    row, column)`` words a row's place (default: CSV line and column)."""
    locate = locate or _where
    root = str(root)
    if not os.path.isdir(root):
        raise DataCheckError(f"video root {root} is not a folder (check {root_flag})")
    ids = video_ids.str.strip().to_numpy()
    unique, first_row = np.unique(ids, return_index=True)
    durations: dict[str, float | None] = {}
    missing = []
    for vid, row in zip(unique, first_row):
        try:
            if stops is None:
                video_path_key(root, vid, chunk_len)
            else:
                durations[vid] = video_duration(root, vid, chunk_len)
        except VideoDecodeError:
            missing.append((int(row), vid))
    if missing:
        row, vid = min(missing)
        raise DataCheckError(f"{locate(path, row, 'video_id')}: video {vid!r} not found under {root} "
                             f"({len(missing)} of {len(unique)} videos missing); "
                             f"{_other_layout_hint(root, vid, chunk_len)}")
    if stops is None:
        return 0
    limit = np.array([durations.get(v) if durations.get(v) is not None else np.inf for v in ids], dtype=np.float64)
    beyond = np.flatnonzero(stops > limit + END_TOLERANCE_S)
    if len(beyond):
        i = int(beyond[0])
        log.warning("%s: %d of %d segments end after their video (first: %s, video %s, stop %.2f s > %.2f s);"
                    " their last frames are taken from the video's end", path, len(beyond), len(ids),
                    locate(path, i, "stop").split(", ", 1)[1], ids[i], stops[i], limit[i])
    return len(beyond)


def check_ek100_csv(path: str | os.PathLike, root: str | os.PathLike | None = None, chunk_len: float = 15.0,
                    labels: bool = True, narrations: bool = True, flag: str = "--train-metadata",
                    root_flag: str = "--root") -> dict[str, int]:
    """Check an EK100 clip CSV (and its videos under ``root`` when given). Returns ``rows``, ``videos``,
    ``beyond_end``; raises :class:`DataCheckError`."""
    df = _read(path, flag)
    _require(df, path, CLIP_COLUMNS + (LABEL_COLUMNS if labels else ()), "clip CSV")
    if len(df) == 0:
        raise DataCheckError(f"{path} has a header but no rows (check {flag})")
    if narrations:
        _not_empty(df, path, "narration")
    _not_empty(df, path, "video_id")
    for column in LABEL_COLUMNS if labels else ():
        _integers(df, path, column)
    start, stop = _seconds(df, path, "start_timestamp"), _seconds(df, path, "stop_timestamp")
    reversed_rows = np.flatnonzero(stop < start)
    if len(reversed_rows):
        i = int(reversed_rows[0])
        raise DataCheckError(f"{_where(path, i, 'stop_timestamp')}: stop {df['stop_timestamp'].iat[i]} is before "
                             f"start {df['start_timestamp'].iat[i]} ({len(reversed_rows)} such row(s))")
    beyond = check_videos(path, df["video_id"], stop, root, chunk_len, root_flag) if root is not None else 0
    return {"rows": len(df), "videos": int(df["video_id"].nunique()), "beyond_end": beyond}


def check_sentence_csv(path: str | os.PathLike, flag: str = "--val-metadata") -> int:
    """Check an EK100 MIR sentence CSV (``narration_id``, non-empty ``narration``); returns its row count."""
    if not os.path.isfile(path):
        raise DataCheckError(f"sentence file {path} not found (EK100 MIR needs the <clip csv stem>_sentence.csv "
                             f"beside the clip CSV given by {flag})")
    df = _read(path, flag)
    _require(df, path, SENTENCE_COLUMNS, "sentence CSV")
    _not_empty(df, path, "narration")
    return len(df)


def check_mir(path: str | os.PathLike, root: str | os.PathLike | None, chunk_len: float, training: bool,
              flag: str, root_flag: str = "--root", sentences: str | os.PathLike | None = None) -> dict[str, int]:
    """An EK100 MIR split: its clip CSV, its sentence CSV and its videos (logged summary)."""
    from lavila.data.relevancy import default_sentence_path

    report = check_ek100_csv(path, root, chunk_len, labels=training, flag=flag, root_flag=root_flag)
    report["sentences"] = check_sentence_csv(sentences or default_sentence_path(path), flag)
    _log_ok(path, report)
    return report


def check_cls(path: str | os.PathLike, root: str | os.PathLike | None, chunk_len: float, flag: str,
              root_flag: str = "--root") -> dict[str, int]:
    """An EK100 classification split (labels required; narrations may be empty)."""
    report = check_ek100_csv(path, root, chunk_len, labels=True, narrations=False, flag=flag, root_flag=root_flag)
    _log_ok(path, report)
    return report


def check_clip_items(items: Sequence[Any], source: str, root: str | os.PathLike, chunk_len: float,
                     root_flag: str = "--root") -> dict[str, int]:
    """Ego4D-style ``(video_uid, start_sec, end_sec, narration, ...)`` items of a metadata pickle: start <= end and
    every video resolves to files under ``root``."""
    def locate(path: str, row: int, column: str) -> str:
        return f"{path}, item {row}, {column}"

    starts = np.array([float(it[1]) for it in items], dtype=np.float64)
    stops = np.array([float(it[2]) for it in items], dtype=np.float64)
    reversed_rows = np.flatnonzero(stops < starts)
    if len(reversed_rows):
        i = int(reversed_rows[0])
        raise DataCheckError(f"{locate(source, i, 'end_sec')}: end {stops[i]} is before start {starts[i]} "
                             f"({len(reversed_rows)} such item(s))")
    ids = pd.Series([str(it[0]) for it in items])
    beyond = check_videos(source, ids, stops, root, chunk_len, root_flag, locate)
    report = {"rows": len(items), "videos": int(ids.nunique()), "beyond_end": beyond}
    _log_ok(source, report)
    return report


def _log_ok(path: str | os.PathLike, report: dict[str, int]) -> None:
    log.info("checked %s: %d rows, %d videos%s", Path(path).name, report["rows"], report["videos"],
             f", {report['sentences']} sentences" if "sentences" in report else "")
