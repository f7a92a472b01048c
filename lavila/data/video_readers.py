"""One video file opened with one decoding library: decord (``DecordReader``) or PyAV (``PyAVReader``).

decord scans the whole file's index when it opens it (~5 ms for a 15-s chunk) and then seeks per frame; its frames
are returned as a zero-copy numpy view of its output buffer (DLPack), not copied. PyAV, on a file whose timestamps
lie on a regular grid (constant frame rate, checked in the header and on every decoded frame), seeks to the key
frame before the first wanted frame and decodes forward once per clip, with no index scan when opening; off the
grid (variable frame rate) it decodes from the start of the file, counting frames, which is slow for late frames.
Both give the same RGB frames (``tests/test_data_video_seek.py`` compares them bit for bit, B-frames included).
PyAV converts frames to RGB with the decode thread count (its automatic default starts one swscale thread per host
CPU in every DataLoader worker). With ``size`` = (height, width) the frames are scaled in the decoder's colour
conversion (swscale).

Readers raise the libraries' own errors (or ``ValueError``); :func:`lavila.data.video.open_video` wraps them in
``VideoDecodeError`` and chooses between the two (``auto``).
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Iterator

import numpy as np
import torch

__all__ = ["DecordReader", "PyAVReader", "decord_available", "conversion_takes_threads"]

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:  # ImportError, or a broken shared library
        return False
    return True


class DecordReader:
    """decord reader: the file's frame index is built when opening, then ``get`` seeks per frame."""

    def __init__(self, path: str, threads: int, size: tuple[int, int] | None = None) -> None:
        import decord

        self.path = path
        h, w = size if size is not None else (-1, -1)
        self._vr = decord.VideoReader(path, num_threads=threads, ctx=decord.cpu(0), width=w, height=h)
        self.num_frames = len(self._vr)
        fps = self._vr.get_avg_fps()
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else None

    def get(self, ids: list[int]) -> np.ndarray:
        ids = [min(max(i, 0), self.num_frames - 1) for i in ids]
        batch = self._vr.get_batch(ids)
        if not hasattr(batch, "to_dlpack"):  # a decord build without DLPack
            return batch.asnumpy()
        # A zero-copy view of decord's output buffer (asnumpy would copy the full frames once more, ~1-3 ms/clip).
        return torch.from_dlpack(batch.to_dlpack()).numpy()


@lru_cache(maxsize=1)
def conversion_takes_threads() -> bool:
    """Whether this PyAV's frame conversion takes a thread count. Its default (0: automatic) starts one swscale
    thread per host CPU for each conversion (about 120 per DataLoader worker on this project's VM, whose cgroup has
    2 cores), which made a conversion 1.4-8x slower than with one thread."""
    import av

    try:
        av.VideoFrame(16, 16, "yuv420p").to_ndarray(format="rgb24", threads=1)
    except TypeError:  # older PyAV: no such argument (and no automatic threading)
        return False
    return True


class _OffGrid(Exception):
    """PyAV's timestamps do not map to frame indices on a regular grid here: count frames from the start."""


