"""Ego4D video-text pretraining dataset (LaViLa / video-mamba-suite metadata pickles).

Metadata: a pickled list of ``(video_uid, start_sec, end_sec, narration, ...)`` where ``narration`` is a string or
a list of strings (rephraser / narrator pseudo-labels: one is chosen at random on every access). Auxiliary files
(``--train-metadata-aux``) are concatenated after the main one. Pickles are read with the project's restricted
unpickler (plain containers, numbers, strings and numpy arrays only). Videos: ``root/<video_uid>/0000.mp4 ...``
(15-s chunks) or LaViLa's ``root/<video_uid>.mp4/<start_second>.mp4``.

Each pickle is held as flat arrays (``Ego4DClips``: video ids as an index into a table of unique ids, times as
float64, the narrations of all clips as one UTF-8 buffer) memory-mapped from a cache file beside it
(``lavila.data.metadata``), so forked DataLoader workers share it instead of copying millions of Python objects.
A time that is not a number is kept as NaN and its clip is skipped when read, as before.

Example::

    from lavila.data.ego4d import Ego4DPretrainDataset
    ds = Ego4DPretrainDataset("videos_short320_chunked_15s", "ego4d_train.pkl", num_frames=4, crop_size=224)
    frames, tokens = ds[0]        # (3, 4, 224, 224) float32, (77,) int64
"""
from __future__ import annotations

import logging
import operator
import os
from collections.abc import Sequence
from itertools import chain, repeat
from pathlib import Path

import numpy as np
import torch

from lavila.data.clips import ClipDataset
from lavila.data.metadata import TextTable, cached_arrays, encode_strings, factorize_strings, load_pickle
from lavila.data.tokenizer import tokenize

__all__ = ["load_ego4d_metadata", "build_ego4d_arrays", "Ego4DClips", "load_ego4d_clips", "Ego4DPretrainDataset"]

log = logging.getLogger(__name__)
_KIND = "ego4d-clips"


def _check_item(item: object, path: str, index: int) -> None:
    ok = isinstance(item, (tuple, list)) and len(item) >= 4 and isinstance(item[0], str)
    if ok:
        narration = item[3]
        ok = isinstance(narration, str) or (isinstance(narration, (list, tuple)) and len(narration) > 0
                                            and all(isinstance(n, str) for n in narration))
    if not ok:
        raise ValueError(f"{path}: item {index} is {item!r:.200}; expected (video_uid, start_sec, end_sec, "
                         "narration str or list of str, ...)")


def _first_bad_item(items: Sequence, path: str) -> None:
    """Raise naming the first bad item (run once a whole-column check has failed)."""
    for i, item in enumerate(items):
        _check_item(item, path, i)
    raise ValueError(f"{path}: the clips do not all have the form (video_uid str, start_sec, end_sec, narration "
                     "str or non-empty list of str, ...)")


