"""Plot the training curves of one or more runs: ``python -m lavila.plot RUN_DIR [RUN_DIR ...] [--out DIR]``.

Reads each run's ``metrics.jsonl`` (and ``config.yaml`` for its label) and writes ``loss.png``, ``lr.png`` and
``metric.png`` (the tracked evaluation metric per epoch) with matplotlib's Agg backend (no display needed). The loss
axis names the run's real loss, recognised from what the engine logs: InfoNCE (pretraining), max-margin ranking
(MIR fine-tuning) or soft-target cross-entropy (CLS fine-tuning).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

# step-record key that identifies the engine -> (loss name, tracked metric, its unit); the metric of the run's
# evaluation task (config.yaml: ``dataset`` of a fine-tuning run, ``dataset_val`` of pretraining) wins
ENGINES = (("max_margin_loss", "max-margin ranking loss", "avg_map", "fraction"),
           ("clip_acc", "contrastive (InfoNCE) loss", "avg_map", "fraction"),
           ("acc1", "cross-entropy loss (mixup targets, label smoothing)", "acc1", "percent"))


def tracked_metric(config: dict[str, Any]) -> tuple[str, str] | None:
    """(metric, unit) of the registered evaluation task a run's ``config.yaml`` names, if any."""
    from lavila.evaluation.tasks import TaskConfigError, get_task

    for key in ("dataset", "dataset_val"):
        try:
            task = get_task(str(config.get(key)))
        except TaskConfigError:
            continue
        return task.metric, task.unit
    return None


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Steps (step, loss, lr), evaluations (epoch, metric) and the names of one run's curves."""
    from lavila.utils.logging import read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise SystemExit(f"error: {run_dir / 'metrics.jsonl'} not found: give the --output-dir of a training run")
    records = read_metrics(run_dir)
    steps = [r for r in records if r.get("type") == "step"]
    loss_name, metric, unit = "loss", "avg_map", "fraction"
    for key, name, tracked, tracked_unit in ENGINES:
        if steps and key in steps[0]:
            loss_name, metric, unit = name, tracked, tracked_unit
            break
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    metric, unit = tracked_metric(config or {}) or (metric, unit)
    evals = [r for r in records if r.get("type") in ("epoch", "eval") and f"test_{metric}" in r]
    label = f"{run_dir.name} ({config.get('model', '?')})" if config else run_dir.name
    return {"label": label, "loss_name": loss_name, "metric": metric, "unit": unit,
            "step": [r["step"] for r in steps], "loss": [r["loss"] for r in steps],
            "lr": [r.get("lr") for r in steps], "epoch": [r["epoch"] + 1 for r in evals],
            "value": [r[f"test_{metric}"] for r in evals]}


def plot_runs(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``loss.png``, ``lr.png``, ``metric.png`` for the runs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loss_names = sorted({r["loss_name"] for r in runs})
    metrics = sorted({(r["metric"], r["unit"]) for r in runs})
    panels = {"loss": ("optimiser step", " / ".join(loss_names), "step", "loss"),
              "lr": ("optimiser step", "learning rate", "step", "lr"),
              "metric": ("epochs done", " / ".join(f"test {m} ({u})" for m, u in metrics), "epoch", "value")}
    paths = {}
    for name, (xlabel, ylabel, x, y) in panels.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for run in runs:
            ax.plot(run[x], run[y], "o-" if name == "metric" else "-", label=run["label"], lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths[name] = out / f"{name}.png"
        tmp = paths[name].with_name(f".{name}.tmp.png")
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, paths[name])
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lavila.plot", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of training runs (with metrics.jsonl)")
    parser.add_argument("--out", default=None, help="folder for the PNG files (default: <first run>/plots)")
    args = parser.parse_args(argv)
    paths = plot_runs(args.runs, args.out or Path(args.runs[0]) / "plots")
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
