"""EgoMCQ accuracy per question type.

In EgoVLP's ``egomcq.json`` the ``types`` field is **1 for inter-video** questions (the five candidates come from
different videos) and **2 for intra-video** questions (all five from the same video; the harder set). LaViLa's
``egomcq_accuracy_metrics`` pairs the sorted type ids with the names ["Intra-video", "Inter-video"], so the
numbers it prints under "Intra-video" are the inter-video accuracy and vice versa (acknowledged in showlab/EgoVLP
#19). :func:`egomcq_accuracy` reports the correct names and, under ``lavila_printed_*``, the value LaViLa prints
under each name, so that numbers can be compared with its logs.

The prediction of a question is the argmax of its candidates' scores (first maximum on ties, as ``torch.argmax``).
Accuracies are fractions (LaViLa prints percent).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TYPE_NAMES", "egomcq_accuracy"]

TYPE_NAMES = {1: "inter_video", 2: "intra_video"}
_LAVILA_NAMES = ("intra_video", "inter_video")  # the names LaViLa gives to the sorted type ids, in order


def egomcq_accuracy(scores: Any, answers: Any, types: Any) -> dict[str, float]:
    """``accuracy`` over all questions, ``inter_video`` (type 1), ``intra_video`` (type 2) for the types present,
    and ``lavila_printed_intra_video`` / ``lavila_printed_inter_video``: the values LaViLa prints under those
    (swapped) names. ``scores`` (N, candidates), ``answers`` (N,) candidate index, ``types`` (N,) 1 or 2."""
    scores = np.asarray(scores)
    answers, types = np.asarray(answers).astype(np.int64), np.asarray(types).astype(np.int64)
    if scores.ndim != 2 or answers.shape != (len(scores),) or types.shape != (len(scores),):
        raise ValueError(f"scores (N, candidates), answers (N,) and types (N,) disagree: {scores.shape}, "
                         f"{answers.shape}, {types.shape}")
    if len(scores) == 0:
        raise ValueError("no questions")
    unknown = sorted(set(types.tolist()) - set(TYPE_NAMES))
    if unknown:
        raise ValueError(f"question types must be 1 (inter-video) or 2 (intra-video), got {unknown}")
    correct = scores.argmax(axis=1) == answers
    out = {"accuracy": float(correct.mean())}
    present = sorted(set(types.tolist()))
    for t in present:
        out[TYPE_NAMES[t]] = float(correct[types == t].mean())
    for t, name in zip(present, _LAVILA_NAMES):
        out[f"lavila_printed_{name}"] = out[TYPE_NAMES[t]]
    return out
