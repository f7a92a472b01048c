"""Report pieces of ``make demo``: training-curve plots, the retrieval example figure, the summary files.

Everything here reads what the real entry scripts wrote (``metrics.jsonl`` of ``main_pretrain.py``,
``zeroshot_metrics.json`` and ``mir_similarity.npy`` of ``eval_zeroshot.py``), so it works on the output of any run,
not only the demo's.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_curves", "plot_training_curves", "pick_query", "pick_search_query", "plot_retrieval_example",
           "mir_chance", "acceptance_target", "build_summary", "write_json"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def read_curves(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """Per-step ``step, loss, lr, logit_scale`` and per-epoch ``epoch, test_avg_map, test_avg_ndcg, train_loss``
    from a training run's ``metrics.jsonl``."""
    from lavila.utils.logging import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} the --output-dir of a training run?")
    records = read_metrics(path)
    steps = [r for r in records if r.get("type") == "step"]
    evals = [r for r in records if r.get("type") == "epoch" and "test_avg_map" in r]
    train = [r for r in records if r.get("type") == "train"]
    return {
        "step": [float(r["step"]) for r in steps],
        "step_epoch": [float(r["epoch"]) + 0.0 for r in steps],
        "loss": [float(r["loss"]) for r in steps],
        "lr": [float(r["lr"]) for r in steps],
        "logit_scale": [float(r.get("logit_scale", float("nan"))) for r in steps],
        "epoch": [float(r["epoch"]) + 1 for r in evals],  # evaluated after epoch e -> "e + 1 epochs done"
        "test_avg_map": [float(r["test_avg_map"]) for r in evals],
        "test_avg_ndcg": [float(r.get("test_avg_ndcg", float("nan"))) for r in evals],
        "train_epoch": [float(r["epoch"]) + 1 for r in train],
        "train_loss": [float(r["train_loss"]) for r in train if "train_loss" in r],
    }


def plot_training_curves(curves: Mapping[str, Mapping[str, list[float]]], out_dir: str | os.PathLike,
                         init_map: Mapping[str, float] | None = None, chance_map: float | None = None
                         ) -> dict[str, Path]:
    """``loss.png``, ``lr.png``, ``retrieval_map.png`` for one or more runs (``{label: read_curves(...)}``)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, c in curves.items():
        line, = ax.plot(c["step"], c["loss"], alpha=0.35, lw=1)
        if c["train_loss"]:
            steps_per_epoch = len(c["step"]) / max(len(c["train_loss"]), 1)
            ax.plot(np.asarray(c["train_epoch"]) * steps_per_epoch, c["train_loss"], "o-", color=line.get_color(),
                    label=f"{label} (epoch mean)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("contrastive (InfoNCE) loss")
    ax.set_title("Pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    paths["loss"] = _save(fig, out / "loss.png", plt)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, c in curves.items():
        ax.plot(c["step"], c["lr"], label=label)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedule (warmup + cosine)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    ax.legend()
    paths["lr"] = _save(fig, out / "lr.png", plt)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, c in curves.items():
        xs, ys = list(c["epoch"]), list(c["test_avg_map"])
        if init_map and label in init_map:
            xs, ys = [0.0, *xs], [init_map[label], *ys]
        ax.plot(xs, ys, "o-", label=f"{label} avg mAP")
    if chance_map is not None:
        ax.axhline(chance_map, color="grey", ls="--", label=f"random ranking ({chance_map:.3f})")
    ax.set_xlabel("epochs of pretraining (0 = initialisation)")
    ax.set_ylabel("zero-shot EK100-style MIR average mAP")
    ax.set_ylim(0, 1)
    ax.set_title("Zero-shot retrieval on the held-out MIR set")
    ax.grid(alpha=0.3)
    ax.legend()
    paths["retrieval_map"] = _save(fig, out / "retrieval_map.png", plt)
    return paths


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_query(relevancy: np.ndarray) -> int:
    """The sentence with the most fully relevant clips (ties: the first), a query whose top 5 can all be right."""
    counts = (np.asarray(relevancy) >= 1.0).sum(axis=0)
    return int(np.argmax(counts))


def pick_search_query(similarity: np.ndarray, relevancy: np.ndarray, own_rows: Sequence[int]) -> int:
    """The narration (column) whose own clip (``own_rows[column]``) the evaluated model ranks highest among all
    clips; ties: the most fully relevant clips, then the first. The demo's search shows a query the model retrieves
    well at clip level, found again in windows cut without knowing the clips."""
    similarity, relevancy = np.asarray(similarity), np.asarray(relevancy)
    ranks = [int((similarity[:, q] > similarity[own, q]).sum()) for q, own in enumerate(own_rows)]
    counts = (relevancy >= 1.0).sum(axis=0)
    return min(range(len(ranks)), key=lambda q: (ranks[q], -int(counts[q]), q))


def plot_retrieval_example(similarity: np.ndarray, relevancy: np.ndarray, sentences: Sequence[str],
                           clip_captions: Sequence[str], load_frames: Callable[[int], np.ndarray],
                           out_path: str | os.PathLike, query: int | None = None, top_k: int = 5) -> dict[str, Any]:
    """Text-to-video retrieval figure: the query caption, then its ``top_k`` clips (rows, best first) as frame strips.

    ``similarity`` / ``relevancy`` are (clips x sentences); ``load_frames(clip_row)`` returns uint8 frames
    (T, H, W, 3) of that clip. Returns the query and the ranked clips with their scores and relevancies.
    """
    plt = _pyplot()
    similarity, relevancy = np.asarray(similarity), np.asarray(relevancy)
    if similarity.shape != relevancy.shape:
        raise ValueError(f"similarity {similarity.shape} and relevancy {relevancy.shape} differ in shape")
    query = pick_query(relevancy) if query is None else int(query)
    order = np.argsort(-similarity[:, query], kind="stable")[:top_k]
    strips = [np.asarray(load_frames(int(row))) for row in order]
    frames_per_clip = max(s.shape[0] for s in strips)
    fig, axes = plt.subplots(len(order), frames_per_clip, figsize=(1.5 * frames_per_clip + 0.4, 1.75 * len(order)),
                             squeeze=False)
    ranked = []
    for rank, (row, strip) in enumerate(zip(order, strips)):
        rel = float(relevancy[row, query])
        ok = rel >= 1.0
        ranked.append({"rank": rank + 1, "clip_row": int(row), "caption": str(clip_captions[row]),
                       "similarity": float(similarity[row, query]), "relevancy": rel})
        for t in range(frames_per_clip):
            ax = axes[rank, t]
            ax.set_xticks([])
            ax.set_yticks([])
            if t < strip.shape[0]:
                ax.imshow(strip[t])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if ok else ("tab:orange" if rel > 0 else "tab:red"))
                spine.set_linewidth(3)
            if t == 0:
                ax.set_ylabel(f"#{rank + 1}", rotation=0, labelpad=14, fontsize=10)
        axes[rank, 0].set_title(f"\"{clip_captions[row]}\"  sim {similarity[row, query]:.2f}  relevancy {rel:.2f}",
                                loc="left", fontsize=8)
    fig.suptitle(f"query: \"{sentences[query]}\" - top {len(order)} clips (green: relevant, orange: partly, "
                 "red: not)", fontsize=9)
    fig.supxlabel("frames sampled from the clip (time →)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return {"query": str(sentences[query]), "query_index": query, "top": ranked}


def mir_chance(relevancy: np.ndarray, trials: int = 10, seed: int = 0) -> dict[str, float]:
    """Expected MIR metrics of a random ranking: the mean over ``trials`` uniform random similarity matrices scored
    on the same relevancy."""
    from lavila.evaluation.retrieval import mir_metrics

    rng = np.random.default_rng(seed)
    runs = [mir_metrics(rng.random(relevancy.shape), relevancy) for _ in range(trials)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def acceptance_target(init_map: float) -> float:
    """The demo's bar for the final mAP: at least 0.5, and at least min(3 x init, halfway from init to 1)."""
    return max(0.5, min(3.0 * init_map, (init_map + 1.0) / 2.0))


