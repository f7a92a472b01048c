"""Charades(-Ego) multi-label mAP, as LaViLa computes it (its "approximate" Charades evaluation).

Definition (checked against LaViLa's ``lavila/utils/evaluation_charades.py``):

* Videos without any label get ``-inf`` in every class column first, so they rank last everywhere.
* Per class, the videos are ranked by descending score with numpy's default ``argsort`` of the negated column
  (quicksort family, **not stable**: the order inside a group of tied scores is whatever numpy gives, exactly as in
  LaViLa, so tied scores are handled identically on the same numpy). A video is a positive when its target is
  exactly 1.
* AP of a class = sum of the precisions at the ranks of its positives (added one after the other, in rank order)
  divided by the number of positives. A class with no positive has AP ``nan``.
* mAP = ``np.mean`` of the per-class APs, so it is ``nan`` as soon as one class has no positive (LaViLa's value);
  ``map_present`` (:func:`charades_metrics`) is the mean over the classes that have positives.
* The weighted array is ``AP_c * (positives of c) / (all positives)`` per class (not summed), as LaViLa returns it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["charades_map", "charades_metrics"]


def _as_arrays(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(scores, copy=True)
    targets = np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be (videos, classes), got {scores.shape} and "
                         f"{targets.shape}")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    return scores, targets


def charades_map(scores: Any, targets: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """``(mAP, weighted per-class AP array, per-class AP array)`` of (N, C) scores against (N, C) multi-hot
    targets (see the module docstring for the exact conventions)."""
    scores, targets = _as_arrays(scores, targets)
    unlabeled = targets.sum(axis=1) == 0
    scores[unlabeled, :] = -np.inf
    ranks = np.arange(1, scores.shape[0] + 1, dtype=np.float64)
    aps = np.empty(scores.shape[1], dtype=np.float64)
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c])
        hits = targets[order, c] == 1
        positives = hits.sum()
        if positives < 0.1:
            aps[c] = np.nan
            continue
        precision = np.cumsum(hits) / ranks
        # one addition after the other in rank order (np.sum's pairwise order would change the last bits)
        aps[c] = np.cumsum(precision[hits])[-1] / float(positives)
    weighted = aps * targets.sum(axis=0) / float(targets.sum())
    return float(np.mean(aps)), weighted, aps


def charades_metrics(scores: Any, targets: Any) -> dict[str, float]:
    """``map`` (LaViLa's value: ``nan`` if a class has no positive), ``map_present`` (mean AP over the classes
    with positives) and ``classes_without_positive``; fractions."""
    m_ap, _, aps = charades_map(scores, targets)
    present = ~np.isnan(aps)
    return {"map": m_ap, "map_present": float(np.mean(aps[present])) if present.any() else float("nan"),
            "classes_without_positive": int((~present).sum())}
