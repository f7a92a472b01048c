"""Clip transforms: one random-resized crop per clip (training) or a centre crop (evaluation), then normalisation.

Normalisation constants (mean / std on the 0-255 scale, RGB):

* ``openai`` — CLIP's statistics x 255, used by every video-mamba-suite recipe (``--norm-style openai``), also for
  the DeiT/Vim-initialised ViT and ViViM towers.
* ``timm`` — ImageNet statistics x 255 (``--norm-style timm``; no released recipe uses it).
* ``lavila`` — LaViLa's ``eval_zeroshot.py`` constants for its OPENAI models: CLIP's std and G/B means but a **red
  mean of 108.3272985 instead of 122.7709383** (an upstream quirk; needed to reproduce LaViLa's own numbers).

Crops: training draws ONE torchvision-style RandomResizedCrop (area scale 0.5-1, aspect 3/4-4/3, 10 tries, centre
fallback) for the whole clip (the reference's fused decoder drew one per chunk file, a bug); evaluation takes the
centre square of side min(H, W) and resizes it (the reference's "RCC", equal to resize-short-side + centre crop).
Crop and resize run on uint8 frames: the crop is a view of the decoded frames (no copy) and only that view is
resized, in one batched ``interpolate`` call over the T frames (bilinear, antialiased: torch's vectorised uint8
channels-last kernel). The reference's unfused transform resized the float clip without antialiasing and its fused
decoder used ffmpeg's (antialiased) scaler; antialiasing is kept so that the up-to-2x downscales do not alias. The
float conversion happens once, on the small crop, followed by the normalisation ``x * (1 / std) + (-mean / std)``
(``NormalizeVideo``'s arithmetic, so the float output equals the uint8 output normalised by it, on CPU). The layout
change to planar (3, T, S, S), and the float conversion with the normalisation, are one pass of a compiled kernel
(``lavila.data.layout_kernel``; NumPy / PyTorch when no C compiler is present: the same values).

Output: ``float32`` normalised (3, T, S, S) by default. ``output="uint8"`` returns the cropped uint8 clip and leaves
normalisation to ``NormalizeVideo`` on the device (4x less data through the DataLoader queues; on a CPU-only run
it only moves the same work into the main process). ``benchmarks/bench_data.py`` measures both.

Example::

    from lavila.data.transforms import VideoTransform
    tf = VideoTransform(224, is_training=True, norm="openai")
    clip = tf(frames_uint8_thwc)            # (3, T, 224, 224) float32
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lavila.data.layout_kernel import normalize_planes, planar_clip

__all__ = ["NORMALIZATION", "get_normalization", "random_resized_crop_params", "CropPlan", "VideoTransform",
           "NormalizeVideo"]

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "openai": ((122.7709383, 116.7460125, 104.09373615), (68.5005327, 66.6321579, 70.32316305)),
    "timm": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "lavila": ((108.3272985, 116.7460125, 104.0937362), (68.5005327, 66.6321579, 70.3231631)),
}


def get_normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) on the 0-255 scale for ``openai`` / ``clip``, ``timm`` / ``imagenet`` or ``lavila``."""
    key = {"clip": "openai", "imagenet": "timm"}.get(name, name)
    if key not in NORMALIZATION:
        raise ValueError(f"unknown normalisation {name!r}; choose one of {sorted(NORMALIZATION)} (or clip/imagenet)")
    return NORMALIZATION[key]


