"""Dense sliding-window features of whole videos: streamed decoding, windowing, encoding.

Windows are counted in frames of the (optionally resampled) video: window ``k`` spans frames
``[k * stride, k * stride + window)``, i.e. ``start_s = k * stride / fps`` and ``end_s = (k * stride + window) / fps``;
the model sees ``clip_length`` frames of it, the segment midpoints of the evaluation sampler
(:func:`lavila.data.video.get_frame_ids`), so a window's ``proj`` feature is the evaluation path's embedding of the
clip ``[start_s, end_s]`` (same frames, same centre crop and normalisation). Windows run until the last one reaches
the end of the video: ``1 + ceil(max(frames - window, 0) / stride)`` of them; a window reaching past the end is cut
there (``end_s`` is the video's end and its ``clip_length`` frames are sampled over the shorter span, as the
evaluation does for a clip ending after the video). With ``fps`` the video is resampled first: frame ``j`` of the
resampled video is source frame ``floor(j * source_fps / fps)``.

Streaming: frames are decoded once, in order (:func:`lavila.data.video.stream_frames`); the decoded frames of the
windows not yet complete are kept (a window cut by the end of the video samples other frames), only the sampled
ones are converted to RGB and transformed, each once, and a frame is dropped as soon as no later window can use it,
so memory holds about one window of frames whatever the video length. Chunked videos (``<id>/0000.mp4``...) are read
chunk after chunk with the global frame numbering of :func:`lavila.data.video.load_clip` (a chunk shorter than
``chunk_len`` seconds repeats its last frame up to the next chunk, as the evaluation's clamping does).

Feature kinds (:class:`WindowEncoder`): ``proj`` (the projected embedding, L2-normalised unless
``normalize=False``: ``CLIP.encode_video``), ``pooled`` (the visual tower's pooled output before the projection),
``tokens`` (per-frame patch-token maps (T, grid_h, grid_w, D) after the tower's final norm).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lavila.data.transforms import VideoTransform
from lavila.data.video import DecodedFrame, VideoDecodeError, chunk_paths, get_frame_ids, stream_frames

__all__ = ["WindowSpec", "FEATURE_KINDS", "window_count", "video_frames", "StreamingWindows", "WindowEncoder",
           "extract_video"]

FEATURE_KINDS = ("proj", "pooled", "tokens")


@dataclass(frozen=True)
class WindowSpec:
    """Sliding windows: ``window`` / ``stride`` in frames (at ``fps`` when given, else the video's own rate), each
    seen by the model as ``clip_length`` frames."""

    window: int
    stride: int
    clip_length: int
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1 or self.clip_length < 1:
            raise ValueError(f"--window, --stride and --clip-length must be >= 1 (got {self.window}, {self.stride}, "
                             f"{self.clip_length})")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"--fps must be > 0, got {self.fps}")


def window_count(frames: int, window: int, stride: int) -> int:
    """Windows of a video of ``frames`` frames (the last one reaches the end; at least one)."""
    return 1 + math.ceil(max(frames - window, 0) / stride)


def video_frames(source: str | os.PathLike, chunk_len: float = 0.0, threads: int = 1
                 ) -> tuple[float, Iterator[tuple[int, DecodedFrame]]]:
    """``(fps, iterator of (frame index, frame))`` of a single file, or of a folder of chunk files when
    ``chunk_len > 0`` (global frame numbers as :func:`lavila.data.video.load_clip`)."""
    source = str(source)
    if chunk_len <= 0:
        fps, frames = stream_frames(source, threads)
        return fps, enumerate(frames)
    chunks = chunk_paths(source, chunk_len)
    missing = sorted(set(range(chunks[-1][0] + 1)) - {c for c, _ in chunks})
    if missing:
        raise VideoDecodeError(source, f"chunk files missing: {missing[:5]} (chunks must be contiguous from 0)")
    fps, first = stream_frames(chunks[0][1], threads)
    per_chunk = int(round(chunk_len * fps))

    def frames() -> Iterator[tuple[int, DecodedFrame]]:
        for c, path in chunks:
            stream = first if c == chunks[0][0] else stream_frames(path, threads)[1]
            last, count = None, 0
            for count, frame in enumerate(stream, 1):
                if count > per_chunk:  # frames past the chunk's nominal length are never addressed
                    stream.close()
                    count = per_chunk
                    break
                last = frame
                yield c * per_chunk + count - 1, frame
            if last is None:
                raise VideoDecodeError(path, "no frame could be decoded")
            if c != chunks[-1][0]:
                for j in range(count, per_chunk):
                    yield c * per_chunk + j, last

    return fps, frames()


class StreamingWindows:
    """Turn a stream of ``(index, frame)`` into ``(window index, clip (3, T, S, S))`` in window order.

    ``num_windows`` and ``length`` (frames of the resampled video) are known once the stream is exhausted.
    ``peak_frames`` is the most transformed and raw frames held at once (memory stays flat in video length)."""

    def __init__(self, frames: Iterator[tuple[int, DecodedFrame]], source_fps: float, spec: WindowSpec,
                 transform: VideoTransform, name: str = "") -> None:
        self.frames, self.spec, self.transform, self.name = frames, spec, transform, name
        self.rate = 1.0 if spec.fps is None else source_fps / spec.fps
        self.fps = source_fps if spec.fps is None else float(spec.fps)
        self.num_windows: int | None = None
        self.length = 0
        self.source_frames = 0
        self.peak_frames = 0
        self._raw: dict[int, DecodedFrame] = {}
        self._ready: dict[int, torch.Tensor] = {}

    def _src(self, j: int) -> int:
        return j if self.rate == 1.0 else int(math.floor(j * self.rate + 1e-9))

    def _ids(self, k: int, length: int | None = None) -> list[int]:
        """Source frames of window ``k``; ``length``: the resampled video's frame count (the window is cut there)."""
        s = self.spec
        start = k * s.stride
        end = start + s.window if length is None else min(start + s.window, length)
        return [self._src(j) for j in get_frame_ids(start, end, s.clip_length)]

    def _clip(self, ids: list[int]) -> torch.Tensor:
        new = sorted(i for i in set(ids) if i not in self._ready)
        if new:
            arrays = [self._raw.pop(i).rgb() for i in new]
            if len({a.shape for a in arrays}) > 1:
                raise VideoDecodeError(self.name, f"frames of different sizes {sorted({a.shape for a in arrays})}")
            out = self.transform(np.stack(arrays))  # (3, t, S, S): each frame transformed once
            for n, i in enumerate(new):
                self._ready[i] = out[:, n]
        return torch.stack([self._ready[i] for i in ids], dim=1)

    def _drop_before(self, first: int) -> None:
        for store in (self._raw, self._ready):
            for i in [i for i in store if i < first]:
                del store[i]

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        # windows that may need the current frame, in order: (k, source ids, last source frame of its span); one is
        # complete once its whole span has been decoded (a span cut by the end of the video samples other frames)
        pending: list[tuple[int, list[int], int]] = []
        next_k, last_index, last_frame = 0, -1, None
        stride, window = self.spec.stride, self.spec.window
        for index, frame in self.frames:
            if index != last_index + 1:
                raise VideoDecodeError(self.name, f"frame {index} follows frame {last_index}")
            last_index, last_frame = index, frame
            while self._src(next_k * stride) <= index:
                pending.append((next_k, self._ids(next_k), self._src(next_k * stride + window - 1)))
                next_k += 1
            if any(self._src(k * stride) <= index <= end for k, _, end in pending):
                self._raw[index] = frame  # converted to RGB only if a window samples it
            self.peak_frames = max(self.peak_frames, len(self._raw) + len(self._ready))
            while pending and pending[0][2] <= index:
                k, ids, _ = pending.pop(0)
                yield k, self._clip(ids)
                self._drop_before(self._src((pending[0][0] if pending else next_k) * stride))
        if last_frame is None:
            raise VideoDecodeError(self.name, "no frame could be decoded")
        self.source_frames = total = last_index + 1
        length = total if self.rate == 1.0 else int(math.floor((total - 1) / self.rate + 1e-9)) + 1
        self.length = length
        self.num_windows = window_count(length, window, stride)
        first = pending[0][0] if pending else next_k
        for k in range(first, self.num_windows):
            ids = self._ids(k, length)
            missing = [i for i in set(ids) if i not in self._raw and i not in self._ready]
            if missing:  # only the last frame can be missing: a window starting past every decoded frame
                if missing != [total - 1]:
                    raise RuntimeError(f"{self.name}: frames {missing} of window {k} were not kept")
                self._raw[total - 1] = last_frame
            yield k, self._clip(ids)


class WindowEncoder:
    """``clips (B, 3, T, S, S) -> features`` of one kind (see the module docstring), float32 on CPU."""

    def __init__(self, model: nn.Module, kind: str = "proj", normalize: bool = True,
                 device: torch.device | str = "cpu", autocast: Any = None) -> None:
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
        visual = getattr(model, "visual", None)
        if visual is None:
            raise ValueError("the model has no visual tower")
        if kind == "proj" and getattr(visual, "image_projection", None) is None:
            raise ValueError("this model has no projection (a classifier checkpoint): use --features pooled")
        self.model, self.visual, self.kind, self.normalize = model, visual, kind, normalize
        self.device, self.autocast = torch.device(device), autocast

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        video = clips.to(self.device, non_blocking=True)
        with self.autocast if self.autocast is not None else nullcontext():
            if self.kind == "proj":
                out = self.visual(video)
                out = nn.functional.normalize(out, dim=-1) if self.normalize else out
            elif self.kind == "pooled":
                out = self.visual.forward_features(video)
            else:
                out = token_maps(self.visual, video)
        return out.float().cpu()


def token_maps(visual: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Per-frame patch tokens after the tower's final norm: (B, T, grid_h, grid_w, D). Read with a forward hook,
    so the tower's own forward (and its weights) are used unchanged."""
    b, _, t, h, w = video.shape
    p = int(visual.patch_size)
    gh, gw = h // p, w // p
    captured: dict[str, torch.Tensor] = {}
    if hasattr(visual, "blocks") and hasattr(visual, "norm"):  # TimeSformer / TimeMamba: patch-major, time-minor
        layer = visual.norm
    elif hasattr(visual, "transformer") and hasattr(visual, "ln_post"):  # ViT: frame-major, ln_post on the CLS
        layer = visual.transformer
    elif hasattr(visual, "norm_f"):  # ViViM: per frame (patches with the CLS at cls_position)
        layer = visual.norm_f
    else:
        raise ValueError(f"--features tokens is not supported for {type(visual).__name__}")
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
    try:
        visual.forward_features(video)
    finally:
        handle.remove()
    x = captured["x"]
    if layer is getattr(visual, "norm", None):
        tokens = x[:, 1:].reshape(b, gh * gw, t, -1).transpose(1, 2)
    elif layer is getattr(visual, "transformer", None):
        tokens = visual.ln_post(x[:, 1:]).reshape(b, t, gh * gw, -1)
    else:
        m = int(visual.cls_position)
        x = x.reshape(b, t, gh * gw + 1, -1)
        tokens = torch.cat([x[:, :, :m], x[:, :, m + 1:]], dim=2)
    return tokens.reshape(b, t, gh, gw, tokens.shape[-1])


def extract_video(source: str | os.PathLike, spec: WindowSpec, transform: VideoTransform, encoder: WindowEncoder,
                  batch_size: int = 16, chunk_len: float = 0.0, threads: int = 1) -> dict[str, Any]:
    """Features of every window of one video: ``features`` (N, ...) float32, ``start_s`` / ``end_s`` (N,) float64,
    ``fps`` (of the windows' frame grid), ``source_fps``, ``source_frames``, ``peak_frames``."""
    source_fps, frames = video_frames(source, chunk_len, threads)
    windows = StreamingWindows(frames, source_fps, spec, transform, str(source))
    parts, batch, order = [], [], []
    for k, clip in windows:
        batch.append(clip)
        order.append(k)
        if len(batch) == batch_size:
            parts.append(encoder(torch.stack(batch)))
            batch = []
    if batch:
        parts.append(encoder(torch.stack(batch)))
    features = torch.cat(parts)
    n = windows.num_windows
    if order != list(range(n)):
        raise RuntimeError(f"{source}: windows came out of order or incomplete ({len(order)} of {n})")
    starts = np.arange(n, dtype=np.float64) * spec.stride
    ends = np.minimum(starts + spec.window, windows.length)
    return {"features": features, "start_s": starts / windows.fps, "end_s": ends / windows.fps,
            "fps": windows.fps, "source_fps": source_fps, "source_frames": windows.source_frames,
            "peak_frames": windows.peak_frames}
