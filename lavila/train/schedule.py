"""Per-iteration learning-rate schedule: linear warmup then cosine (video-mamba-suite ``cosine_scheduler``).

Warmup is ``np.linspace(lr_start, lr, W)`` with both endpoints included (step W-1 already equals ``lr``), then
``n = total - W`` cosine values ``lr_end + (lr - lr_end) (1 + cos(pi i / n)) / 2`` for i = 0..n-1.
"""
from __future__ import annotations

import math

import numpy as np
from torch.optim import Optimizer


def cosine_scheduler(lr: float, lr_end: float, epochs: int, iters_per_epoch: int, warmup_epochs: float = 0,
                     lr_start: float = 0.0) -> np.ndarray:
    """Learning rate for every optimiser step of the run (length ``epochs * iters_per_epoch``)."""
    total = int(epochs * iters_per_epoch)
    warmup = min(int(warmup_epochs * iters_per_epoch), total)
    warm = np.linspace(lr_start, lr, warmup) if warmup > 0 else np.array([])
    n = total - warmup
    cos = np.array([lr_end + 0.5 * (lr - lr_end) * (1 + math.cos(math.pi * i / n)) for i in range(n)])
    schedule = np.concatenate([warm, cos])
    assert len(schedule) == total
    return schedule


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Write ``lr`` (times each group's ``lr_scale``, e.g. layer decay) into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
