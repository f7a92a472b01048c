"""Zero-shot evaluation of LaViLa's extra benchmarks (EGTEA Gaze+, Charades-Ego, EgoMCQ), built on the shared
encoding loop (:func:`lavila.evaluation.zeroshot.collect`, so 1 or N processes give the same numbers) and
:func:`~lavila.evaluation.zeroshot.class_embeddings`.

* Classification (EGTEA, Charades-Ego): a video's scores are the cosines between its normalised embedding and the
  class embeddings. With several views per video (a batch of (B, V, 3, T, S, S)) the per-view cosines are
  max-pooled over the views and then softmax-ed over the classes, as LaViLa's ``validate_zeroshot`` (the softmax
  changes no argmax; single-view scores stay raw cosines, as LaViLa's).
* EgoMCQ: the query text is compared with the five candidate clips; ``similarity="cosine"`` (default) uses the
  normalised embeddings, ``"dot"`` the un-normalised ones as LaViLa does (its argmax then also depends on the clip
  embeddings' norms).

All metrics are fractions (:mod:`lavila.evaluation.charades`, :mod:`~lavila.evaluation.egtea`,
:mod:`~lavila.evaluation.egomcq`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lavila.evaluation.charades import charades_metrics
from lavila.evaluation.egomcq import egomcq_accuracy
from lavila.evaluation.egtea import egtea_metrics
from lavila.evaluation.zeroshot import class_embeddings, collect

__all__ = ["LAVILA_TEMPLATES", "class_texts", "benchmark_class_embeddings", "pool_view_logits", "each_view",
           "video_class_scores", "classifier_scores", "video_scores", "evaluate_egtea", "evaluate_charades_ego",
           "evaluate_egomcq"]

LAVILA_TEMPLATES = ("#C C {}", "#C {}")  # LaViLa's --cls-use-template prompts; the default is the bare class text


def class_texts(names: Sequence[str], templates: Sequence[str] = ("{}",)) -> list[list[str]]:
    """The texts of every class: each template filled with the class name (ensembled by ``class_embeddings``)."""
    return [[t.format(name) for t in templates] for name in names]


def benchmark_class_embeddings(model: nn.Module, names: Sequence[str], device: torch.device | str,
                               templates: Sequence[str] = ("{}",), autocast: Any = None) -> torch.Tensor:
    """(C, D) normalised class embeddings of class names (prompt-ensembled over ``templates``)."""
    context_length = int((getattr(model, "config", None) or {}).get("context_length", 77))
    return class_embeddings(model, class_texts(names, templates), device, context_length=context_length,
                            autocast=autocast)


def pool_view_logits(logits: torch.Tensor, pooling: str = "max", softmax_single: bool = False) -> torch.Tensor:
    """(B, V, C) per-view logits -> (B, C): ``max`` (LaViLa's zero-shot script) or ``mean`` (its fine-tuning
    engines) over the views, then softmax over the classes; a single view is returned as is unless
    ``softmax_single`` (LaViLa's fine-tuning validation applies the softmax there too)."""
    if logits.ndim != 3:
        raise ValueError(f"expected per-view logits (B, V, C), got shape {tuple(logits.shape)}")
    if pooling not in ("max", "mean"):
        raise ValueError(f"pooling must be 'max' or 'mean', got {pooling!r}")
    if logits.shape[1] == 1 and not softmax_single:
        return logits[:, 0]
    pooled = logits.max(dim=1).values if pooling == "max" else logits.mean(dim=1)
    return torch.softmax(pooled, dim=1)


def each_view(frames: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(B, V, C) outputs of ``forward`` on every view of a batch of (B, 3, T, S, S) videos or (B, V, 3, T, S, S)
    multi-view videos, one view of every video per call (B clips at a time, as LaViLa: the memory of one view)."""
    if frames.ndim == 5:
        frames = frames.unsqueeze(1)
    if frames.ndim != 6:
        raise ValueError(f"expected (B, 3, T, S, S) or (B, V, 3, T, S, S) frames, got {tuple(frames.shape)}")
    return torch.stack([forward(frames[:, j]) for j in range(frames.shape[1])], dim=1)


def video_class_scores(model: nn.Module, frames: torch.Tensor, classes: torch.Tensor, pooling: str = "max",
                       softmax_single: bool = False) -> torch.Tensor:
    """(B, C) zero-shot scores of a batch of videos: cosines with the class embeddings, pooled over the views
    (:func:`pool_view_logits`)."""
    def cosines(clips: torch.Tensor) -> torch.Tensor:
        video = model.encode_video(clips).float()
        return nn.functional.normalize(video, dim=-1) @ classes.to(video.device).float().t()

    return pool_view_logits(each_view(frames, cosines), pooling, softmax_single)


def classifier_scores(model: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """(B, C) class probabilities of a fine-tuned classifier: the logits of every view averaged, then softmax (as
    LaViLa's classification validation)."""
    return pool_view_logits(each_view(frames, lambda clips: model(clips).float()), "mean", softmax_single=True)


def video_scores(loader: Iterable[Any], score: Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                 device: torch.device | str, autocast: Any = None, multi_label: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) ``score(frames)`` of every video and its target (class index, or multi-hot with ``multi_label``), in
    dataset order, from a loader of ``(frames or views, target)`` items."""
    def step(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.as_tensor(batch[1]).to(device)
        return score(batch[0].to(device, non_blocking=True)), (target.float() if multi_label else target.long())

    empty_target = torch.zeros(0, num_classes, device=device) if multi_label else \
        torch.zeros(0, dtype=torch.long, device=device)
    size = len(loader.dataset)  # type: ignore[attr-defined]
    return collect(loader, step, size, (torch.zeros(0, num_classes, device=device), empty_target), autocast)


@torch.no_grad()
def evaluate_egtea(model: nn.Module, loader: Iterable[Any], classes: torch.Tensor | None, device: torch.device | str,
                   autocast: Any = None) -> tuple[dict[str, float], np.ndarray]:
    """EGTEA metrics (``acc1``, ``mean_acc``, ``mean_acc_present``; fractions) and the (N, C) scores, from a loader
    of :class:`~lavila.data.egtea.EgteaDataset` items ``(frames or views, label)``. ``classes``: the class
    embeddings of a zero-shot CLIP; None for a fine-tuned classifier (:func:`classifier_scores`)."""
    if classes is None:
        def score(frames: torch.Tensor) -> torch.Tensor:
            return classifier_scores(model, frames)
        num_classes = int(model.fc_cls.out_features)
    else:
        def score(frames: torch.Tensor) -> torch.Tensor:
            return video_class_scores(model, frames, classes)
        num_classes = classes.shape[0]
    scores, targets = video_scores(loader, score, num_classes, device, autocast)
    return egtea_metrics(scores.double().numpy(), targets.numpy()), scores.numpy()


@torch.no_grad()
def evaluate_charades_ego(model: nn.Module, loader: Iterable[Any], classes: torch.Tensor,
                          device: torch.device | str, autocast: Any = None, pooling: str = "max",
                          softmax_single: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Charades-Ego metrics (``map`` as LaViLa, ``map_present``, ``classes_without_positive``) and the (N, C)
    scores, from a loader of :class:`~lavila.data.charades_ego.CharadesEgoDataset` items ``(frames, multi-hot)``.
    ``pooling`` / ``softmax_single``: see :func:`pool_view_logits` (LaViLa's fine-tuning validation: ``mean``,
    True)."""
    def score(frames: torch.Tensor) -> torch.Tensor:
        return video_class_scores(model, frames, classes, pooling, softmax_single)

    scores, targets = video_scores(loader, score, classes.shape[0], device, autocast, multi_label=True)
    return charades_metrics(scores.numpy(), targets.numpy()), scores.numpy()


def _embed(model: nn.Module, kind: str, x: torch.Tensor, normalised: bool) -> torch.Tensor:
    if normalised:
        return (model.encode_video(x) if kind == "video" else model.encode_text(x)).float()
    tower = model.visual if kind == "video" else model.textual
    return tower(x).float()


@torch.no_grad()
def evaluate_egomcq(model: nn.Module, loader: Iterable[Any], device: torch.device | str,
                    similarity: str = "cosine", autocast: Any = None) -> tuple[dict[str, float], np.ndarray]:
    """EgoMCQ accuracies (``accuracy``, ``inter_video``, ``intra_video`` and LaViLa's swapped labels, see
    :func:`~lavila.evaluation.egomcq.egomcq_accuracy`) and the (N, K) query-candidate scores, from a loader of
    :class:`~lavila.data.egomcq.EgoMCQDataset` items ``(query tokens, candidates (K, 3, T, S, S), answer, type)``.
    ``similarity``: ``"cosine"`` (default) or ``"dot"`` (LaViLa's un-normalised dot product)."""
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    normalised = similarity == "cosine"

    def step(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, clips, answer, qtype = batch[:4]
        b, k = clips.shape[:2]
        query = _embed(model, "text", tokens.to(device, non_blocking=True), normalised)
        video = _embed(model, "video", clips.reshape(b * k, *clips.shape[2:]).to(device, non_blocking=True),
                       normalised).reshape(b, k, -1)
        return (torch.einsum("bd,bkd->bk", query, video), torch.as_tensor(answer).to(device).long(),
                torch.as_tensor(qtype).to(device).long())

    dataset = loader.dataset  # type: ignore[attr-defined]
    k = len(dataset.questions[0]["choices"]) if len(dataset) else 5
    empty = (torch.zeros(0, k, device=device), torch.zeros(0, dtype=torch.long, device=device),
             torch.zeros(0, dtype=torch.long, device=device))
    scores, answers, types = collect(loader, step, len(dataset), empty, autocast)
    return egomcq_accuracy(scores.numpy(), answers.numpy(), types.numpy()), scores.numpy()
