"""Warmup + cosine per-iteration schedule as video-mamba-suite section 4.5 describes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lavila.train.schedule import cosine_scheduler, set_lr


def test_warmup_includes_both_endpoints_then_cosine():
    s = cosine_scheduler(lr=1e-3, lr_end=1e-5, epochs=3, iters_per_epoch=4, warmup_epochs=1, lr_start=1e-6)
    assert len(s) == 12
    np.testing.assert_allclose(s[:4], np.linspace(1e-6, 1e-3, 4))
    assert s[3] == pytest.approx(1e-3) and s[4] == pytest.approx(1e-3)  # warmup end, cosine start: both lr
    n = 8
    expected = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    np.testing.assert_allclose(s[4:], expected)
    assert s[-1] > 1e-5


def test_no_warmup_and_fractional_warmup():
    s = cosine_scheduler(1.0, 0.0, epochs=2, iters_per_epoch=5, warmup_epochs=0)
    assert s[0] == 1.0 and len(s) == 10
    s = cosine_scheduler(1.0, 0.0, epochs=2, iters_per_epoch=4, warmup_epochs=0.5, lr_start=0.0)
    np.testing.assert_allclose(s[:2], [0.0, 1.0])


def test_set_lr_respects_lr_scale():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1]}, {"params": [p2], "lr_scale": 0.5}], lr=1.0)
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]
