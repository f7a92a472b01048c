"""EGTEA Gaze+ action clips (LaViLa's zero-shot / fine-tuning benchmark) on the real annotation files.

Files (``ACTION_ANNOTATIONS`` of the dataset)::

    <ann>/action_idx.txt          "Action_Name <idx>" per line (106 lines, idx from 1); the class index used here is
                                  the line's position (0-based), the class text the name with "_" -> " ", lower case
    <ann>/{train,test}_split1.txt "<clip_id> <action_idx> <verb_idx> <noun_idx>" per line
    <root>/<first three dash fields of clip_id>/<clip_id>.mp4
        e.g. OP01-R01-PastaSalad/OP01-R01-PastaSalad-1002316-1004005-F024051-F024101.mp4

Sampling (as LaViLa): a window of ``num_frames x stride`` consecutive frames, sampled every ``stride`` frames.
Training: one window at a random start, one random-resized crop. Evaluation: ``num_clips`` windows at evenly
spaced starts (``linspace(0, frames - window, num_clips)``) x ``num_crops`` square crops (1: centre; 3: start,
centre, end of the long side). A clip shorter than the window is zero-padded (black frames) at the end before the
stride is applied, and that one window is repeated ``num_clips`` times. The zero-shot protocol is 16 frames,
stride 2, 10 clips x 3 crops (``ZEROSHOT_PROTOCOL``).

Items: training ``(frames (3, T, S, S), label)``; evaluation ``(views (V, 3, T, S, S), label)`` with
``V = num_clips x num_crops`` (clip-major), or ``(3, T, S, S)`` when ``V == 1``.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from lavila.data.class_list import read_class_list
from lavila.data.clips import ClipDataset
from lavila.data.video import VideoDecodeError, open_video
from lavila.data.video_readers import decord_available

__all__ = ["ZEROSHOT_PROTOCOL", "load_action_classes", "load_split", "clip_video_path", "window_starts",
           "square_crops", "EgteaDataset"]

ZEROSHOT_PROTOCOL = {"num_frames": 16, "stride": 2, "num_clips": 10, "num_crops": 3}


def _parse_action(line: str) -> tuple[int, str] | None:
    name, _, number = line.rpartition(" ")
    if not name or not number.isdigit():
        return None
    return int(number), name.replace("_", " ").lower()


def load_action_classes(path: str | os.PathLike) -> tuple[list[str], dict[int, int]]:
    """(class texts in file order, {action_idx in the file: class index}) from ``action_idx.txt``."""
    return read_class_list(path, _parse_action, "'Action_Name <idx>'",
                           "action_idx.txt from ACTION_ANNOTATIONS, next to the split files")


def load_split(path: str | os.PathLike, action_index: dict[int, int]) -> list[tuple[str, int]]:
    """[(clip_id, class index)] of a split file, action indices mapped through ``action_index``."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EGTEA split file {path} not found (e.g. test_split1.txt)")
    items = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.strip().split(" ")
            if parts == [""]:
                continue
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{number}: expected '<clip_id> <action_idx> ...', got {line.strip()!r}")
            if len(parts[0].split("-")) < 3:
                raise ValueError(f"{path}:{number}: clip id {parts[0]!r} has fewer than three '-' fields "
                                 "(<participant>-<recipe session>-<recipe>-...)")
            action = int(parts[1])
            if action not in action_index:
                raise ValueError(f"{path}:{number}: action index {action} is not in action_idx.txt")
            items.append((parts[0], action_index[action]))
    if not items:
        raise ValueError(f"{path} lists no clips")
    return items


def clip_video_path(root: str | os.PathLike, clip_id: str) -> str:
    return os.path.join(str(root), "-".join(clip_id.split("-")[:3]), f"{clip_id}.mp4")


def window_starts(total: int, window: int, num_clips: int) -> list[int]:
    """Evenly spaced window starts (``np.linspace(..., dtype=int)``, as LaViLa); ``[0] * num_clips`` when the clip
    is shorter than the window."""
    if total < window:
        return [0] * num_clips
    return [int(s) for s in np.linspace(0, total - window, num_clips, dtype=int)]


