"""Mixup / CutMix for video batches (B, C, T, H, W).

CutMix (``cutmix_variant="hw"``, the default) pastes a box of the flipped batch over the **H and W** axes of every
frame and sets ``lam = 1 - box_area / (H * W)`` from the box actually pasted (after clipping at the borders).
``cutmix_variant="reference"`` (``--cutmix-variant reference``, the CLS zoo recipes) reproduces the reference, which
passes 5-D clips to timm's image Mixup: the box is drawn on H x W and ``lam`` computed from it, but it is pasted as
``x[:, :, y0:y1, x0:x1]``, i.e. over frames ``[y0, y1)`` (clipped to T) and image rows ``[x0, x1)``, full width; when
``y0 >= T`` nothing is pasted while the targets are still mixed.
Random draws use torch's global generator, so a resumed run draws the same boxes.
"""
from __future__ import annotations

import math

import torch


def one_hot_smoothed(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def _randint(high: int) -> int:
    return int(torch.randint(0, high, (1,)))


def cutmix_box(height: int, width: int, lam: float, minmax: tuple[float, float] | None = None
               ) -> tuple[int, int, int, int]:
    """Box ``(y0, y1, x0, x1)`` (clipped to the frame) whose unclipped area is ``(1 - lam)`` of ``H x W``."""
    if minmax is not None:
        cut_h = int(torch.randint(int(height * minmax[0]), int(height * minmax[1]) + 1, (1,)))
        cut_w = int(torch.randint(int(width * minmax[0]), int(width * minmax[1]) + 1, (1,)))
    else:
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = _randint(height), _randint(width)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


CUTMIX_VARIANTS = ("hw", "reference")


class VideoMixup:
    """Batch-mode mixup/cutmix with smoothed one-hot targets (timm's ``Mixup(mode='batch')`` semantics)."""

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 cutmix_minmax: tuple[float, float] | None = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", label_smoothing: float = 0.1, num_classes: int = 1000,
                 cutmix_variant: str = "hw") -> None:
        if cutmix_variant not in CUTMIX_VARIANTS:
            raise ValueError(f"unknown --cutmix-variant {cutmix_variant!r}; use one of {', '.join(CUTMIX_VARIANTS)}")
        self.cutmix_variant = cutmix_variant
        if mode != "batch":
            raise ValueError(f"--mixup-mode {mode!r} is not supported; only 'batch' (the value every recipe uses)")
        if cutmix_minmax is not None and len(cutmix_minmax) != 2:
            raise ValueError("--cutmix-minmax takes two values (min and max box side as fractions)")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.cutmix_minmax = tuple(cutmix_minmax) if cutmix_minmax is not None else None
        if self.cutmix_minmax is not None:
            self.cutmix_alpha = max(self.cutmix_alpha, 1.0)
        self.prob, self.switch_prob = prob, switch_prob
        self.smoothing, self.num_classes = label_smoothing, num_classes
        self.last: dict[str, object] = {}

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _draw(self) -> tuple[float, bool]:
        if float(torch.rand(())) >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = float(torch.rand(())) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        lam = _beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        return lam, use_cutmix

    @torch.no_grad()
    def __call__(self, video: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if video.ndim != 5:
            raise ValueError(f"VideoMixup expects (B, C, T, H, W) video, got shape {tuple(video.shape)}")
        lam, use_cutmix = self._draw()
        box = None
        if lam < 1.0:
            flipped = video.flip(0)
            if use_cutmix:
                height, width = video.shape[-2:]
                box = cutmix_box(height, width, lam, self.cutmix_minmax)
                y0, y1, x0, x1 = box
                if self.cutmix_variant == "reference":  # timm on (B, C, T, H, W): rows index T, columns index H
                    video[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
                else:
                    video[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
            else:
                video.mul_(lam).add_(flipped.mul_(1.0 - lam))
        self.last = {"lam": lam, "cutmix": use_cutmix, "box": box}
        y1h = one_hot_smoothed(target, self.num_classes, self.smoothing)
        soft = y1h * lam + y1h.flip(0) * (1.0 - lam)
        return video, soft
