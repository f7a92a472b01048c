"""Resume is a resume, not a restart (fast, in-process, with a toy engine).

A deterministic restart on CPU ends with the same weights as a resume, so weights alone prove nothing: these tests
count the optimiser steps the relaunch runs and logs, and check that it never re-trains a completed epoch. Also:
skip counts (metrics.jsonl, checkpoint, console; per epoch and across a resume), the --save-freq cadence, and the last
good checkpoint kept after a non-finite loss.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from lavila.train.loop import CHECKPOINT, Engine, NonFiniteLossError, run
from lavila.train.preemption import PreemptionFlag
from lavila.train.sampler import ResumableDistributedSampler
from lavila.utils.checkpoint import load_checkpoint

N_POINTS, BATCH, EPOCHS = 16, 4, 3  # 4 optimiser steps per epoch, 12 in all
STEPS_PER_EPOCH = N_POINTS // BATCH


class _Points(Dataset):
    def __init__(self, n: int = N_POINTS, unreadable: tuple[int, ...] = ()) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
        self.unreadable = set(unreadable)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if i in self.unreadable:
            return None  # what a training dataset returns for a sample it cannot read
        return self.x[i] + 0.01 * torch.randn(5), self.y[i]  # "augmentation" from the (per-sample seeded) RNG


class _CountingEngine(Engine):
    """Records the epoch of every micro-batch it trains; ``stop_at`` requests a preemption after that many calls."""

    name = "toy"
    metric = "acc"
    defaults = {"clip_length": 1, "epochs": EPOCHS, "warmup_epochs": 1, "batch_size": BATCH, "lr": 0.05, "wd": 0.01}

    def __init__(self, unreadable: tuple[int, ...] = (), stop_at: int | None = None,
                 flag: PreemptionFlag | None = None, nan_at: int | None = None) -> None:
        self.unreadable, self.stop_at, self.flag, self.nan_at = unreadable, stop_at, flag, nan_at
        self.trained_epochs: list[int] = []

    def build_datasets(self, args):
        return _Points(unreadable=self.unreadable), None

    def build_model(self, args):
        # dropout draws from the global RNG: a relaunch that did not restore it would not end bit-identical
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))

    def build_criterion(self, args):
        return nn.CrossEntropyLoss()

    def train_step(self, model, batch, criterion, args, device):
        self.trained_epochs.append(_CountingEngine.current_epoch)
        loss = criterion(model(batch[0]), batch[1])
        if self.nan_at is not None and len(self.trained_epochs) == self.nan_at:
            loss = loss * float("nan")
        if self.stop_at is not None and len(self.trained_epochs) == self.stop_at:
            self.flag.request()
        return {"loss": loss}

    current_epoch = 0  # set by the sampler patch below


@pytest.fixture(autouse=True)
def _track_epoch(monkeypatch):
    """The engine learns the epoch from the sampler (the loop calls set_epoch before each epoch)."""
    from lavila.train import sampler

    original = sampler.ResumableDistributedSampler.set_epoch

    def set_epoch(self, epoch):
        _CountingEngine.current_epoch = epoch
        return original(self, epoch)

    monkeypatch.setattr(sampler.ResumableDistributedSampler, "set_epoch", set_epoch)


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--output-dir", str(out), "--device", "cpu", "--workers", "0", "--print-freq", "100", *extra]


def _records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_optimizer_state(a: dict, b: dict) -> bool:
    sa, sb = a["state"], b["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    engine = _CountingEngine()
    assert run(engine, _argv(out))["status"] == "finished"
    assert len(engine.trained_epochs) == EPOCHS * STEPS_PER_EPOCH
    return load_checkpoint(out / CHECKPOINT)


@pytest.mark.parametrize("stop_at", [STEPS_PER_EPOCH + 2, STEPS_PER_EPOCH], ids=["mid-epoch", "epoch-boundary"])
def test_relaunch_after_preemption_continues_from_the_saved_step(tmp_path, reference, stop_at):
    flag = PreemptionFlag()
    first = _CountingEngine(stop_at=stop_at, flag=flag)
    assert run(first, _argv(tmp_path), preemption=flag)["status"] == "preempted"
    saved = load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["global_step"] == stop_at
    assert (saved["epoch"], saved["step_in_epoch"]) in ((stop_at // STEPS_PER_EPOCH, stop_at % STEPS_PER_EPOCH),
                                                        (stop_at // STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH))
    logged_before = [r["step"] for r in _records(tmp_path, "step")]
    assert logged_before == list(range(1, stop_at + 1))

    second = _CountingEngine()
    summary = run(second, _argv(tmp_path))
    assert summary["status"] == "finished" and summary["global_step"] == EPOCHS * STEPS_PER_EPOCH
    # the relaunch runs only the remaining optimiser steps, none of a completed epoch ...
    remaining = EPOCHS * STEPS_PER_EPOCH - stop_at
    assert len(second.trained_epochs) == remaining, second.trained_epochs
    expected_epochs = [e for e in range(EPOCHS) for _ in range(STEPS_PER_EPOCH)][stop_at:]
    assert second.trained_epochs == expected_epochs
    # ... logs the steps after the saved one (metrics.jsonl is appended to) ...
    assert [r["step"] for r in _records(tmp_path, "step")] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in _records(tmp_path, "epoch")] == list(range(EPOCHS))
    # ... and ends bit-identical to the uninterrupted run, optimiser state included
    final = load_checkpoint(tmp_path / CHECKPOINT)
    assert _same_weights(final["state_dict"], reference["state_dict"])
    assert _same_optimizer_state(final["optimizer"], reference["optimizer"])


def test_relaunch_after_stop_between_epochs_does_not_retrain(tmp_path, reference):
    first = _CountingEngine()
    assert run(first, _argv(tmp_path), stop_after_epochs=1)["status"] == "stopped"
    assert load_checkpoint(tmp_path / CHECKPOINT)["global_step"] == STEPS_PER_EPOCH
    second = _CountingEngine()
    run(second, _argv(tmp_path))
    assert second.trained_epochs == [e for e in range(1, EPOCHS) for _ in range(STEPS_PER_EPOCH)]
    final = load_checkpoint(tmp_path / CHECKPOINT)
    assert final["global_step"] == reference["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert _same_weights(final["state_dict"], reference["state_dict"])


@pytest.fixture
def lavila_log():
    """Messages of the 'lavila' logger (what the console shows; it does not propagate to caplog)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("lavila")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


