"""Video clips from files: decoding-backend choice with fallback, frame-index sampling, the chunked 15-s layout.

Backends (the readers themselves: ``video_readers.py``): ``auto`` (the default) uses PyAV when the file's timestamps
lie on a regular grid (constant frame rate, checked in the header and on every decoded frame), decord otherwise, and
a backend that fails on a file hands it to the other one. On the grid PyAV seeks to the key frame before the first
wanted frame and decodes forward once per clip, with no index scan when opening; decord scans the whole file's index
when it opens it. Measured on this project's CPU machine (8 frames of a 2-s training clip from 15-s 568x320 30-fps
H.264 chunks, one thread, CPU ms per clip, ``benchmarks/bench_data.py --stages``): decord opens in 4.5 ms and decodes
in 23 ms, seeking PyAV in 1.9 ms and 14 ms; both give the same RGB frames. Frames can be decoded pre-scaled
(``size=``): the scaling happens in the decoder's colour conversion (swscale), which then costs more than the plain
conversion (8 568x320 frames scaled so that a random crop comes out at 224 px: +6-7 ms per clip with decord); with
``size`` ``auto`` tries decord first, as before (the two libraries' scalers differ). decord fails on a few tiny
output widths (e.g. 48 px); ``auto`` then retries with PyAV.

Layouts (detected from what is on disk):

* chunked (``chunk_len > 0``): ``root/<video_id>/<name>.mp4`` 15-s pieces named by zero-padded chunk index
  (``0000.mp4``, ``0001.mp4``: video-mamba-suite) or by start second (``0.mp4``, ``15.mp4``: LaViLa); the folder may
  also be ``root/<video_id>.mp4/`` (LaViLa's Ego4D layout). A clip straddling a boundary reads from both chunks.
* single file (``chunk_len <= 0``): ``root/<video_id>.mp4`` (or ``.MP4``, or LaViLa's EK100
  ``root/P01/P01_01.MP4``); ``end=None`` means the whole video
  (EgoSchema).

Frame ids are the segment midpoints of the reference (``get_frame_ids``); times are converted with the fps read
from the file (30 only when the file does not say). Ids are clamped to the real decodable length of each file
(15-s chunks of 29.97-fps video hold 449 or 450 frames).

Example::

    from lavila.data.video import load_clip
    frames = load_clip("videos", "P01_01", 14.2, 16.9, num_frames=4, chunk_len=15)  # uint8 (4, H, W, 3)
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np
import torch

from lavila.data.video_readers import DecordReader, PyAVReader, decord_available

__all__ = ["VideoDecodeError", "get_frame_ids", "open_video", "load_clip", "load_frames", "find_chunk_layout",
           "video_path_key", "probe_frame_size", "preload_backends", "DEFAULT_FPS",
           "chunk_paths", "stream_frames", "DecodedFrame"]

log = logging.getLogger(__name__)
DEFAULT_FPS = 30.0
BACKENDS = ("auto", "decord", "pyav")


class VideoDecodeError(RuntimeError):
    """A video file is missing, empty, corrupt or truncated; the message names the path."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        if reason is None:  # one argument: a DataLoader worker re-raising it with its own message keeps the type
            super().__init__(str(path))
            self.path, self.reason = "", str(path)
            return
        super().__init__(f"cannot decode video {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def get_frame_ids(start: int, end: int, num_segments: int, jitter: bool = False,
                  generator: torch.Generator | None = None) -> list[int]:
    """Midpoints of ``num_segments`` equal segments of [start, end]; with ``jitter`` each is shifted by
    U(-1/2, 1/2) x (end - start - 1) / num_segments (training), then truncated to int (the reference's sampler)."""
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    edges = np.linspace(start, end, num_segments + 1)
    ids = (edges[:-1] + edges[1:]) / 2
    if jitter:
        seg = float(end - start - 1) / num_segments
        ids = ids + (torch.rand(num_segments, generator=generator, dtype=torch.float64).numpy() - 0.5) * seg
    return [int(i) for i in ids]


def preload_backends(backend: str) -> None:
    """Import the decoding libraries ``backend`` may use (in the main process, so that forked DataLoader workers
    inherit them instead of each importing them while it decodes its first clip)."""
    if backend in ("auto", "pyav"):
        import av  # noqa: F401
    if backend in ("auto", "decord"):
        decord_available()