class PyAVReader:
    """PyAV reader. On a constant-frame-rate stream whose timestamps lie on a regular grid (frame ``i`` at
    ``start + i * step``, checked on every decoded frame) it seeks to the key frame before the first wanted frame
    and decodes forward from there; otherwise it decodes from the start of the file, counting frames."""

    def __init__(self, path: str, threads: int, size: tuple[int, int] | None = None) -> None:
        import av

        self.path = path
        self._convert = {"format": "rgb24"} if size is None else {"format": "rgb24", "height": size[0],
                                                                   "width": size[1]}
        if conversion_takes_threads():
            self._convert["threads"] = max(int(threads), 1)
        self._container = av.open(path)
        if not self._container.streams.video:
            self._container.close()
            raise ValueError("no video stream")
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.base_rate
        self.fps = float(rate) if rate else None
        frames = stream.frames
        if not frames and stream.duration and stream.time_base and self.fps:
            frames = int(round(float(stream.duration * stream.time_base) * self.fps))
        self.num_frames = int(frames or 0)
        self._threads = threads
        self._used = False
        self._grid = self._timestamp_grid(stream)
        self.decoded_frames = 0  # frames decoded so far (seeking decodes fewer)

    @staticmethod
    def _timestamp_grid(stream) -> tuple[int, int] | None:
        """(start, step) in time-base units when the header describes a regular grid: an integer number of ticks
        per frame, the nominal rate equal to the average, and a duration of as many steps as frames, to within half
        a step (muxers often shorten the last frame by a few ticks; a missing frame would add a whole step, and
        would shift decord's frame indices against the timestamps)."""
        rate, time_base, frames = stream.average_rate, stream.time_base, stream.frames
        if not (rate and time_base and frames and stream.base_rate == rate):
            return None
        step = 1 / (rate * time_base)
        if step.denominator != 1 or stream.duration is None or 2 * abs(stream.duration - frames * step) > step:
            return None
        return int(stream.start_time or 0), int(step)

    def close(self) -> None:
        self._container.close()

    @property
    def conversion(self) -> dict:
        """Keywords of ``VideoFrame.to_ndarray`` giving this reader's RGB frames (format, size, threads)."""
        return self._convert

    def decode_all(self) -> Iterator:
        """Every frame from the start of the file, in decoding order, as PyAV frames (not converted)."""
        return self._container.decode(self._stream())

    @property
    def seekable(self) -> bool:
        """Whether frames are found by seeking (fast) rather than by decoding from the start."""
        return self._grid is not None

    def _stream(self):
        stream = self._container.streams.video[0]
        if not self._used:  # the thread count can only be set before the first decode
            stream.thread_count = self._threads
        self._used = True
        return stream

    def get(self, ids: list[int]) -> np.ndarray:
        if self._grid is not None:
            try:
                return self._get_seeking(ids)
            except _OffGrid as exc:
                log.debug("%s: %s; decoding from the start instead", self.path, exc)
                self._grid = None
        return self._get_sequential(ids)

    def _get_seeking(self, ids: list[int]) -> np.ndarray:
        """Seek to the key frame before the first wanted frame and decode forward; seek again when the next wanted
        frame is at least one key-frame interval ahead (sparse frames of a long video), as decord's index does."""
        start, step = self._grid
        wanted: dict[int, list[int]] = {}
        for k, i in enumerate(ids):
            wanted.setdefault(min(max(i, 0), self.num_frames - 1), []).append(k)
        pending = sorted(wanted)
        out: list[np.ndarray | None] = [None] * len(ids)
        stream = self._stream()
        # gop: the longest distance between two key frames seen so far (0: not known yet); left: the frame a
        # decode run stopped at to seek ahead (a run that lands behind it decodes on to its target instead, since
        # the estimate was short; so every run makes progress); back: how many frames before its target a run
        # seeks (0, unless the demuxer landed past a target: then one interval, doubling while that recurs)
        pos, gop, left, back = 0, 0, -1, 0
        while True:
            target = pending[pos]
            self._container.seek(start + max(target - back, 0) * step, stream=stream, backward=True,
                                 any_frame=False)
            previous = last_key = None
            may_seek = True
            for frame in self._container.decode(stream):
                self.decoded_frames += 1
                index, off = divmod(frame.pts - start, step) if frame.pts is not None else (None, 1)
                if off or (previous is not None and index != previous + 1):
                    raise _OffGrid(f"frame timestamp {frame.pts} is off the grid {start} + i * {step}")
                if previous is None and index > target:  # landed past the target: seek further back
                    if target - back <= 0:
                        raise _OffGrid(f"seeking to the start of the file landed at frame {index}")
                    back = max(2 * back, gop, 1)
                    break
                if previous is None and index <= left:
                    may_seek = False
                previous = index
                if frame.key_frame:
                    if last_key is not None:
                        gop = max(gop, index - last_key)
                    last_key = index
                if index == pending[pos]:
                    array = frame.to_ndarray(**self._convert)
                    for k in wanted[index]:
                        out[k] = array
                    pos += 1
                    if pos == len(pending):
                        return np.stack(out)
                    may_seek = True
                if may_seek and gop and pending[pos] - index >= gop:
                    left = index  # a key frame lies ahead, at or before the next wanted frame: seek to it
                    break
            else:
                raise _OffGrid(f"the stream ended at frame {previous}, before frame {pending[pos]} of "
                               f"{self.num_frames}")

    def _get_sequential(self, ids: list[int]) -> np.ndarray:
        wanted = {max(i, 0) for i in ids}
        last = max(wanted)
        if self._used:
            self._container.seek(0)
        stream = self._stream()
        decoded: dict[int, np.ndarray] = {}
        previous = None
        count = 0
        for frame in self._container.decode(stream):
            if count in wanted:
                decoded[count] = frame.to_ndarray(**self._convert)
            previous = frame
            count += 1
            self.decoded_frames += 1
            if count > last:
                break
        if previous is None:
            raise ValueError("no frame could be decoded")
        final = count - 1  # ids past the real decodable length are clamped to the last decoded frame
        if final not in decoded:
            decoded[final] = previous.to_ndarray(**self._convert)
        self.num_frames = count if count <= last else max(self.num_frames, count)
        return np.stack([decoded[min(max(i, 0), final)] for i in ids])
