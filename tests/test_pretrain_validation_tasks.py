"""Pretraining validates on every registered evaluation task (issue 18): ``main_pretrain.py --dataset-val <task>
--root-val ... --val-metadata ...`` evaluates each epoch, logs the task's metrics as ``test_*`` and keeps
``checkpoint_best.pt`` by that task's tracked metric; ``--evaluate --resume checkpoint_best.pt`` gives the stored
numbers back. EK100 MIR (the default task) is covered by tests/test_engines_pretrain.py; here: EK100 CLS, EGTEA,
Charades-Ego, EgoMCQ and EgoSchema on small generated data with a tiny model (CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from engine_helpers import TINY_MODEL, benchmark_data

from lavila.train.loop import parse_engine_args, run
from lavila.train.pretrain import PretrainEngine
from lavila.utils.checkpoint import load_checkpoint
from lavila.utils.logging import read_metrics

# task -> (tracked metric, unit): what checkpoint_best.pt must be chosen by
TRACKED = {"ek100_cls": ("acc1", "percent"), "egtea": ("mean_acc", "fraction"), "charades_ego": ("map", "fraction"),
           "ego4d_mcq": ("intra_video", "fraction"), "egoschema": ("accuracy", "fraction")}
# a lr that moves the tiny model between epochs, so that the epochs' metrics differ
TRAIN = ("--batch-size", "4", "--fix-lr", "--lr", "5e-3", "--eval-freq", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return benchmark_data(tmp_path_factory, "pretrain_val_data", egoschema_questions=2, charades_test_videos=3,
                          charades_train_videos=0)


def _val(data, task: str, answers: bool = True) -> list[str]:
    """``--root-val`` / ``--val-metadata`` of ``task`` on the generated data, with its own option flags."""
    out, m = data
    ek, egtea, charades, mcq, ego = m["ek100"], m["egtea"], m["charades_ego"], m["egomcq"], m["egoschema"]
    flags = {"ek100_cls": (ek["root"], ek["cls_val"], "--cls-vocab-csvs", out / ek["cls_train"], out / ek["cls_val"]),
             # LaViLa's 10 clips x 3 crops would be 30 views per clip: two clips x three crops keep multi-view pooling
             "egtea": (egtea["root"], egtea["test"], "--egtea-num-clips", "2", "--egtea-num-crops", "3"),
             "charades_ego": (charades["root"], charades["test"]),
             "ego4d_mcq": (mcq["root"], mcq["metadata"]),
             "egoschema": (ego["root"], ego["questions"], *(("--egoschema-answers", out / ego["answers"])
                                                            if answers else ()))}[task]
    root, metadata, *options = flags
    return ["--dataset-val", task, "--root-val", str(out / root), "--val-metadata", str(out / metadata),
            *map(str, options)]


def _pretrain_argv(data, out: Path, *extra: str) -> list[str]:
    root, m = data
    return ["--root", str(root / m["ego4d"]["root"]), "--train-metadata", str(root / m["ego4d"]["metadata"]),
            "--output-dir", str(out), *TINY_MODEL, *TRAIN, *extra]


_RUNS: dict[str, tuple[PretrainEngine, dict, Path]] = {}


def _trained(data, tmp_path_factory, task: str) -> tuple[PretrainEngine, dict, Path]:
    """Two epochs of pretraining validated on ``task`` after each (run once per task and module)."""
    if task not in _RUNS:
        out = tmp_path_factory.mktemp(f"pretrain_{task}")
        engine = PretrainEngine()
        summary = run(engine, _pretrain_argv(data, out, "--epochs", "2", *_val(data, task)))
        _RUNS[task] = engine, summary, out
    return _RUNS[task]


@pytest.mark.parametrize("task", list(TRACKED))
def test_pretrain_validates_on_task_and_keeps_best_by_its_metric(data, tmp_path_factory, task):
    metric, unit = TRACKED[task]
    engine, summary, out = _trained(data, tmp_path_factory, task)
    assert summary["status"] == "finished"
    assert (engine.metric, engine.metric_unit) == (metric, unit)
    epochs = read_metrics(out, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(f"test_{metric}" in r for r in epochs), epochs  # validated every epoch, the task's metrics logged
    values = [r[f"test_{metric}"] for r in epochs]
    best = load_checkpoint(out / "checkpoint_best.pt")
    assert best["metric"] == metric
    assert best["best_acc1"] == summary["best"] == max(values)
    assert best["epoch"] == values.index(max(values)) + 1  # the first epoch reaching the best value
    assert yaml.safe_load((out / "config.yaml").read_text())["dataset_val"] == task
    if unit == "fraction":
        assert all(0.0 <= v <= 1.0 for v in values), values


# Scripted metrics: the tracked metric peaks at the second of three epochs while every other metric of the task (EGTEA
# logs ``acc1``, EK100 CLS's tracked name; EgoMCQ logs ``accuracy``, EgoSchema's) is highest at the first and third.
SCRIPT, OTHERS = (0.2, 0.6, 0.4), (0.9, 0.1, 0.95)


class _ScriptedMetrics(PretrainEngine):
    """The task's real evaluation runs every epoch; its values are replaced by the script above."""

    def __init__(self, tracked: str) -> None:
        super().__init__()
        self.tracked, self.calls = tracked, 0

    def evaluate(self, model, loader, args, device):
        real = super().evaluate(model, loader, args, device)
        assert self.tracked in real, real
        i, self.calls = self.calls, self.calls + 1
        return {k: SCRIPT[i] if k == self.tracked else OTHERS[i] for k in real}


