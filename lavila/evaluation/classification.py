"""Classification metrics: top-k accuracy, mean-class accuracy, verb/noun marginals of EK100 action scores.

Conventions:

* Scores are ranked descending with ties ordered by class index, lower first (a stable sort), so top-k never
  depends on the platform's sort.
* ``mean_class_accuracy`` averages the recall of the classes present in the targets (the usual definition).
  ``confusion_mean_class_accuracy`` is the reference's (video-mamba-suite ``get_mean_accuracy``): its confusion
  matrix spans targets and predictions, so a class that was only predicted enters the mean as a 0; it is reported
  under its own label so that numbers compare with the reference.
* Verb / noun scores are marginalised from action probabilities: the probability of verb v is the sum over the
  actions whose verb is v; a verb (noun) that no action contains gets probability 0 (the reference read action 0's).

``ek100_cls_metrics`` returns percentages (as the reference prints them); the functions below return fractions.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["topk_accuracy", "topk_correct", "mean_class_accuracy", "confusion_mean_class_accuracy", "marginalize",
           "ek100_cls_metrics"]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype != torch.float64:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check(scores: np.ndarray, targets: np.ndarray) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, num_classes), got shape {scores.shape}")
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must be ({scores.shape[0]},) to match the scores, got shape {targets.shape}")
    if len(targets) and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"target ids must lie in [0, {scores.shape[1]}), got [{targets.min()}, {targets.max()}]")


def topk_correct(scores: Any, targets: Any, k: int) -> np.ndarray:
    """Boolean (N,): the target is among the k best scores (descending, ties: lower class index first)."""
    scores, targets = _np(scores), _np(targets).astype(np.int64)
    _check(scores, targets)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    ahead = (scores > target_scores).sum(1)
    ahead += ((scores == target_scores) & (np.arange(scores.shape[1])[None, :] < targets[:, None])).sum(1)
    return ahead < k


def topk_accuracy(scores: Any, targets: Any, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose target is among the k best scores, for every k in ``ks``."""
    return {k: float(topk_correct(scores, targets, k).mean()) for k in ks}


def _predictions(scores: np.ndarray) -> np.ndarray:
    return np.argmax(scores, axis=1)  # first maximum = lower class index on ties


def _class_counts(predictions: Any, targets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: number of targets (support), correct predictions (hits), predictions."""
    predictions, targets = _np(predictions).astype(np.int64), _np(targets).astype(np.int64)
    if predictions.shape != targets.shape or predictions.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} must be equal-length vectors")
    if targets.size == 0:
        raise ValueError("no samples")
    size = int(max(predictions.max(), targets.max())) + 1
    support = np.bincount(targets, minlength=size)
    hits = np.bincount(targets[predictions == targets], minlength=size)
    return support, hits, np.bincount(predictions, minlength=size)


def mean_class_accuracy(predictions: Any, targets: Any) -> float:
    """Mean over the classes present in ``targets`` of the per-class recall (fraction)."""
    support, hits, _ = _class_counts(predictions, targets)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def confusion_mean_class_accuracy(predictions: Any, targets: Any) -> float:
    """The reference's confusion-matrix mean accuracy: sum of the recalls of the target classes divided by the
    number of classes in targets ∪ predictions (classes only predicted count as 0)."""
    support, hits, predicted = _class_counts(predictions, targets)
    present = support > 0
    return float(np.sum(hits[present] / support[present]) / (present | (predicted > 0)).sum())


def marginalize(action_probs: Any, action_to_class: Any, num_classes: int | None = None) -> np.ndarray:
    """(N, num_classes) sums of the action probabilities per verb (or noun); classes without actions get 0."""
    probs = _np(action_probs)
    mapping = _np(action_to_class).astype(np.int64)
    if probs.ndim != 2 or mapping.shape != (probs.shape[1],):
        raise ValueError(f"action_probs (N, A) and action_to_class (A,) disagree: {probs.shape} vs {mapping.shape}")
    num_classes = int(mapping.max()) + 1 if num_classes is None else num_classes
    if mapping.min() < 0 or mapping.max() >= num_classes:
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    one_hot = np.zeros((len(mapping), num_classes), dtype=probs.dtype if probs.dtype.kind == "f" else np.float64)
    one_hot[np.arange(len(mapping)), mapping] = 1
    return probs @ one_hot


def ek100_cls_metrics(probs: Any, targets: Any, act2verb: Any, act2noun: Any, num_verbs: int | None = None,
                      num_nouns: int | None = None) -> dict[str, float]:
    """EK100 action recognition metrics in percent.

    ``probs`` (N, A) action probabilities (or any scores whose sums are meaningful), ``targets`` (N,) action ids,
    ``act2verb`` / ``act2noun`` (A,) the verb / noun of every action. Keys: ``acc1``, ``acc5``, ``mean_acc`` (classes
    in the targets), ``mean_acc_cm`` (the reference's confusion-matrix version), and ``verb_``/``noun_``-prefixed
    ``acc1``, ``acc5``, ``mean_acc`` from the marginalised probabilities.
    """
    probs, targets = _np(probs), _np(targets).astype(np.int64)
    _check(probs, targets)
    act2verb, act2noun = _np(act2verb).astype(np.int64), _np(act2noun).astype(np.int64)
    out: dict[str, float] = {}
    k5 = min(5, probs.shape[1])
    pred = _predictions(probs)
    out["acc1"] = 100 * float(topk_correct(probs, targets, 1).mean())
    out["acc5"] = 100 * float(topk_correct(probs, targets, k5).mean())
    out["mean_acc"] = 100 * mean_class_accuracy(pred, targets)
    out["mean_acc_cm"] = 100 * confusion_mean_class_accuracy(pred, targets)
    for name, mapping, size in (("verb", act2verb, num_verbs), ("noun", act2noun, num_nouns)):
        marginal = marginalize(probs, mapping, size)
        labels = mapping[targets]
        out[f"{name}_acc1"] = 100 * float(topk_correct(marginal, labels, 1).mean())
        out[f"{name}_acc5"] = 100 * float(topk_correct(marginal, labels, min(5, marginal.shape[1])).mean())
        out[f"{name}_mean_acc"] = 100 * mean_class_accuracy(_predictions(marginal), labels)
    return out
