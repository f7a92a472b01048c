"""Charades-Ego (first-person videos) on the real annotation files: untrimmed multi-label evaluation and trimmed
clips for fine-tuning.

Files::

    CharadesEgo_v1_{train,test}_only1st.csv   header + rows; column 0 the video id, column 9 the actions
                                              "c092 11.90 21.20;c147 0.00 12.60" (may be empty), column 10 the
                                              video length in seconds
    Charades_v1_classes.txt                   "c000 Holding some clothes" per line (157 classes)
    metadata_filtered_{train,val}.pkl         LaViLa's trimmed clips: a list of (video_id, start_sec, end_sec,
                                              narration) tuples (read with the restricted unpickler)
    <root>/<id>.mp4                           one file per video (CharadesEgo_v1_480/)

Evaluation (:class:`CharadesEgoDataset`): one item per video, ``num_frames`` (16) frames sampled sparsely (segment
midpoints) over ``[0, length]`` (the CSV's length column, clamped to the file), target a multi-hot (C,) float
vector of the classes in column 9 (all zero for a video without actions). Fine-tuning
(:class:`CharadesEgoClipDataset`): ``(frames, tokens)`` of a trimmed clip and its narration (InfoNCE).
"""
from __future__ import annotations

import csv
import os

import torch

from lavila.data.class_list import read_class_list
from lavila.data.clips import ClipDataset
from lavila.data.tokenizer import tokenize

__all__ = ["load_classes", "parse_actions", "load_videos", "load_trimmed_clips", "CharadesEgoDataset",
           "CharadesEgoClipDataset"]

ACTIONS_COLUMN, LENGTH_COLUMN = 9, 10


def _parse_class(line: str) -> tuple[str, str] | None:
    code, _, text = line.partition(" ")
    if len(code) != 4 or code[0] != "c" or not code[1:].isdigit() or not text:
        return None
    return code, text


def load_classes(path: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """(class texts, {class id "cXXX": index}) from ``Charades_v1_classes.txt``."""
    return read_class_list(path, _parse_class, "'cXXX <class text>'",
                           "Charades_v1_classes.txt, shipped in CharadesEgo.zip next to the CSVs")


def parse_actions(field: str, where: str = "") -> list[tuple[str, float, float]]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` -> [("c092", 11.9, 21.2), ...] (empty field: [])."""
    out = []
    for part in field.split(";"):
        part = part.strip()
        if not part:
            continue
        pieces = part.split(" ")
        try:
            code, start, end = pieces[0], float(pieces[1]), float(pieces[2])
            if len(pieces) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"{where}: action {part!r} is not 'cXXX <start> <end>'") from None
        out.append((code, start, end))
    return out


def load_videos(path: str | os.PathLike, class_index: dict[str, int]) -> list[tuple[str, float, list[int]]]:
    """[(video id, length in seconds, [class indices])] of a ``CharadesEgo_v1_*_only1st.csv``."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Charades-Ego CSV {path} not found (e.g. CharadesEgo_v1_test_only1st.csv)")
    videos = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)  # header
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) <= LENGTH_COLUMN:
                raise ValueError(f"{where}: {len(row)} columns; expected id in column 0, actions in column 9 and "
                                 "length in column 10")
            labels = []
            for code, _, _ in parse_actions(row[ACTIONS_COLUMN], where):
                if code not in class_index:
                    raise ValueError(f"{where}: class {code} is not in the class list")
                labels.append(class_index[code])
            try:
                length = float(row[LENGTH_COLUMN])
            except ValueError:
                raise ValueError(f"{where}: length (column 10) {row[LENGTH_COLUMN]!r} is not a number") from None
            videos.append((row[0], length, labels))
    if not videos:
        raise ValueError(f"{path} lists no videos")
    return videos


def load_trimmed_clips(path: str | os.PathLike) -> list[tuple[str, float, float, str]]:
    """LaViLa's ``metadata_filtered_{train,val}.pkl``: [(video id, start_sec, end_sec, narration)]."""
    from lavila.utils.checkpoint import safe_pickle_load

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Charades-Ego clip metadata {path} not found (metadata_filtered_train.pkl from "
                                "LaViLa's datasets/README.md)")
    items = safe_pickle_load(path)
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{path} holds {type(items).__name__}; expected a non-empty list of clips")
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, (list, tuple)) and len(item) == 4 and isinstance(item[0], str)
                and isinstance(item[3], str)):
            raise ValueError(f"{path}: item {i} is {item!r:.200}; expected (video_id, start_sec, end_sec, "
                             "narration)")
        out.append((item[0], float(item[1]), float(item[2]), item[3]))
    return out


class CharadesEgoDataset(ClipDataset):
    """Untrimmed multi-label evaluation: ``(frames (3, T, S, S), target (C,) float32 multi-hot)``."""

    def __init__(self, root: str | os.PathLike, metadata: str | os.PathLike,
                 classes_file: str | os.PathLike | None = None, num_frames: int = 16, crop_size: int = 224,
                 norm: str = "openai", backend: str = "auto", output: str = "float") -> None:
        super().__init__(root, num_frames, 0, crop_size, False, norm, 77, backend, output, "raise")
        classes_file = classes_file or os.path.join(os.path.dirname(str(metadata)), "Charades_v1_classes.txt")
        self.classes, self.class_index = load_classes(classes_file)
        self.videos = load_videos(metadata, self.class_index)

    def __len__(self) -> int:
        return len(self.videos)

    def targets(self) -> torch.Tensor:
        out = torch.zeros(len(self.videos), len(self.classes))
        for i, (_, _, labels) in enumerate(self.videos):
            out[i, labels] = 1
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        video_id, length, labels = self.videos[index]
        target = torch.zeros(len(self.classes))
        target[labels] = 1
        try:
            frames = self.load_video_clip(video_id, 0.0, length)
        except Exception as exc:  # noqa: BLE001 - raises VideoDecodeError naming the file
            return self.failed(os.path.join(self.root, f"{video_id}.mp4"), exc)
        return frames, target


class CharadesEgoClipDataset(ClipDataset):
    """Trimmed clips for fine-tuning: ``(frames (3, T, S, S), tokens (context_length,))``."""

    def __init__(self, root: str | os.PathLike, metadata: str | os.PathLike, num_frames: int = 16,
                 crop_size: int = 224, is_training: bool = True, norm: str = "openai", context_length: int = 77,
                 backend: str = "auto", output: str = "float", on_error: str | None = None) -> None:
        super().__init__(root, num_frames, 0, crop_size, is_training, norm, context_length, backend, output,
                         on_error)
        self.items = load_trimmed_clips(metadata)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        video_id, start, end, narration = self.items[index]
        try:
            frames = self.load_video_clip(video_id, start, end)
        except Exception as exc:  # noqa: BLE001 - skip/raise policy of ClipDataset
            return self.failed(os.path.join(self.root, f"{video_id}.mp4"), exc)
        return frames, tokenize(narration, self.context_length)