UNREADABLE = (3, 9, 12)  # k = 3 unreadable samples, read once per epoch (12: in the first half of epoch 1)


def _console_skips(messages: list[str]) -> dict[int, int]:
    import re

    found = {}
    for m in messages:
        match = re.match(r"epoch (\d+): skipped (\d+) unreadable sample", m)
        if match:
            found[int(match.group(1))] = found.get(int(match.group(1)), 0) + int(match.group(2))
    return found


def test_skip_counts_in_metrics_checkpoint_and_console(tmp_path, lavila_log):
    k = len(UNREADABLE)
    summary = run(_CountingEngine(unreadable=UNREADABLE), _argv(tmp_path))
    assert summary["skipped_samples"] == k * EPOCHS
    assert [r["skipped_samples"] for r in _records(tmp_path, "epoch")] == [k * (e + 1) for e in range(EPOCHS)]
    assert load_checkpoint(tmp_path / CHECKPOINT)["skipped_samples"] == k * EPOCHS
    assert _console_skips(lavila_log) == {e: k for e in range(EPOCHS)}


@pytest.mark.parametrize("stop_at", [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2], ids=["epoch-boundary", "mid-epoch"])
def test_skip_counts_survive_a_resume(tmp_path, lavila_log, stop_at):
    k = len(UNREADABLE)
    flag = PreemptionFlag()
    run(_CountingEngine(unreadable=UNREADABLE, stop_at=stop_at, flag=flag), _argv(tmp_path), preemption=flag)
    # the preemption save counts the skips of the part of the epoch already read (the relaunch never re-reads it)
    order = ResumableDistributedSampler(N_POINTS, shuffle=True, seed=0)
    order.set_epoch(stop_at // STEPS_PER_EPOCH)
    read = stop_at % STEPS_PER_EPOCH * BATCH
    partial = sum(i in UNREADABLE for i in list(order)[:read])
    assert partial > 0 or read == 0, "test design: the stop should come after an unreadable sample"
    expected = k * (stop_at // STEPS_PER_EPOCH) + partial
    assert load_checkpoint(tmp_path / CHECKPOINT)["skipped_samples"] == expected
    summary = run(_CountingEngine(unreadable=UNREADABLE), _argv(tmp_path))
    assert summary["skipped_samples"] == k * EPOCHS
    assert load_checkpoint(tmp_path / CHECKPOINT)["skipped_samples"] == k * EPOCHS
    assert [r["skipped_samples"] for r in _records(tmp_path, "epoch")] == [k * (e + 1) for e in range(EPOCHS)]
    console = _console_skips(lavila_log)
    assert sum(console.values()) == k * EPOCHS and set(console) == set(range(EPOCHS))


def test_save_freq_cadence(tmp_path, monkeypatch):
    """checkpoint.pt is written every --save-freq epochs and at the end, not otherwise."""
    from lavila.train import loop

    saved_at: list[int] = []
    original = loop.save_training_checkpoint

    def spy(engine, args, model, optimizer, scaler, state, best=False):
        saved_at.append(state.epoch)
        return original(engine, args, model, optimizer, scaler, state, best=best)

    monkeypatch.setattr(loop, "save_training_checkpoint", spy)
    run(_CountingEngine(), _argv(tmp_path, "--epochs", "5", "--save-freq", "2"))
    assert saved_at == [2, 4, 5]  # epochs completed at each save: every 2nd epoch, then the last
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 5


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    run(_CountingEngine(), _argv(tmp_path, "--epochs", "1"))
    good = load_checkpoint(tmp_path / CHECKPOINT)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1 .*last good checkpoint is .*checkpoint\.pt"):
        run(_CountingEngine(nan_at=2), _argv(tmp_path, "--epochs", "2", "--resume-anyway"))
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    kept = load_checkpoint(tmp_path / CHECKPOINT)
    assert kept["global_step"] == good["global_step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())
