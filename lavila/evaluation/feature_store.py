"""The on-disk layout of extracted features (written by ``extract_features.py``, read by ``lavila.search``).

    <out>/extract_config.json     the settings (model, windows, feature kind); a relaunch must match them
    <out>/features/<video>.pt     {"features" (N, ...) float32, "start_s", "end_s" (N,), "fps", "video", "kind"}
                     or .npy      the features array alone (--format npy)
    <out>/windows/<video>.json    video, source, chunk_len, fps, start_s, end_s, file: written after the features
                                  file, it marks the video finished (a relaunch skips it)
    <out>/index.csv               video, window, start_s, end_s: every window of every finished video
    <out>/videos.csv              video, source, chunk_len, fps, windows, file
    <out>/bad_videos.csv          video, source, reason: the videos skipped in the last run
    <out>/text_features.pt        {"texts", "features"} (--text; .npy + text_features.txt with --format npy)

Every file is written atomically (:func:`lavila.utils.checkpoint.atomic_write`): a killed run leaves whole files or
none. ``<video>`` may contain ``/`` (videos in sub-folders keep their relative path).
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavila.utils.checkpoint import atomic_write, load_checkpoint, save_checkpoint

__all__ = ["CONFIG_FILE", "INDEX_FILE", "VIDEOS_FILE", "BAD_FILE", "feature_path", "sidecar_path", "is_done",
           "write_video_features", "read_sidecar", "write_csv", "write_index", "read_index", "load_features",
           "write_text_features", "load_text_features", "write_json", "check_config"]

CONFIG_FILE, INDEX_FILE, VIDEOS_FILE, BAD_FILE = "extract_config.json", "index.csv", "videos.csv", "bad_videos.csv"
INDEX_COLUMNS = ("video", "window", "start_s", "end_s")
VIDEOS_COLUMNS = ("video", "source", "chunk_len", "fps", "windows", "file")


def feature_path(out: str | os.PathLike, video: str, fmt: str = "pt") -> Path:
    return Path(out) / "features" / f"{video}.{fmt}"


def sidecar_path(out: str | os.PathLike, video: str) -> Path:
    return Path(out) / "windows" / f"{video}.json"


def is_done(out: str | os.PathLike, video: str, fmt: str = "pt") -> bool:
    """Finished in an earlier run: its sidecar (written last) and its features file are both there."""
    return sidecar_path(out, video).is_file() and feature_path(out, video, fmt).is_file()


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_video_features(out: str | os.PathLike, video: str, source: str, chunk_len: float, result: Mapping[str, Any],
                         kind: str, fmt: str = "pt") -> Path:
    """Write one video's features, then its sidecar (the finished mark)."""
    path = feature_path(out, video, fmt)
    features = result["features"]
    if fmt == "npy":
        atomic_write(path, lambda f: np.save(f, features.numpy()))
    else:
        save_checkpoint({"features": features, "start_s": torch.as_tensor(result["start_s"]),
                         "end_s": torch.as_tensor(result["end_s"]), "fps": float(result["fps"]), "video": video,
                         "kind": kind}, path)
    meta = {"video": video, "source": source, "chunk_len": chunk_len, "fps": float(result["fps"]),
            "source_frames": int(result["source_frames"]), "file": str(path.relative_to(out)),
            "start_s": [float(x) for x in result["start_s"]], "end_s": [float(x) for x in result["end_s"]]}
    _write_text(sidecar_path(out, video), json.dumps(meta))
    return path


def read_sidecar(out: str | os.PathLike, video: str) -> dict[str, Any]:
    return json.loads(sidecar_path(out, video).read_text())


def write_csv(path: str | os.PathLike, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(columns))
    writer.writerows(rows)
    return _write_text(Path(path), buffer.getvalue())


def write_index(out: str | os.PathLike, videos: Iterable[str]) -> tuple[Path, Path]:
    """``index.csv`` and ``videos.csv`` of the finished ``videos`` (in that order), from their sidecars."""
    index, table = [], []
    for video in videos:
        meta = read_sidecar(out, video)
        for k, (s, e) in enumerate(zip(meta["start_s"], meta["end_s"])):
            index.append((video, k, f"{s:.6f}", f"{e:.6f}"))
        table.append((video, meta["source"], meta["chunk_len"], f"{meta['fps']:.6f}", len(meta["start_s"]),
                      meta["file"]))
    return (write_csv(Path(out) / INDEX_FILE, INDEX_COLUMNS, index),
            write_csv(Path(out) / VIDEOS_FILE, VIDEOS_COLUMNS, table))


def read_index(out: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """(window rows of ``index.csv``, ``{video: row of videos.csv}``)."""
    path = Path(out) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run extract_features.py --output-dir {out} first (the index is "
                                "written when every process has finished)")
    with open(path, newline="") as f:
        rows = [{"video": r["video"], "window": int(r["window"]), "start_s": float(r["start_s"]),
                 "end_s": float(r["end_s"])} for r in csv.DictReader(f)]
    with open(Path(out) / VIDEOS_FILE, newline="") as f:
        videos = {r["video"]: r for r in csv.DictReader(f)}
    return rows, videos


def load_features(out: str | os.PathLike, videos: Mapping[str, Mapping[str, str]]) -> dict[str, torch.Tensor]:
    """``{video: features}`` of the videos listed in ``videos.csv``."""
    feats = {}
    for video, row in videos.items():
        path = Path(out) / row["file"]
        if path.suffix == ".npy":
            feats[video] = torch.from_numpy(np.load(path))
        else:
            feats[video] = load_checkpoint(path)["features"]
        if len(feats[video]) != int(row["windows"]):
            raise ValueError(f"{path} holds {len(feats[video])} windows, the index {row['windows']}: re-run the "
                             "extraction into a fresh --output-dir")
    return feats


def write_text_features(out: str | os.PathLike, texts: list[str], features: torch.Tensor, fmt: str = "pt") -> Path:
    if fmt == "npy":
        _write_text(Path(out) / "text_features.txt", "".join(t + "\n" for t in texts))
        return atomic_write(Path(out) / "text_features.npy", lambda f: np.save(f, features.numpy()))
    return save_checkpoint({"texts": list(texts), "features": features}, Path(out) / "text_features.pt")


def load_text_features(out: str | os.PathLike) -> tuple[list[str], torch.Tensor] | None:
    out = Path(out)
    if (out / "text_features.pt").is_file():
        obj = load_checkpoint(out / "text_features.pt")
        return list(obj["texts"]), obj["features"]
    if (out / "text_features.npy").is_file():
        texts = (out / "text_features.txt").read_text().splitlines()
        return texts, torch.from_numpy(np.load(out / "text_features.npy"))
    return None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return _write_text(Path(path), json.dumps(obj, indent=1))


def check_config(out: str | os.PathLike, config: Mapping[str, Any], write: bool = True) -> None:
    """Check that an earlier run's ``extract_config.json`` matches ``config`` (a resumed run must not mix features
    of different settings); without one, write it (``write``: rank 0 only)."""
    path = Path(out) / CONFIG_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff)
            raise ValueError(f"{path} was written with other settings ({changes}); resume with the same flags or "
                             "use a new --output-dir")
        return
    if write:
        write_json(path, dict(config))
