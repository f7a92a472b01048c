"""Classification metrics: top-k with ties, mean-class accuracy (ours and the reference's), marginals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lavila.evaluation.classification import (
    confusion_mean_class_accuracy,
    ek100_cls_metrics,
    marginalize,
    mean_class_accuracy,
    topk_accuracy,
    topk_correct,
)


def test_topk_hand_computed_with_ties():
    scores = np.array([
        [0.1, 0.7, 0.2, 0.0],  # target 1: top-1
        [0.5, 0.5, 0.0, 0.0],  # target 1 ties with class 0, which comes first -> top-2 only
        [0.3, 0.3, 0.3, 0.1],  # target 0 ties, lowest index -> top-1
        [0.4, 0.3, 0.2, 0.1],  # target 3 -> rank 4
    ])
    targets = np.array([1, 1, 0, 3])
    assert topk_correct(scores, targets, 1).tolist() == [True, False, True, False]
    assert topk_accuracy(scores, targets, (1, 2, 4)) == {1: 0.5, 2: 0.75, 4: 1.0}
    assert topk_accuracy(torch.from_numpy(scores), torch.from_numpy(targets), (1,)) == {1: 0.5}


def test_topk_rejects_bad_targets():
    with pytest.raises(ValueError, match="target ids"):
        topk_correct(np.zeros((2, 3)), np.array([0, 3]), 1)
    with pytest.raises(ValueError, match="must be"):
        topk_correct(np.zeros((2, 3)), np.array([0]), 1)


def test_mean_class_accuracy_vs_reference_confusion_version():
    # class 0: 2 samples, 1 right; class 1: 1 sample, right; class 2 is only predicted.
    targets = np.array([0, 0, 1])
    preds = np.array([0, 2, 1])
    assert mean_class_accuracy(preds, targets) == pytest.approx((0.5 + 1.0) / 2)
    # reference: recalls summed over the target classes, divided by |targets ∪ predictions| = 3
    assert confusion_mean_class_accuracy(preds, targets) == pytest.approx((0.5 + 1.0) / 3)
    assert mean_class_accuracy(targets, targets) == 1.0


def test_marginalize_gives_zero_to_classes_without_actions():
    probs = np.array([[0.5, 0.3, 0.2]])
    act2verb = np.array([0, 2, 0])  # verb 1 has no action
    out = marginalize(probs, act2verb)
    np.testing.assert_allclose(out, [[0.7, 0.0, 0.3]])
    np.testing.assert_allclose(marginalize(probs, act2verb, num_classes=4), [[0.7, 0.0, 0.3, 0.0]])
    with pytest.raises(ValueError, match="disagree"):
        marginalize(probs, np.array([0, 1]))


def test_ek100_cls_metrics_hand_case():
    act2verb = np.array([0, 0, 1])
    act2noun = np.array([0, 1, 1])
    probs = np.array([
        [0.6, 0.3, 0.1],  # target 0: right; verb 0 (0.9) right; noun 0 (0.6) right
        [0.5, 0.1, 0.4],  # target 2: wrong (pred 0); verb 0 (0.6) vs target verb 1 wrong; noun 1 (0.5) vs 0.5 tie
    ])
    targets = np.array([0, 2])
    m = ek100_cls_metrics(probs, targets, act2verb, act2noun)
    assert m["acc1"] == pytest.approx(50.0)
    assert m["acc5"] == pytest.approx(100.0)
    assert m["mean_acc"] == pytest.approx(50.0)  # classes 0 (1/1) and 2 (0/1)
    assert m["mean_acc_cm"] == pytest.approx(50.0)  # no class only predicted
    assert m["verb_acc1"] == pytest.approx(50.0)
    # noun of sample 2: noun 0 = 0.5, noun 1 = 0.1 + 0.4 = 0.5: tie -> noun 0 first -> wrong (target noun 1)
    assert m["noun_acc1"] == pytest.approx(50.0)
    assert set(m) == {"acc1", "acc5", "mean_acc", "mean_acc_cm", "verb_acc1", "verb_acc5", "verb_mean_acc",
                      "noun_acc1", "noun_acc5", "noun_mean_acc"}
