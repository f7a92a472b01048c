"""Encoding loops of zero-shot evaluation, shared by ``eval_zeroshot.py`` and the training engines.

* EK100 MIR: encode every clip and its own narration, similarity ``(V Tᵀ + 1) / 2`` of the normalised embeddings,
  columns reduced to the unique sentences (the clip whose narration_id is the sentence id), then
  :func:`lavila.evaluation.retrieval.mir_metrics`.
* Zero-shot EK100 CLS: every action's texts (prompt ensembling over its narrations) are encoded, normalised,
  averaged and renormalised into one class embedding; a clip's scores are the cosines with the class embeddings;
  verb / noun scores are marginals of ``softmax(logit_scale * cosine)``.
* EgoSchema: the five option prompts of a question are encoded; the prediction is the option with the largest
  cosine to the video embedding.

Distributed evaluation: :func:`sharded_loader` gives each rank whole batches, round-robin (rank r takes batches
r, r + world, ...), so every sample is encoded in exactly the batch it would have in one process; the results are
gathered and put back in dataset order. The numbers are therefore the same as with one process.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lavila.data.relevancy import sentence_columns
from lavila.utils import distributed as du

__all__ = ["ShardedBatchSampler", "sharded_loader", "gather_in_order", "collect",
           "sentence_columns", "mir_similarity", "encode_mir", "evaluate_mir", "encode_texts", "class_embeddings",
           "evaluate_zeroshot_cls", "evaluate_egoschema", "egoschema_task"]


class ShardedBatchSampler(Sampler[list[int]]):
    """Consecutive batches of ``batch_size`` indices (the last may be shorter); rank ``r`` takes batches
    ``r, r + world, ...``. ``indices()`` lists this rank's dataset indices in the order they are produced."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world_size

    def batches(self) -> list[list[int]]:
        starts = range(self.rank * self.batch_size, self.size, self.world * self.batch_size)
        return [list(range(s, min(s + self.batch_size, self.size))) for s in starts]

    def indices(self) -> list[int]:
        return [i for b in self.batches() for i in b]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def sharded_loader(dataset: Dataset, batch_size: int, num_workers: int = 0,
                   collate_fn: Callable[[list[Any]], Any] | None = None, pin_memory: bool = False) -> DataLoader:
    """An evaluation DataLoader over this rank's batches (see the module docstring); ``loader.batch_sampler``
    knows the dataset indices (:func:`gather_in_order`)."""
    sampler = ShardedBatchSampler(len(dataset), batch_size, du.get_rank(), du.get_world_size())
    kwargs: dict[str, Any] = {"collate_fn": collate_fn} if collate_fn is not None else {}
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


def _local_indices(loader: Iterable[Any], count: int) -> torch.Tensor:
    sampler = getattr(loader, "batch_sampler", None)
    if isinstance(sampler, ShardedBatchSampler):
        idx = sampler.indices()
    elif du.get_world_size() == 1:
        idx = list(range(count))
    else:
        raise ValueError("distributed evaluation needs a loader from lavila.evaluation.zeroshot.sharded_loader "
                         "(the order of the gathered results must be known)")
    if len(idx) != count:
        raise RuntimeError(f"the loader produced {count} samples but its sampler planned {len(idx)} "
                           "(did the collate drop unreadable samples? evaluation datasets must raise instead)")
    return torch.as_tensor(idx, dtype=torch.long)


def gather_in_order(local: torch.Tensor, local_indices: torch.Tensor, size: int) -> torch.Tensor:
    """All-gather per-sample rows from every rank and place row ``i`` at dataset index ``i`` (CPU result)."""
    values = du.all_gather(local.contiguous())
    indices = du.all_gather(local_indices.to(local.device)).cpu()
    values = values.cpu()
    if len(indices) != size or not torch.equal(torch.sort(indices).values, torch.arange(size)):
        raise RuntimeError(f"gathered {len(indices)} rows for a dataset of {size}: every index must appear once")
    out = torch.empty_like(values)
    out[indices] = values
    return out