@pytest.mark.parametrize("task", ["egtea", "ego4d_mcq"])
def test_best_checkpoint_follows_the_tasks_metric_not_another(data, tmp_path, task):
    metric = TRACKED[task][0]
    engine = _ScriptedMetrics(metric)
    summary = run(engine, _pretrain_argv(data, tmp_path, "--epochs", "3", *_val(data, task)))
    assert summary["status"] == "finished" and engine.calls == 3
    assert [r[f"test_{metric}"] for r in read_metrics(tmp_path, "epoch")] == list(SCRIPT)
    best = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert (best["epoch"], best["best_acc1"], best["metric"]) == (2, 0.6, metric)
    assert summary["best"] == 0.6
    last = load_checkpoint(tmp_path / "checkpoint.pt")  # the best weights are epoch 2's, not the last ones
    assert last["epoch"] == 3
    assert any(not torch.equal(last["state_dict"][k], v) for k, v in best["state_dict"].items())


@pytest.mark.parametrize("task", list(TRACKED))
def test_evaluate_best_checkpoint_reproduces_the_best_epoch(data, tmp_path_factory, tmp_path, task):
    """``--evaluate --resume checkpoint_best.pt --dataset-val <task>``: every metric of the best epoch, to 1e-6."""
    metric = TRACKED[task][0]
    _, _, out = _trained(data, tmp_path_factory, task)
    best = load_checkpoint(out / "checkpoint_best.pt")
    record = read_metrics(out, "epoch")[best["epoch"] - 1]
    evaluated = run(PretrainEngine(), ["--evaluate", "--resume", str(out / "checkpoint_best.pt"), "--output-dir",
                                       str(tmp_path), "--input-size", "32", "--clip-length", "2", "--workers", "0",
                                       "--device", "cpu", "--batch-size", "3", *_val(data, task)])
    assert evaluated["status"] == "evaluated"
    assert evaluated["metrics"][metric] == pytest.approx(best["best_acc1"], abs=1e-6)
    stored = {k[len("test_"):]: v for k, v in record.items() if k.startswith("test_")}
    assert evaluated["metrics"] == pytest.approx(stored, abs=1e-6)


def test_egoschema_without_answers_validates_but_keeps_no_best(data, tmp_path):
    """Without ``--egoschema-answers`` there is nothing to score: predictions each epoch, no checkpoint_best.pt."""
    summary = run(PretrainEngine(), _pretrain_argv(data, tmp_path, "--epochs", "1", *_val(data, "egoschema",
                                                                                            answers=False)))
    assert summary["status"] == "finished" and summary["best"] is None
    (record,) = read_metrics(tmp_path, "epoch")
    assert record["test_questions"] == 2 and "test_accuracy" not in record
    assert not (tmp_path / "checkpoint_best.pt").exists()
    predictions = json.loads((tmp_path / "egoschema_predictions_f2.json").read_text())
    assert len(predictions) == 2


@pytest.mark.parametrize("flags, task", [(["--dataset-val", "cls"], "ek100_cls"),
                                         (["--dataset-val", "egomcq"], "ego4d_mcq"),
                                         (["--evaluate-task", "egomcq"], "ego4d_mcq"),
                                         (["--dataset-val", "mir"], "ek100_mir")])
def test_task_aliases_resolve_to_the_canonical_task(tmp_path, flags, task):
    engine = PretrainEngine()
    args = parse_engine_args(engine, ["--output-dir", str(tmp_path), *TINY_MODEL, *flags])
    engine.prepare_args(args, None)
    assert args.dataset_val == task and engine.task.name == task
    metric = TRACKED.get(task, ("avg_map", "fraction"))
    assert (engine.metric, engine.metric_unit) == metric


@pytest.mark.gpu
@pytest.mark.parametrize("task", list(TRACKED))
def test_pretrain_validates_on_task_on_cuda(data, tmp_path, task):
    """The evaluation functions gather on the CPU; class embeddings must meet them there (EK100 CLS moved them to
    the GPU: a device mismatch on CUDA only)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    engine = PretrainEngine()
    summary = run(engine, _pretrain_argv(data, tmp_path, "--epochs", "1", "--device", "cuda", *_val(data, task)))
    assert summary["status"] == "finished" and TRACKED[task][0] in summary["metrics"]
    assert (tmp_path / "checkpoint_best.pt").is_file()
