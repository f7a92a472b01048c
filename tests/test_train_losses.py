"""Losses: CLIP InfoNCE, max-margin ranking (relevancy-weighted and reference), soft-target / smoothed CE."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lavila.train.losses import ClassificationLoss, ClipLoss, MaxMarginRankingLoss, soft_target_cross_entropy


def test_clip_loss_matches_symmetric_cross_entropy():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    out = ClipLoss()(img, txt, torch.tensor(10.0))
    logits = 10.0 * img @ txt.t()
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert out["loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert out["clip_acc"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())


def _reference_max_margin(img, txt, margins):
    sim = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).t()
    n, terms = sim.shape[0], []
    for i in range(n):
        for j in range(n):
            if i != j:
                terms.append(max(0.0, margins[i] - (sim[i, i] - sim[i, j]).item()))
                terms.append(max(0.0, margins[i] - (sim[i, i] - sim[j, i]).item()))
    return sum(terms) / len(terms)


def test_max_margin_reference_ignores_weights_and_weighted_scales_margin():
    torch.manual_seed(1)
    img, txt = torch.randn(5, 4), torch.randn(5, 4)
    weights = torch.tensor([1.0, 0.5, 0.2, 0.8, 0.3])
    ref = MaxMarginRankingLoss(0.2, use_relevancy=False)
    assert ref(img, txt, weights)["loss"].item() == pytest.approx(_reference_max_margin(img, txt, [0.2] * 5),
                                                                 rel=1e-5)
    assert ref(img, txt, None)["loss"].item() == ref(img, txt, weights)["loss"].item()
    weighted = MaxMarginRankingLoss(0.2, use_relevancy=True)
    expected = _reference_max_margin(img, txt, (0.2 * weights).tolist())
    assert weighted(img, txt, weights)["loss"].item() == pytest.approx(expected, rel=1e-5)
    # full relevancy everywhere is the reference loss
    assert weighted(img, txt, torch.ones(5))["loss"].item() == pytest.approx(ref(img, txt)["loss"].item())
    with pytest.raises(ValueError, match="relevancy"):
        weighted(img, txt, None)


def test_max_margin_gradients_flow():
    img = torch.randn(4, 3, requires_grad=True)
    txt = torch.randn(4, 3, requires_grad=True)
    MaxMarginRankingLoss(0.5)(img, txt, torch.ones(4))["loss"].backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_classification_losses():
    logits = torch.randn(3, 5)
    target = torch.tensor([0, 3, 4])
    smooth = ClassificationLoss(smoothing=0.1)(logits, target)
    soft = torch.full((3, 5), 0.1 / 5).scatter_(1, target[:, None], 0.9 + 0.1 / 5)
    assert smooth.item() == pytest.approx(soft_target_cross_entropy(logits, soft).item(), rel=1e-5)
    assert ClassificationLoss(smoothing=0.1)(logits, soft).item() == pytest.approx(smooth.item(), rel=1e-5)