def square_crops(frames: np.ndarray, num_crops: int) -> list[np.ndarray]:
    """Views of the min(H, W) squares of (T, H, W, 3) frames: 1 = centre, 3 = start / centre / end of the long
    side (LaViLa's 3-crop evaluation after its short-side resize)."""
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    height, width = frames.shape[1:3]
    side = min(height, width)
    long = max(height, width) - side
    offsets = [long // 2] if num_crops == 1 else [0, long // 2, long]
    if height > width:
        return [frames[:, o:o + side] for o in offsets]
    return [frames[:, :, o:o + side] for o in offsets]


def _read(path: str, backend: str, threads: int, ids_for) -> np.ndarray:
    """Open ``path`` (``auto``: PyAV, then decord), ask ``ids_for(frame count)`` which frames to read, read them."""
    names = [backend] if backend != "auto" else ["pyav"] + (["decord"] if decord_available() else [])
    errors = []
    for name in names:
        try:
            reader = open_video(path, name, threads)
            ids = ids_for(int(reader.num_frames))
            frames = reader.get(ids)
            if frames.shape[0] != len(ids):
                raise VideoDecodeError(path, f"{name} returned {frames.shape[0]} of {len(ids)} frames")
            return frames
        except VideoDecodeError as exc:
            if exc.reason in ("file not found", "file is empty (0 bytes)"):
                raise
            errors.append(exc.reason)
        except Exception as exc:  # noqa: BLE001 - decoder errors: try the next backend, report all
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise VideoDecodeError(path, "; ".join(errors))


class EgteaDataset(ClipDataset):
    """EGTEA clips of one split (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike,
                 classes_file: str | os.PathLike | None = None, num_frames: int = 16, stride: int = 2,
                 num_clips: int = 1, num_crops: int = 1, crop_size: int = 224, is_training: bool = False,
                 norm: str = "openai", backend: str = "auto", output: str = "float",
                 on_error: str | None = None) -> None:
        super().__init__(root, num_frames, 0, crop_size, is_training, norm, 77, backend, output, on_error)
        if is_training and (num_clips != 1 or num_crops != 1):
            raise ValueError("training takes one clip and one crop (num_clips=1, num_crops=1)")
        if stride < 1 or num_clips < 1:
            raise ValueError(f"stride and num_clips must be >= 1, got {stride}, {num_clips}")
        classes_file = classes_file or os.path.join(os.path.dirname(str(split_file)), "action_idx.txt")
        self.classes, action_index = load_action_classes(classes_file)
        self.items = load_split(split_file, action_index)
        self.stride, self.num_clips, self.num_crops = int(stride), int(num_clips), int(num_crops)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def frame_ids(self, total: int) -> list[int]:
        window = self.num_frames * self.stride
        if self.is_training:
            starts = [0 if total < window else int(torch.randint(total - window + 1, (1,)))]
        else:
            starts = window_starts(total, window, self.num_clips)
        return [s + k for s in starts for k in range(0, window, self.stride)]

    def _views(self, path: str) -> torch.Tensor:
        plan: dict[str, object] = {}

        def ids_for(total: int) -> list[int]:
            if total <= 0:
                raise VideoDecodeError(path, "no frames")
            plan["total"], plan["ids"] = total, self.frame_ids(total)
            return [min(i, total - 1) for i in plan["ids"]]

        frames = np.array(_read(path, self.backend, self.decode_threads, ids_for))
        # ids past the end of a short clip are LaViLa's zero padding: black frames
        frames[[j for j, i in enumerate(plan["ids"]) if i >= plan["total"]]] = 0
        clips = frames.reshape(-1, self.num_frames, *frames.shape[1:])
        if self.is_training:
            return self.transform(clips[0])
        views = [self.transform(np.ascontiguousarray(crop)) for clip in clips
                 for crop in square_crops(clip, self.num_crops)]
        return views[0] if len(views) == 1 else torch.stack(views)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        clip_id, label = self.items[index]
        path = clip_video_path(self.root, clip_id)
        try:
            return self._views(path), label
        except Exception as exc:  # noqa: BLE001 - skip/raise policy of ClipDataset
            return self.failed(path, exc)