def open_video(path: str | os.PathLike, backend: str = "decord", threads: int = 1,
               size: tuple[int, int] | None = None) -> DecordReader | PyAVReader:
    """Open one file with one backend; frames come out scaled to ``size`` = (height, width) when given (the
    scaling is done by the decoder's colour conversion). Errors are raised as ``VideoDecodeError`` naming the
    path."""
    path = str(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        reader = DecordReader(path, threads, size) if backend == "decord" else PyAVReader(path, threads, size)
    except Exception as exc:  # decord raises DECORDError / RuntimeError, PyAV av.error.*
        raise VideoDecodeError(path, f"{backend} could not open it ({type(exc).__name__}: {exc})") from exc
    if reader.num_frames <= 0 and backend == "decord":
        raise VideoDecodeError(path, "decord found no frames")
    return reader


def _fetch(reader: DecordReader | PyAVReader, ids: list[int], backend: str,
           size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        frames = reader.get(ids)
    except Exception as exc:
        raise VideoDecodeError(reader.path, f"{backend} failed to decode frames ({type(exc).__name__}: {exc})") \
            from exc
    if frames.ndim != 4 or frames.shape[0] != len(ids) or frames.shape[-1] != 3 or \
            (size is not None and tuple(frames.shape[1:3]) != tuple(size)):
        raise VideoDecodeError(reader.path, f"{backend} returned frames of shape {frames.shape}")
    return frames


class _FileSession:
    """Opens each file at most once per sample, with fallback between backends under ``auto``.

    ``auto`` prefers PyAV when its reader can seek on the file's timestamp grid (no index scan when opening, one
    forward decode per clip: 16 vs 28 CPU ms per training clip in ``bench_data.py --stages``), decord otherwise;
    a backend that fails on a file hands it to the other one. With ``size`` (frames scaled by the decoder) decord
    comes first, as before: the two libraries' scalers do not give identical pixels."""

    def __init__(self, backend: str, threads: int, size: tuple[int, int] | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
        if backend == "decord" and not decord_available():
            raise ImportError("video backend 'decord' requested but decord is not installed: "
                              "`pip install decord` or use backend='pyav'")
        self.backend = backend
        self.threads = threads
        self.size = size
        self._readers: dict[str, tuple[str, DecordReader | PyAVReader]] = {}
        self._failed: dict[str, list[str]] = {}  # per path: the backends that failed on it

    def _order(self) -> list[str]:
        if self.backend != "auto":
            return [self.backend]
        if not decord_available():
            return ["pyav"]
        return ["pyav", "decord"] if self.size is None else ["decord", "pyav"]

    def _open_first(self, path: str, names: list[str]) -> tuple[str, DecordReader | PyAVReader]:
        errors, spare = [], None
        for name in names:
            try:
                reader = open_video(path, name, self.threads, self.size)
            except VideoDecodeError as exc:
                if exc.reason in ("file not found", "file is empty (0 bytes)"):
                    raise
                errors.append(exc.reason)
                continue
            if self.backend == "auto" and name == "pyav" and not reader.seekable and name != names[-1]:
                spare = (name, reader)  # PyAV would decode from the start of the file: decord's index seeks faster
                continue
            if spare is not None:
                spare[1].close()
            return name, reader
        if spare is not None:
            return spare
        raise VideoDecodeError(path, "; ".join(errors))

    def open(self, path: str) -> DecordReader | PyAVReader:
        if path not in self._readers:
            self._readers[path] = self._open_first(path, self._order())
        return self._readers[path][1]

    def fetch(self, path: str, ids: list[int]) -> np.ndarray:
        reader = self.open(path)
        name = self._readers[path][0]
        try:
            return _fetch(reader, ids, name, self.size)
        except VideoDecodeError as exc:
            failed = self._failed.setdefault(path, [])
            failed.append(name)
            later = [n for n in self._order() if n not in failed]
            if not later:
                raise
            log.debug("%s; retrying with %s", exc, later[0])
            self._readers[path] = (later[0], open_video(path, later[0], self.threads, self.size))
            return _fetch(self._readers[path][1], ids, later[0], self.size)


def _fps(reader: DecordReader | PyAVReader) -> float:
    if reader.fps is None:
        log.warning("%s does not state its frame rate; assuming %s fps", reader.path, DEFAULT_FPS)
        return DEFAULT_FPS
    return reader.fps


@lru_cache(maxsize=4096)
def _layout_cached(video_dir: str, mtime_ns: int, chunk_len: float) -> tuple[str, tuple[int, ...]]:
    stems = [f[:-4] for f in os.listdir(video_dir) if f.lower().endswith(".mp4") and f[:-4].isdigit()]
    if not stems:
        raise VideoDecodeError(video_dir, "no chunk files (<number>.mp4) in this folder")
    values = sorted(int(s) for s in stems)
    padded = any(len(s) > 1 and s.startswith("0") for s in stems)
    if not padded and all(v % chunk_len == 0 for v in values) and (chunk_len > 1 or len(values) == 1):
        return "seconds", tuple(int(round(v / chunk_len)) for v in values)
    return "index", tuple(values)


def find_chunk_layout(video_dir: str | os.PathLike, chunk_len: float) -> tuple[str, tuple[int, ...]]:
    """('index' | 'seconds', sorted chunk indices present) for a folder of chunk files."""
    video_dir = str(video_dir)
    return _layout_cached(video_dir, os.stat(video_dir).st_mtime_ns, float(chunk_len))


def _chunk_file(video_dir: str, chunk: int, naming: str, chunk_len: float) -> str:
    if naming == "index":
        return os.path.join(video_dir, f"{chunk:04d}.mp4")
    return os.path.join(video_dir, f"{int(round(chunk * chunk_len))}.mp4")


def chunk_paths(video_dir: str | os.PathLike, chunk_len: float) -> list[tuple[int, str]]:
    """``(chunk index, path)`` of every chunk file of a chunked video, in time order."""
    video_dir = str(video_dir)
    naming, present = find_chunk_layout(video_dir, chunk_len)
    return [(c, _chunk_file(video_dir, c, naming, chunk_len)) for c in present]


class DecodedFrame:
    """One decoded frame of :func:`stream_frames`; converted to RGB only when asked (``rgb()``)."""

    __slots__ = ("_frame", "_convert")

    def __init__(self, frame, convert: dict) -> None:
        self._frame, self._convert = frame, convert

    def rgb(self) -> np.ndarray:
        """uint8 (H, W, 3)."""
        return self._frame.to_ndarray(**self._convert)


def stream_frames(path: str | os.PathLike, threads: int = 1):
    """``(fps, frames)``: the file's frame rate (``DEFAULT_FPS`` when it states none) and an iterator over every
    frame in decoding order (PyAV, one forward pass, nothing kept), for dense feature extraction. PyAV's frames
    equal decord's bit for bit (``tests/test_data_video_seek.py``). Errors are ``VideoDecodeError`` naming the
    path, also while iterating."""
    reader = open_video(path, "pyav", threads)
    fps = _fps(reader)

    def frames():
        try:
            for frame in reader.decode_all():
                yield DecodedFrame(frame, reader.conversion)
        except Exception as exc:  # noqa: BLE001 - PyAV raises av.error.* mid-stream on corrupt data
            raise VideoDecodeError(path, f"pyav failed while decoding ({type(exc).__name__}: {exc})") from exc
        finally:
            reader.close()

    return fps, frames()


def _video_dir(root: str, video_id: str) -> str:
    for cand in (os.path.join(root, video_id), os.path.join(root, video_id + ".mp4")):
        if os.path.isdir(cand):
            return cand
    raise VideoDecodeError(os.path.join(root, video_id), "video folder of chunk files not found "
                           f"(expected {root}/{video_id}/0000.mp4 ...; check --root, and --video-chunk-length: "
                           "0 for one file per video)")


def _single_file(root: str, video_id: str) -> str:
    # root/<id>.mp4, or LaViLa's EK100 layout root/<participant>/<id>.MP4 (P01/P01_01.MP4)
    folders = [root] + ([os.path.join(root, video_id.split("_")[0])] if "_" in video_id else [])
    for folder in folders:
        for ext in ("", ".mp4", ".MP4", ".mkv", ".webm"):
            cand = os.path.join(folder, video_id + ext)
            if os.path.isfile(cand):
                return cand
    raise VideoDecodeError(os.path.join(root, video_id + ".mp4"), "file not found (check --root, and "
                           "--video-chunk-length: 15 for folders of 15-s chunks, 0 for one file per video)")


def video_path_key(root: str | os.PathLike, video_id: str, chunk_len: float) -> str:
    """The folder (chunked) or file (single) holding ``video_id``; all its frames share one size."""
    root = str(root)
    return _video_dir(root, video_id) if chunk_len > 0 else _single_file(root, video_id)


def probe_frame_size(root: str | os.PathLike, video_id: str, chunk_len: float) -> tuple[int, int]:
    """(height, width) of ``video_id`` from its first file's header (PyAV, ~2 ms; no frame is decoded)."""
    import av

    key = video_path_key(root, video_id, chunk_len)
    if chunk_len > 0:
        naming, present = find_chunk_layout(key, chunk_len)
        key = _chunk_file(key, present[0], naming, chunk_len)
    with av.open(key) as container:
        stream = container.streams.video[0]
        return int(stream.codec_context.height), int(stream.codec_context.width)


def load_frames(path: str | os.PathLike, num_frames: int, start: float = 0.0, end: float | None = None,
                jitter: bool = False, backend: str = "auto", threads: int = 1,
                generator: torch.Generator | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """``num_frames`` frames (uint8 (T, H, W, 3)) of one file between ``start`` and ``end`` seconds (``None``:
    to the end of the video, the whole-video mode of EgoSchema), scaled to ``size`` = (H, W) when given."""
    session = _FileSession(backend, threads, size)
    path = str(path)
    reader = session.open(path)
    fps = _fps(reader)
    total = reader.num_frames
    first = int(round(start * fps))
    last = total if end is None else min(int(round(end * fps)), total)
    if last <= first:
        last = first + 1
    ids = [min(i, max(total - 1, 0)) for i in get_frame_ids(first, last, num_frames, jitter, generator)]
    return session.fetch(path, ids)


def load_clip(root: str | os.PathLike, video_id: str, start: float, end: float | None, num_frames: int,
              chunk_len: float = 15.0, jitter: bool = False, backend: str = "auto", threads: int = 1,
              generator: torch.Generator | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames of ``video_id`` in [start, end] seconds as uint8 (T, H, W, 3), from chunked or single files,
    scaled to ``size`` = (H, W) when given."""
    root = str(root)
    if chunk_len <= 0:
        return load_frames(_single_file(root, video_id), num_frames, start, end, jitter, backend, threads,
                           generator, size)
    if end is None:
        raise ValueError("whole-video mode (end=None) needs single files: use chunk_len=0")
    vdir = _video_dir(root, video_id)
    naming, present = find_chunk_layout(vdir, chunk_len)
    session = _FileSession(backend, threads, size)
    first_chunk = min(max(int(start // chunk_len), present[0]), present[-1])
    first_path = _chunk_file(vdir, first_chunk, naming, chunk_len)
    if first_chunk not in present:
        raise VideoDecodeError(first_path, "chunk file not found")
    fps = _fps(session.open(first_path))
    per_chunk = int(round(chunk_len * fps))
    ids = get_frame_ids(int(round(start * fps)), int(round(end * fps)), num_frames, jitter, generator)
    # Group the (sorted) ids by chunk; past the last chunk on disk they clamp to its last frame (video end).
    groups: dict[int, list[int]] = {}
    for i in ids:
        chunk = i // per_chunk
        if chunk > present[-1]:
            groups.setdefault(present[-1], []).append(per_chunk * (present[-1] + 1) - 1)
        else:
            groups.setdefault(chunk, []).append(i)
    parts = []
    for chunk in sorted(groups):
        path = _chunk_file(vdir, chunk, naming, chunk_len)
        if chunk not in present:
            raise VideoDecodeError(path, f"chunk file not found (chunks on disk: {present[0]}..{present[-1]})")
        parts.append(session.fetch(path, [i - chunk * per_chunk for i in groups[chunk]]))
    if len({p.shape[1:] for p in parts}) > 1:
        raise VideoDecodeError(vdir, f"chunks have different frame sizes {[p.shape[1:3] for p in parts]}")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
