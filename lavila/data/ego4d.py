"""Ego4D video-text pretraining dataset (LaViLa / video-mamba-suite metadata pickles).

Metadata: a pickled list of ``(video_uid, start_sec, end_sec, narration, ...)`` where ``narration`` is a string or
a list of strings (rephraser / narrator pseudo-labels: one is chosen at random on every access). Auxiliary files
(``--train-metadata-aux``) are concatenated after the main one. Pickles are read with the project's restricted
unpickler (plain containers, numbers, strings and numpy arrays only). Videos: ``root/<video_uid>/0000.mp4 ...``
(15-s chunks) or LaViLa's ``root/<video_uid>.mp4/<start_second>.mp4``.

Example::

    from lavila.data.ego4d import Ego4DPretrainDataset
    ds = Ego4DPretrainDataset("videos_short320_chunked_15s", "ego4d_train.pkl", num_frames=4, crop_size=224)
    frames, tokens = ds[0]        # (3, 4, 224, 224) float32, (77,) int64
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lavila.data.clips import ClipDataset
from lavila.data.tokenizer import tokenize

__all__ = ["load_ego4d_metadata", "Ego4DPretrainDataset"]


def _check_item(item: object, path: str, index: int) -> None:
    ok = isinstance(item, (tuple, list)) and len(item) >= 4 and isinstance(item[0], str)
    if ok:
        narration = item[3]
        ok = isinstance(narration, str) or (isinstance(narration, (list, tuple)) and len(narration) > 0
                                            and all(isinstance(n, str) for n in narration))
    if not ok:
        raise ValueError(f"{path}: item {index} is {item!r:.200}; expected (video_uid, start_sec, end_sec, "
                         "narration str or list of str, ...)")


def load_ego4d_metadata(path: str | os.PathLike) -> list:
    """The list of clips of one metadata pickle (restricted unpickling; structure checked)."""
    from lavila.utils.checkpoint import safe_pickle_load

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Ego4D metadata {path} not found (check --train-metadata)")
    items = safe_pickle_load(path)
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{path} holds {type(items).__name__}, expected a non-empty list of clips")
    for i in range(min(len(items), 100)):
        _check_item(items[i], path, i)
    return list(items)


class Ego4DPretrainDataset(ClipDataset):
    """``(frames (3, T, S, S) float32, tokens (context_length,) int64)`` per clip; ``None`` for an unreadable clip
    in training (counted by the loader)."""

    def __init__(self, root: str | os.PathLike, metadata: str | os.PathLike,
                 metadata_aux: Sequence[str | os.PathLike] | None = (), num_frames: int = 4, chunk_len: float = 15.0,
                 crop_size: int = 224, is_training: bool = True, norm: str = "openai", context_length: int = 77,
                 backend: str = "auto", output: str = "float", on_error: str | None = None,
                 fused_resize: bool = False) -> None:
        super().__init__(root, num_frames, chunk_len, crop_size, is_training, norm, context_length, backend, output,
                         on_error, fused_resize=fused_resize)
        self.metadata_paths = [str(metadata), *map(str, metadata_aux or ())]
        self.items: list = []
        for path in self.metadata_paths:
            self.items += load_ego4d_metadata(path)

    def __len__(self) -> int:
        return len(self.items)

    def narration(self, index: int) -> str:
        item = self.items[index]
        _check_item(item, "metadata", index)
        text = item[3]
        if isinstance(text, str):
            return text
        return text[int(torch.randint(len(text), (1,)).item())]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        vid, start, end = self.items[index][:3]
        try:
            frames = self.load_video_clip(vid, float(start), float(end))
        except Exception as exc:  # noqa: BLE001 - any decode failure follows the skip/raise policy
            return self.failed(os.path.join(self.root, vid), exc)
        return frames, tokenize(self.narration(index), self.context_length)