def build_summary(init: Mapping[str, Any], final: Mapping[str, Any], chance: Mapping[str, float],
                  num_actions: int, wall_seconds: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json``: the headline numbers as fractions in [0, 1] (CLS numbers converted from percent)."""
    init_mir, final_mir = init.get("ek100_mir", {}), final.get("ek100_mir", {})
    init_cls, final_cls = init.get("ek100_cls", {}), final.get("ek100_cls", {})
    summary: dict[str, Any] = {
        "mir_avg_map_init": float(init_mir["avg_map"]),
        "mir_avg_map_final": float(final_mir["avg_map"]),
        "mir_avg_map_chance": float(chance["avg_map"]),
        "mir_avg_map_target": acceptance_target(float(init_mir["avg_map"])),
        "mir_avg_ndcg_init": float(init_mir["avg_ndcg"]),
        "mir_avg_ndcg_final": float(final_mir["avg_ndcg"]),
        "mir_avg_ndcg_chance": float(chance["avg_ndcg"]),
        "egoschema_acc_init": float(init.get("egoschema", {}).get("accuracy", float("nan"))),
        "egoschema_acc": float(final.get("egoschema", {}).get("accuracy", float("nan"))),
        "egoschema_acc_chance": 0.2,
        "cls_action_top1_init": float(init_cls.get("acc1", float("nan"))) / 100.0,
        "cls_action_top1": float(final_cls.get("acc1", float("nan"))) / 100.0,
        "cls_verb_top1": float(final_cls.get("verb_acc1", float("nan"))) / 100.0,
        "cls_noun_top1": float(final_cls.get("noun_acc1", float("nan"))) / 100.0,
        "cls_action_top1_chance": 1.0 / max(num_actions, 1),
        "wall_seconds": float(wall_seconds),
    }
    summary["mir_target_met"] = summary["mir_avg_map_final"] >= summary["mir_avg_map_target"]
    summary["egoschema_above_chance"] = summary["egoschema_acc"] > 0.2
    summary.update(extra or {})
    return summary


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    tmp.replace(path)
    return path
