"""EGTEA Gaze+ action recognition metrics as LaViLa computes them.

LaViLa builds a confusion matrix over the labels that occur in the targets or the argmax predictions and reports
``trace / sum`` (top-1) and the mean over the matrix rows of the per-row recall (0 for a row without targets, i.e.
a class that was only predicted): that is :func:`~lavila.evaluation.classification.confusion_mean_class_accuracy`.
Predictions are the first maximum on ties. Fractions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lavila.evaluation.classification import confusion_mean_class_accuracy, mean_class_accuracy, topk_correct

__all__ = ["egtea_metrics"]


def egtea_metrics(scores: Any, targets: Any) -> dict[str, float]:
    """``acc1`` (top-1), ``mean_acc`` (LaViLa's confusion-matrix mean class accuracy) and ``mean_acc_present``
    (mean recall over the classes in the targets only)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets).astype(np.int64)
    predictions = np.argmax(scores, axis=1)
    return {"acc1": float(topk_correct(scores, targets, 1).mean()),
            "mean_acc": confusion_mean_class_accuracy(predictions, targets),
            "mean_acc_present": mean_class_accuracy(predictions, targets)}