@torch.no_grad()
def collect(loader: Iterable[Any], step: Callable[[Any], tuple[torch.Tensor, ...]], size: int,
            empty: tuple[torch.Tensor, ...], autocast: Any = None) -> tuple[torch.Tensor, ...]:
    """Run ``step(batch) -> (per-sample tensors, ...)`` over this rank's batches (under ``autocast``) and gather
    every output over the ranks in dataset order (CPU). ``empty``: zero-row tensors of the outputs' trailing shapes
    and dtypes, for a rank without batches."""
    parts: list[tuple[torch.Tensor, ...]] = []
    count = 0
    for batch in loader:
        with autocast if autocast is not None else nullcontext():
            out = step(batch)
        parts.append(out)
        count += len(out[0])
    indices = _local_indices(loader, count)
    columns = [torch.cat(c) for c in zip(*parts)] if parts else list(empty)
    return tuple(gather_in_order(c, indices, size) for c in columns)


def mir_similarity(video: torch.Tensor, text: torch.Tensor, columns: np.ndarray | None = None) -> np.ndarray:
    """``(V Tᵀ + 1) / 2`` of L2-normalised (N, D) embeddings (float32, clips x texts), optionally reduced to the
    text rows ``columns`` (the unique sentences)."""
    text = text if columns is None else text[torch.as_tensor(columns, dtype=torch.long)]
    return ((video.float() @ text.float().t() + 1) / 2).numpy()


