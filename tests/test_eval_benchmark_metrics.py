"""Metrics of LaViLa's extra benchmarks on hand-computed cases: Charades mAP (ties, unlabeled videos, a class
without positives), EGTEA top-1 / mean-class accuracy, EgoMCQ accuracy per question type (and LaViLa's swap)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lavila.evaluation.benchmarks import pool_view_logits
from lavila.evaluation.charades import charades_map, charades_metrics
from lavila.evaluation.egomcq import egomcq_accuracy
from lavila.evaluation.egtea import egtea_metrics

# videos x classes; v3 has no label (its high scores must not count), class 2 has no positive
TARGETS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float64)
SCORES = np.array([[0.5, 0.5, 0.1],    # class 0: v0 and v1 (both positive) tie behind v2 (negative)
                   [0.5, 0.2, 0.2],    # class 1: v2 (pos) 0.7 > v0 (neg) 0.5 > v1 (pos) 0.2
                   [0.9, 0.7, 0.3],
                   [0.99, 0.99, 0.99]])
AP0 = (1 / 2 + 2 / 3) / 2   # positives at ranks 2 and 3
AP1 = (1 / 1 + 2 / 3) / 2   # positives at ranks 1 and 3


def test_charades_map_hand_computed_with_ties_unlabeled_video_and_class_without_positive():
    m_ap, weighted, aps = charades_map(SCORES, TARGETS)
    assert aps[0] == pytest.approx(AP0) and aps[1] == pytest.approx(AP1)
    assert math.isnan(aps[2]) and math.isnan(m_ap)  # LaViLa: one class without positive makes the mean nan
    assert weighted[:2] == pytest.approx([AP0 * 2 / 4, AP1 * 2 / 4])
    metrics = charades_metrics(SCORES, TARGETS)
    assert metrics["map_present"] == pytest.approx((AP0 + AP1) / 2)
    assert metrics["classes_without_positive"] == 1
    m_ap2, _, _ = charades_map(SCORES[:, :2], TARGETS[:, :2])
    assert m_ap2 == pytest.approx((AP0 + AP1) / 2)
    assert charades_metrics(SCORES[:, :2] + 5, TARGETS[:, :2])["map"] == pytest.approx(m_ap2)  # rank-based


def _naive_charades_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Straight per-class loop of the definition (unlabeled rows to -inf, numpy argsort of the negated column)."""
    scores = scores.astype(np.float64).copy()
    scores[targets.sum(1) == 0] = -np.inf
    aps = []
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c])
        hits, ap, found = targets[order, c] == 1, 0.0, 0
        if hits.sum() == 0:
            aps.append(float("nan"))
            continue
        for rank, hit in enumerate(hits, 1):
            if hit:
                found += 1
                ap += found / rank
        aps.append(ap / hits.sum())
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_charades_map_matches_the_definition_on_random_tied_scores(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (60, 7)).astype(np.float32)  # many ties between positives and negatives
    targets = (rng.random((60, 7)) < 0.3).astype(np.float64)
    targets[:5] = 0  # unlabeled videos
    targets[5:8] *= 2  # a label of 2 makes a video labelled but is not a positive (only exactly 1 is)
    assert charades_map(scores, targets)[0] == pytest.approx(_naive_charades_map(scores, targets), abs=1e-12)


def test_charades_map_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="videos, classes"):
        charades_map(np.zeros((3, 2)), np.zeros((3, 3)))


def test_egtea_top1_and_lavila_mean_class_accuracy():
    targets = np.array([0, 0, 1, 1, 2])
    predicted = [0, 1, 1, 1, 3]  # class 3 is only predicted: LaViLa's confusion matrix has a row of zeros for it
    scores = np.full((5, 4), 0.1)
    scores[np.arange(5), predicted] = 0.9
    scores[0, 2] = 0.9  # a tie: the lower class index (0, the target) wins
    m = egtea_metrics(scores, targets)
    assert m["acc1"] == pytest.approx(3 / 5)
    assert m["mean_acc"] == pytest.approx((1 / 2 + 1 + 0 + 0) / 4)
    assert m["mean_acc_present"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_egomcq_accuracy_per_type_and_lavila_swapped_labels():
    scores = np.array([[0.9, 0.1, 0.0, 0.0, 0.0],   # type 1, answer 0: right
                       [0.0, 0.2, 0.8, 0.0, 0.0],   # type 1, answer 2: right
                       [0.5, 0.6, 0.0, 0.0, 0.0],   # type 2, answer 0: wrong
                       [0.0, 0.0, 0.0, 0.0, 0.7],   # type 2, answer 4: right
                       [0.3, 0.3, 0.0, 0.0, 0.0]])  # type 2, answer 1: tie, first maximum (0) is predicted: wrong
    m = egomcq_accuracy(scores, [0, 2, 0, 4, 1], [1, 1, 2, 2, 2])
    assert m["inter_video"] == pytest.approx(1.0) and m["intra_video"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # LaViLa prints type 1 (inter-video) under "Intra-video" and type 2 under "Inter-video"
    assert m["lavila_printed_intra_video"] == m["inter_video"]
    assert m["lavila_printed_inter_video"] == m["intra_video"]
    with pytest.raises(ValueError, match="1 \\(inter-video\\) or 2"):
        egomcq_accuracy(scores, [0] * 5, [1, 1, 3, 2, 2])


def test_pool_view_logits_max_then_softmax():
    logits = torch.tensor([[[0.1, 0.9], [0.8, 0.3]]])  # one video, two views
    pooled = pool_view_logits(logits)
    assert torch.allclose(pooled, torch.softmax(torch.tensor([[0.8, 0.9]]), dim=1))
    single = torch.tensor([[[0.3, 0.4]]])
    assert torch.equal(pool_view_logits(single), single[:, 0])  # one view: raw cosines
