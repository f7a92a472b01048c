"""Shared base of the video datasets: decode a clip, transform it, and apply the bad-sample policy.

Policy (``on_error``): ``"skip"`` (training default) records the path and reason in ``skip_tracker`` and returns
``None`` for the loader's collate to drop and count; ``"raise"`` (evaluation default, always used when
``is_training=False`` unless overridden) raises ``VideoDecodeError`` naming the path.

Resize path (``fused_resize``): off by default, as the engines' ``--fused-decode-crop`` flag: frames are decoded at
their stored size and ``VideoTransform`` crops a view of them and resizes only the crop (one batched uint8 call).
With ``fused_resize=True`` the decoder scales whole frames so that the crop comes out at S x S (``CropPlan``); with
stock decord that scaling costs more than the separate crop + resize it saves (one process, 8 frames of 568x320
H.264, 224 px: decode +6-7 ms/clip, transform -3 ms/clip; ``benchmarks/bench_data.py --stages``), so it is kept
only as an option. The two paths give slightly different pixels: do not switch between them when resuming a run.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from lavila.data.layout_kernel import load_kernel as load_layout_kernel
from lavila.data.loader import SkipTracker, tune_worker_allocator
from lavila.data.tokenizer import get_tokenizer
from lavila.data.transforms import VideoTransform
from lavila.data.video import (
    BACKENDS,
    VideoDecodeError,
    load_clip,
    load_frames,
    preload_backends,
    probe_frame_size,
    video_path_key,
)

__all__ = ["ClipDataset"]


class ClipDataset(Dataset):
    """Common parameters of every video dataset (subclasses implement ``__len__`` / ``__getitem__``)."""

    def __init__(self, root: str | os.PathLike, num_frames: int = 4, chunk_len: float = 15.0, crop_size: int = 224,
                 is_training: bool = False, norm: str = "openai", context_length: int = 77, backend: str = "auto",
                 output: str = "float", on_error: str | None = None, decode_threads: int = 1,
                 fused_resize: bool = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"video root {root} is not a folder (check --root / --video-root)")
        self.root = str(root)
        self.num_frames = int(num_frames)
        self.chunk_len = float(chunk_len)
        self.is_training = is_training
        self.context_length = context_length
        self.backend = backend
        self.decode_threads = decode_threads
        self.transform = VideoTransform(crop_size, is_training=is_training, norm=norm, output=output)
        self.on_error = on_error or ("skip" if is_training else "raise")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")
        self.skip_tracker = SkipTracker()
        self.fused_resize = fused_resize
        self._frame_sizes: dict[str, tuple[int, int]] = {}
        # Build / import once here so that forked DataLoader workers inherit them
        get_tokenizer()
        preload_backends(backend)
        load_layout_kernel()

    def _decode(self, key: str, load, probe) -> torch.Tensor:
        tune_worker_allocator()  # once per DataLoader worker: reuse heap memory for the per-clip buffers
        # fused_resize: the resize is fused into decoding (CropPlan: same crop, no separate resize pass) once the
        # frame size of the video is known; it is read from the file header on first use (cached per worker).
        size = self._frame_sizes.get(key) if self.fused_resize else None
        if size is None and self.fused_resize:
            try:
                size = probe()
            except Exception:  # noqa: BLE001 - the plain path below reports the problem with its path
                size = None
            if size is not None:
                if len(self._frame_sizes) > 100_000:
                    self._frame_sizes.clear()
                self._frame_sizes[key] = size
        if size is None:
            return self.transform(load(None))
        plan = self.transform.plan(*size)
        return self.transform.apply_plan(load((plan.scaled_h, plan.scaled_w)), plan)

    def load_video_clip(self, video_id: str, start: float, end: float | None) -> torch.Tensor:
        """(3, T, S, S) frames of ``video_id`` between ``start`` and ``end`` seconds (jittered when training)."""
        if end is not None and not start <= end:  # also catches NaN
            raise ValueError(f"annotation of {video_id} has start {start} > end {end} (or a NaN time)")
        key = video_path_key(self.root, video_id, self.chunk_len)
        return self._decode(key, lambda size: load_clip(
            self.root, video_id, start, end, self.num_frames, self.chunk_len, jitter=self.is_training,
            backend=self.backend, threads=self.decode_threads, size=size),
            lambda: probe_frame_size(self.root, video_id, self.chunk_len))

    def load_video_file(self, path: str) -> torch.Tensor:
        """(3, T, S, S) frames sampled uniformly over the whole file."""
        folder, name = os.path.split(path)
        return self._decode(path, lambda size: load_frames(
            path, self.num_frames, 0.0, None, jitter=self.is_training, backend=self.backend,
            threads=self.decode_threads, size=size), lambda: probe_frame_size(folder, name, 0))

    def failed(self, where: str, exc: Exception) -> None:
        """Handle a sample that could not be read: record + return None (skip) or raise naming the path."""
        path = exc.path if isinstance(exc, VideoDecodeError) else where
        if self.on_error == "skip":
            self.skip_tracker.record(path, f"{type(exc).__name__}: {exc}")
            return None
        if isinstance(exc, VideoDecodeError):
            raise exc
        raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