def encode_mir(model: nn.Module, loader: Iterable[Any], device: torch.device | str, size: int,
               autocast: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (video, narration-text) embeddings of every clip, in dataset order (gathered over ranks)."""
    def step(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        frames, tokens = batch[0], batch[1]
        return (model.encode_video(frames.to(device, non_blocking=True)).float(),
                model.encode_text(tokens.to(device, non_blocking=True)).float())

    empty = torch.zeros(0, _embed_dim(model), device=device)
    video, text = collect(loader, step, size, (empty, empty), autocast)
    return video, text


def evaluate_mir(model: nn.Module, loader: Iterable[Any], relevancy: np.ndarray, columns: np.ndarray | None,
                 device: torch.device | str, autocast: Any = None) -> tuple[dict[str, float], np.ndarray]:
    """EK100 MIR metrics (fractions) and the (clips x sentences) similarity matrix. ``columns`` (the clip row of
    every sentence, :func:`sentence_columns`) default to those of ``loader.dataset``'s ``clips`` / ``sentences``."""
    from lavila.evaluation.retrieval import mir_metrics

    dataset = loader.dataset  # type: ignore[attr-defined]
    if columns is None:
        columns = sentence_columns(dataset.clips["narration_id"], dataset.sentences["narration_id"])
    video, text = encode_mir(model, loader, device, len(dataset), autocast)
    similarity = mir_similarity(video, text, columns)
    if similarity.shape != tuple(relevancy.shape):
        raise ValueError(f"similarity {similarity.shape} does not match the relevancy {tuple(relevancy.shape)}")
    return mir_metrics(similarity, relevancy), similarity


@torch.no_grad()
def encode_texts(model: nn.Module, texts: Sequence[str], device: torch.device | str, batch_size: int = 256,
                 context_length: int = 77, autocast: Any = None) -> torch.Tensor:
    """Normalised text embeddings (len(texts), D) on CPU; batches are split over ranks and gathered."""
    from lavila.data.tokenizer import tokenize

    rank, world = du.get_rank(), du.get_world_size()
    sampler = ShardedBatchSampler(len(texts), batch_size, rank, world)
    out = []
    for batch in sampler:
        tokens = tokenize([texts[i] for i in batch], context_length).to(device)
        with autocast if autocast is not None else nullcontext():
            out.append(model.encode_text(tokens).float())
    local = torch.cat(out) if out else torch.zeros(0, _embed_dim(model), device=device)
    return gather_in_order(local, torch.as_tensor(sampler.indices(), dtype=torch.long), len(texts))


def class_embeddings(model: nn.Module, class_texts: Sequence[Sequence[str]], device: torch.device | str,
                     batch_size: int = 256, context_length: int = 77, autocast: Any = None) -> torch.Tensor:
    """(C, D) prompt-ensembled class embeddings: mean of each class's normalised text embeddings, renormalised."""
    if any(len(t) == 0 for t in class_texts):
        raise ValueError("every class needs at least one text")
    flat = [t for texts in class_texts for t in texts]
    owner = torch.repeat_interleave(torch.arange(len(class_texts)), torch.tensor([len(t) for t in class_texts]))
    emb = nn.functional.normalize(encode_texts(model, flat, device, batch_size, context_length, autocast), dim=-1)
    sums = torch.zeros(len(class_texts), emb.shape[1], dtype=emb.dtype).index_add_(0, owner, emb)
    return nn.functional.normalize(sums, dim=-1)


@torch.no_grad()
def evaluate_zeroshot_cls(model: nn.Module, loader: Iterable[Any], classes: torch.Tensor, act2verb: np.ndarray,
                          act2noun: np.ndarray, device: torch.device | str, autocast: Any = None,
                          num_verbs: int | None = None, num_nouns: int | None = None
                          ) -> tuple[dict[str, float], np.ndarray]:
    """Zero-shot EK100 CLS metrics (percent, see :func:`~lavila.evaluation.classification.ek100_cls_metrics`) and
    the (N, C) cosine scores."""
    from lavila.evaluation.classification import ek100_cls_metrics

    def step(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        frames, label = batch[0], batch[1]
        return (model.encode_video(frames.to(device, non_blocking=True)).float(),
                torch.as_tensor(label).to(device).long())

    empty = (torch.zeros(0, classes.shape[1], device=device), torch.zeros(0, dtype=torch.long, device=device))
    video, targets = collect(loader, step, len(loader.dataset), empty, autocast)  # type: ignore[attr-defined]
    scores = video @ classes.to(video.device).float().t()  # collect gathers on the CPU, wherever the model ran
    probs = torch.softmax(scores * _logit_scale(model), dim=1)
    metrics = ek100_cls_metrics(probs.double().numpy(), targets.numpy(), act2verb, act2noun, num_verbs, num_nouns)
    # Action top-k / mean accuracy from the raw cosines (LaViLa's zero-shot protocol) equal those of the softmax.
    return metrics, scores.numpy()


@torch.no_grad()
def evaluate_egoschema(model: nn.Module, loader: Iterable[Any], q_uids: Sequence[str], device: torch.device | str,
                       autocast: Any = None) -> dict[str, int]:
    """``{q_uid: predicted option}`` (argmax cosine between the video and the five option prompts)."""
    preds, indices = [], []
    for frames, option_tokens, index in loader:
        b, k, length = option_tokens.shape
        with autocast if autocast is not None else nullcontext():
            v = model.encode_video(frames.to(device, non_blocking=True)).float()
            t = model.encode_text(option_tokens.reshape(b * k, length).to(device)).float().reshape(b, k, -1)
        preds.append(torch.einsum("bd,bkd->bk", v, t).argmax(1))
        indices.append(torch.as_tensor(index).to(device).long())
    local = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=device)
    local_idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    answers = gather_in_order(local, local_idx.cpu(), len(q_uids))
    return {str(q): int(a) for q, a in zip(q_uids, answers.tolist())}


def _embed_dim(model: nn.Module) -> int:
    config = getattr(model, "config", None) or {}
    return int(config.get("project_embed_dim", 256))


def _logit_scale(model: nn.Module) -> float:
    scale = getattr(model, "logit_scale", None)
    return float(scale.exp()) if isinstance(scale, torch.Tensor) else 1.0 / 0.07



def egoschema_task(model: nn.Module, loader: Iterable[Any], device: torch.device | str, output_dir: str,
                   answers: dict[str, int] | None = None, name: str = "egoschema_predictions",
                   autocast: Any = None) -> dict[str, float]:
    """EgoSchema end to end: predictions (rank 0 writes ``<name>.json`` in the submission format, and ``.csv``),
    ``questions`` answered and, with ``answers``, ``accuracy`` (fraction) over the ``scored`` questions."""
    from lavila.evaluation import egoschema

    predictions = evaluate_egoschema(model, loader, loader.dataset.q_uids, device, autocast)  # type: ignore
    if du.is_main_process():
        json_path, _ = egoschema.write_predictions(predictions, output_dir, name)
        du.print_main(f"EgoSchema predictions (submission format): {json_path}")
    out: dict[str, float] = {"questions": len(predictions)}
    if answers is not None:
        scored = egoschema.score(predictions, answers)
        out.update({"accuracy": scored["accuracy"], "scored": scored["total"]})
    return out
