"""Logging: JSONL metrics, TensorBoard when available, progress lines when not on a terminal."""
from __future__ import annotations

import importlib
import io
import math

import torch

from lavila.utils.logging import MetricLogger, get_logger, progress, read_metrics


def test_metric_logger_writes_jsonl(tmp_path):
    log = MetricLogger(tmp_path, tensorboard=True)
    log.log_step(1, {"loss": torch.tensor(2.5), "lr": 1e-3}, epoch=0)
    log.log_step(2, {"loss": 2.0, "lr": 1e-3}, epoch=0)
    log.log_epoch(0, {"train_loss": 2.25, "test_avg_map": float("nan")})
    log.close()
    steps = read_metrics(tmp_path, "step")
    assert [r["step"] for r in steps] == [1, 2] and steps[0]["loss"] == 2.5
    (epoch,) = read_metrics(tmp_path / "metrics.jsonl", "epoch")
    assert epoch["train_loss"] == 2.25 and epoch["test_avg_map"] == "nan"
    try:
        importlib.import_module("torch.utils.tensorboard")
    except Exception:
        return
    assert any((tmp_path / "tensorboard").iterdir())


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricLogger(tmp_path / "x", enabled=False)
    log.log_step(1, {"loss": 1.0})
    assert not (tmp_path / "x").exists()


def test_progress_degrades_to_periodic_lines_without_tty():
    out = io.StringIO()  # not a TTY
    bar = progress(range(25), desc="epoch 0", every=10, seconds=math.inf, file=out)
    bar.set_postfix_str("loss 1.0")
    assert list(bar) == list(range(25))
    lines = out.getvalue().strip().splitlines()
    assert [line.split()[2] for line in lines] == ["10/25", "20/25", "25/25"]
    assert all("loss 1.0" in line for line in lines)


def test_progress_silent_when_disabled():
    out = io.StringIO()
    assert list(progress(range(3), file=out, enabled=False)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_get_logger_prints_on_rank0(capsys):
    get_logger("lavila.test").info("hello")
    assert "hello" in capsys.readouterr().out