def random_resized_crop_params(height: int, width: int, scale: tuple[float, float] = (0.5, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3),
                               generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering U(scale) of the area with log-uniform aspect ratio (torchvision's rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height  # fallback: central crop clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class CropPlan:
    """Decode frames scaled to (scaled_h, scaled_w), then cut the S x S square at (top, left): the same crop as
    crop-then-resize, with the resize fused into the decoder (``VideoTransform.plan`` / ``apply_plan``)."""

    scaled_h: int
    scaled_w: int
    top: int
    left: int


class NormalizeVideo(nn.Module):
    """(x - mean) / std over channel dim 1 of (B, 3, T, H, W) or dim 0 of (3, T, H, W); accepts uint8 input.

    Computed as ``x * (1 / std) + (-mean / std)`` with both constants rounded to float32 once (the same arithmetic
    as ``VideoTransform``'s float output)."""

    def __init__(self, norm: str = "openai") -> None:
        super().__init__()
        mean, std = get_normalization(norm)
        inv_std = 1.0 / torch.tensor(std, dtype=torch.float64)
        self.register_buffer("scale", inv_std.float().view(3, 1, 1, 1), persistent=False)
        self.register_buffer("shift", (-torch.tensor(mean, dtype=torch.float64) * inv_std).float().view(3, 1, 1, 1),
                             persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if not video.is_floating_point():
            fused = normalize_planes(video, self.scale, self.shift)  # one pass on CPU (None: not applicable)
            if fused is not None:
                return fused
            # the float copy is new memory: normalise it in place
            return video.float().mul_(self.scale).add_(self.shift)
        return video * self.scale + self.shift


def _to_cthw(crop: torch.Tensor, dtype: type = np.uint8) -> torch.Tensor:
    """Contiguous (3, T, H, W) copy, as ``dtype``, of a uint8 (T, 3, H, W) view whose memory is (T, H, W, 3).
    The path without the compiled kernel: numpy's strided copy is 2-4x faster than torch's here, and converts to
    float32 in the same pass."""
    view = crop.numpy().transpose(1, 0, 2, 3)
    out = np.empty(view.shape, dtype)
    out[...] = view
    return torch.from_numpy(out)


class VideoTransform:
    """uint8 frames (T, H, W, 3) (numpy or tensor) -> (3, T, S, S) float32 normalised (or uint8)."""

    def __init__(self, crop_size: int = 224, is_training: bool = False, norm: str = "openai",
                 scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 output: str = "float") -> None:
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        self.crop_size = int(crop_size)
        self.is_training = is_training
        self.scale, self.ratio = scale, ratio
        self.output = output
        self.normalize = NormalizeVideo(norm)
        self.norm = norm

    def __call__(self, frames: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        video = torch.as_tensor(frames)
        if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(video.shape)} {video.dtype}")
        height, width = video.shape[1:3]
        top, left, h, w = self.crop_box(height, width, generator)
        crop = video[:, top:top + h, left:left + w].permute(0, 3, 1, 2)  # (T, 3, h, w) view, channels-last memory
        if (h, w) != (self.crop_size, self.crop_size):
            # A dense channels-last copy of the crop first: the uint8 kernel reads it ~20 % faster than the strided
            # view, more than the copy costs (training crops of 568x320 frames, 8 per clip: 4.1 -> 3.5 ms)
            crop = F.interpolate(crop.contiguous(memory_format=torch.channels_last),
                                 size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False,
                                 antialias=True)
        return self._finish(crop)

    def _finish(self, crop: torch.Tensor) -> torch.Tensor:
        """(T, 3, S, S) uint8 in channels-last memory -> (3, T, S, S) uint8, or float32 normalised."""
        if self.output == "uint8":
            fused = planar_clip(crop)
            return _to_cthw(crop) if fused is None else fused
        fused = planar_clip(crop, self.normalize.scale, self.normalize.shift)
        if fused is not None:
            return fused
        # NormalizeVideo's arithmetic on the float copy, in place
        return _to_cthw(crop, np.float32).mul_(self.normalize.scale).add_(self.normalize.shift)

    def crop_box(self, height: int, width: int, generator: torch.Generator | None = None
                 ) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop: random-resized (training) or the centred square (evaluation)."""
        if self.is_training:
            return random_resized_crop_params(height, width, self.scale, self.ratio, generator)
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    def plan(self, height: int, width: int, generator: torch.Generator | None = None) -> CropPlan:
        """The crop of a clip of (height, width) frames expressed as decode-time scaling + an S x S cut."""
        size = self.crop_size
        top, left, h, w = self.crop_box(height, width, generator)
        sy, sx = size / h, size / w
        scaled_h, scaled_w = max(size, int(round(height * sy))), max(size, int(round(width * sx)))
        return CropPlan(scaled_h, scaled_w, min(int(round(top * sy)), scaled_h - size),
                        min(int(round(left * sx)), scaled_w - size))

    def apply_plan(self, frames: np.ndarray | torch.Tensor, plan: CropPlan) -> torch.Tensor:
        """Frames decoded at the plan's scaled size -> (3, T, S, S), like ``__call__``."""
        video = torch.as_tensor(frames)
        if tuple(video.shape[1:3]) != (plan.scaled_h, plan.scaled_w) or video.dtype != torch.uint8:
            raise ValueError(f"frames of shape {tuple(video.shape)} do not match the crop plan {plan}")
        s = self.crop_size
        return self._finish(video[:, plan.top:plan.top + s, plan.left:plan.left + s].permute(0, 3, 1, 2))

    def __repr__(self) -> str:
        mode = "RandomResizedCrop" if self.is_training else "CenterCrop"
        return f"VideoTransform({mode} {self.crop_size}, norm={self.norm}, output={self.output})"