def load_ego4d_metadata(path: str | os.PathLike) -> list:
    """The list of clips of one metadata pickle (restricted unpickling). The datasets use ``load_ego4d_clips``."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Ego4D metadata {path} not found (check --train-metadata)")
    items = load_pickle(path)
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{path} holds {type(items).__name__}, expected a non-empty list of clips")
    return items if isinstance(items, list) else list(items)


def _float_column(values: list, n: int) -> tuple[np.ndarray, int]:
    """float64 of every value as ``float(value)`` gives it; NaN (counted) where that fails."""
    try:
        out = np.array(values, dtype=np.float64)
        if out.shape == (n,):
            return out, 0
    except (TypeError, ValueError, OverflowError):
        pass
    out, bad = np.empty(n, dtype=np.float64), 0
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError, OverflowError):
            out[i], bad = np.nan, bad + 1
    return out, bad


def build_ego4d_arrays(items: Sequence, path: str) -> dict[str, np.ndarray]:
    """Flat arrays of a list of ``(video_uid, start, end, narration str | list of str, ...)`` (every item checked;
    loops run in C through ``map`` except on the first bad item, which is reported with its index)."""
    n = len(items)
    if not set(map(type, items)) <= {tuple, list} or min(map(len, items)) < 4:
        _first_bad_item(items, path)
    uids = list(map(operator.itemgetter(0), items))
    narrations = list(map(operator.itemgetter(3), items))
    types = list(map(type, narrations))
    if not set(types) <= {str, list, tuple}:
        _first_bad_item(items, path)
    is_list = np.fromiter(map(operator.is_not, types, repeat(str)), dtype=bool, count=n)
    del types
    if not is_list.any():
        flat, counts = narrations, np.ones(n, dtype=np.int64)
    else:
        if not is_list.all():
            narrations = [x if listed else (x,) for x, listed in zip(narrations, is_list.tolist())]
        counts = np.fromiter(map(len, narrations), dtype=np.int64, count=n)
        if not counts.all():
            _first_bad_item(items, path)
        flat = list(chain.from_iterable(narrations))
    del narrations
    try:  # both raise TypeError on a non-string (an id that is not hashable, a narration that is not a str)
        video_index, unique_ids = factorize_strings(uids)
        text_data, text_offsets = encode_strings(flat)
        video_data, video_offsets = encode_strings(unique_ids)
    except TypeError:
        _first_bad_item(items, path)
    del uids, flat
    start, bad_start = _float_column(list(map(operator.itemgetter(1), items)), n)
    end, bad_end = _float_column(list(map(operator.itemgetter(2), items)), n)
    if bad_start or bad_end:
        log.warning("%s: %d start and %d end times are not numbers; those clips are skipped when read", path,
                    bad_start, bad_end)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return {"video_index": video_index, "video_data": video_data, "video_offsets": video_offsets, "start": start,
            "end": end, "narration_ptr": ptr, "narration_is_list": is_list, "narration_data": text_data,
            "narration_offsets": text_offsets}


class Ego4DClips:
    """The clips of one metadata pickle as flat, read-only arrays; ``clip(i)`` / ``narrations(i)`` decode one."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str = "metadata", cache_path: Path | None = None):
        self.source, self.cache_path = source, cache_path
        try:
            self.video_index = arrays["video_index"]
            self.start, self.end = arrays["start"], arrays["end"]
            self.narration_ptr, self.narration_is_list = arrays["narration_ptr"], arrays["narration_is_list"]
            self.video_ids = TextTable(arrays["video_data"], arrays["video_offsets"])
            self.texts = TextTable(arrays["narration_data"], arrays["narration_offsets"])
        except KeyError as exc:
            raise ValueError(f"Ego4D metadata arrays of {source} lack {exc}") from None
        n = len(self.video_index)
        if not (len(self.start) == len(self.end) == len(self.narration_is_list) == n
                and len(self.narration_ptr) == n + 1 and int(self.narration_ptr[-1]) == len(self.texts)):
            raise ValueError(f"Ego4D metadata arrays of {source} have inconsistent lengths")
        self._views()

    def _views(self) -> None:
        # memoryviews of the columns read per item: Python numbers without a numpy scalar per access
        self._video, self._start, self._end, self._ptr, self._listed = (memoryview(a) for a in (
            self.video_index, self.start, self.end, self.narration_ptr, self.narration_is_list))

    def __getstate__(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._views()

    def __len__(self) -> int:
        return len(self.video_index)

    def video_id(self, index: int) -> str:
        return self.video_ids[self._video[index]]

    def times(self, index: int) -> tuple[float, float]:
        """``(start_sec, end_sec)``; NaN where the pickle's value was not a number."""
        return self._start[index], self._end[index]

    def narrations(self, index: int) -> str | list[str]:
        """The clip's narration: a string, or the list of its choices (as stored in the pickle)."""
        lo, hi = self._ptr[index], self._ptr[index + 1]
        if not self._listed[index]:
            return self.texts[lo]
        return [self.texts[j] for j in range(lo, hi)]

    def narration(self, index: int) -> str:
        """The narration, or one of its choices drawn with torch's default generator (as before: no draw for a
        plain string)."""
        lo, hi = self._ptr[index], self._ptr[index + 1]
        if not self._listed[index]:
            return self.texts[lo]
        return self.texts[lo + int(torch.randint(hi - lo, (1,)).item())]


def load_ego4d_clips(path: str | os.PathLike) -> Ego4DClips:
    """One metadata pickle as ``Ego4DClips``, memory-mapped from its cache (built from the pickle on first use)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Ego4D metadata {path} not found (check --train-metadata)")
    arrays, cache = cached_arrays(path, _KIND, lambda: build_ego4d_arrays(load_ego4d_metadata(path), path))
    try:
        return Ego4DClips(arrays, path, cache)
    except ValueError as exc:
        raise ValueError(f"{exc}; delete the cache file {cache} to rebuild it") from None


class _ItemsView(Sequence):
    """``dataset.items[i]`` -> ``(video_uid, start_sec, end_sec, narration)`` decoded on access (no bulk list)."""

    def __init__(self, dataset: Ego4DPretrainDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        part, i = self.dataset.locate(index)
        return (part.video_id(i), *part.times(i), part.narrations(i))


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
        self.parts = [load_ego4d_clips(p) for p in self.metadata_paths]
        self._ends = np.cumsum([len(p) for p in self.parts])
        self.items = _ItemsView(self)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[Ego4DClips, int]:
        """``(part, row)`` of item ``index`` (aux files follow the main one)."""
        n = int(self._ends[-1])
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} clips")
        if index < 0:
            index += n
        if len(self.parts) == 1:
            return self.parts[0], index
        k = int(np.searchsorted(self._ends, index, side="right"))
        return self.parts[k], index - (int(self._ends[k - 1]) if k else 0)

    def narration(self, index: int) -> str:
        """The clip's narration; one of its choices drawn with torch's generator when it has several."""
        part, i = self.locate(index)
        return part.narration(i)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        part, i = self.locate(index)
        vid = part.video_id(i)
        try:
            frames = self.load_video_clip(vid, *part.times(i))
        except Exception as exc:  # noqa: BLE001 - any decode failure follows the skip/raise policy
            return self.failed(os.path.join(self.root, vid), exc)
        return frames, tokenize(part.narration(i), self.context_length)
