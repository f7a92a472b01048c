"""Preemption and crashes: kill -9 at a random step (also in the middle of a checkpoint save), SIGTERM / SIGUSR1.

Every interrupted run is relaunched with the same command; it auto-resumes from ``<output-dir>/checkpoint.pt`` and
its final weights must be bit-identical to an uninterrupted run (CPU, ``--workers 0``, same seed).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from engine_helpers import pretrain_args, state_dicts_equal, synthetic_root

from lavila.train.loop import CHECKPOINT, run
from lavila.train.pretrain import PretrainEngine
from lavila.utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
# 19 clips // batch 4 = 4 optimiser steps per epoch, 3 epochs = 12 steps; warmup then cosine over the run.
RUN_ARGS = ("--batch-size", "4", "--epochs", "3", "--lr", "1e-3", "--warmup-epochs", "1", "--print-freq", "100")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Final checkpoint of an uninterrupted run (in-process)."""
    out = tmp_path_factory.mktemp("reference")
    assert run(PretrainEngine(), pretrain_args(data, out, *RUN_ARGS))["status"] == "finished"
    return load_checkpoint(out / CHECKPOINT)


def _steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.startswith('{"type": "step"'))


def _launch(data: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "main_pretrain.py"), *pretrain_args(data, out, *RUN_ARGS, *extra)]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 120.0) -> bool:
    """Poll until ``condition()`` holds (True) or the process ended / the time ran out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _finish(proc: subprocess.Popen, timeout: float = 180.0) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.startswith('{"type": "step"')]


def _assert_resumes_identically(data: Path, out: Path, reference: dict, in_process: bool = True) -> dict:
    """Relaunch; it must continue from the saved global step (a restart would also end bit-identical on CPU): it logs
    exactly the steps after the saved one, and ends with the uninterrupted run's weights."""
    saved = load_checkpoint(out / CHECKPOINT)["global_step"] if (out / CHECKPOINT).is_file() else 0
    # The relaunch trims metrics.jsonl to the saved step, so set the interrupted run's records aside: the file then
    # holds only what the relaunch logged (a restart would log steps 1.. again).
    if (out / "metrics.jsonl").is_file():
        os.replace(out / "metrics.jsonl", out / "metrics.interrupted.jsonl")
    if in_process:
        assert run(PretrainEngine(), pretrain_args(data, out, *RUN_ARGS))["status"] == "finished"
    else:
        rc, log = _finish(_launch(data, out))
        assert rc == 0, log[-3000:]
        assert (f"auto-resuming from {out / CHECKPOINT}" in log) == (saved > 0)
    assert _logged_steps(out) == list(range(saved + 1, 13)), "the relaunch did not start at the saved step"
    final = load_checkpoint(out / CHECKPOINT)
    assert final["global_step"] == reference["global_step"] == 12
    assert state_dicts_equal(final["state_dict"], reference["state_dict"])
    return final


def _kill9_at_random_step(data: Path, out: Path, seed: int, *extra: str) -> int:
    step = random.Random(seed).randint(1, 11)
    proc = _launch(data, out, *extra)
    reached = _wait_for(proc, lambda: _steps_logged(out) >= step)
    proc.kill()  # SIGKILL: no handler runs
    _finish(proc)
    assert reached, f"the run ended before step {step}"
    assert proc.returncode == -signal.SIGKILL
    return step


@pytest.mark.slow
def test_kill9_at_random_step_resumes_bit_identical(data, tmp_path, reference):
    _kill9_at_random_step(data, tmp_path, seed=1)
    if (tmp_path / CHECKPOINT).is_file():  # whatever survived the kill is a complete checkpoint
        assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] >= 1
    _assert_resumes_identically(data, tmp_path, reference)


@pytest.mark.slow
def test_kill9_loses_at_most_the_work_since_the_last_save(data, tmp_path, reference):
    """--save-freq 1: killed in epoch 2, the surviving checkpoint is the end of epoch 1 (steps 5-8 done, at most one
    epoch lost), and the relaunch redoes exactly the steps after it."""
    proc = _launch(data, tmp_path)
    reached = _wait_for(proc, lambda: _steps_logged(tmp_path) >= 9)
    proc.kill()
    _finish(proc)
    assert reached
    done = _steps_logged(tmp_path)
    survived = load_checkpoint(tmp_path / CHECKPOINT)
    assert survived["epoch"] == 2 and survived["global_step"] == 8 and survived["step_in_epoch"] == 0
    assert done - survived["global_step"] <= 4  # lost: only the steps of the epoch in progress
    _assert_resumes_identically(data, tmp_path, reference, in_process=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_kill9_random_step_several_seeds_relaunched_command(data, tmp_path, reference, seed):
    _kill9_at_random_step(data, tmp_path, seed)
    _assert_resumes_identically(data, tmp_path, reference, in_process=False)


@pytest.mark.slow
def test_kill9_with_fused_decode_crop_resumes_bit_identical(data, tmp_path_factory):
    """The fused decode+resize path is deterministic too (it used to decode each video's first clip differently)."""
    full = tmp_path_factory.mktemp("fused_full")
    assert run(PretrainEngine(), pretrain_args(data, full, *RUN_ARGS, "--fused-decode-crop"))["status"] == "finished"
    out = tmp_path_factory.mktemp("fused_killed")
    _kill9_at_random_step(data, out, 5, "--fused-decode-crop")
    assert run(PretrainEngine(), pretrain_args(data, out, *RUN_ARGS, "--fused-decode-crop"))["status"] == "finished"
    assert state_dicts_equal(load_checkpoint(out / CHECKPOINT)["state_dict"],
                             load_checkpoint(full / CHECKPOINT)["state_dict"])


@pytest.mark.slow
def test_kill9_during_checkpoint_save_keeps_last_good_checkpoint(data, tmp_path, reference):
    """LAVILA_FAULT_SAVE_SLEEP pauses each save between writing the temporary file and renaming it; the process is
    killed inside the second save (end of epoch 1): checkpoint.pt must still be the complete epoch-0 one."""
    out = tmp_path
    proc = _launch(data, out, env={"LAVILA_FAULT_SAVE_SLEEP": "1.5"})

    def in_second_save() -> bool:
        return (out / CHECKPOINT).is_file() and any(out.glob(f".{CHECKPOINT}.*.tmp"))

    reached = _wait_for(proc, in_second_save)
    proc.kill()
    _finish(proc)
    assert reached, "never observed a save in progress"
    survived = load_checkpoint(out / CHECKPOINT)
    assert survived["epoch"] == 1 and survived["global_step"] == 4
    assert any(out.glob(f".{CHECKPOINT}.*.tmp"))  # the torn temporary file...
    _assert_resumes_identically(data, out, reference, in_process=False)
    assert not any(out.glob(f".{CHECKPOINT}.*.tmp"))  # ...is removed by the next save


def _signal_run(data: Path, out: Path, sig: int, at_step: int) -> subprocess.Popen:
    proc = _launch(data, out)
    assert _wait_for(proc, lambda: _steps_logged(out) >= at_step), "the run ended before the signal"
    proc.send_signal(sig)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_signal_saves_exits_zero_and_resumes_bit_identical(data, tmp_path, reference, sig):
    proc = _signal_run(data, tmp_path, sig, at_step=6)  # mid epoch 1
    rc, log = _finish(proc)
    assert rc == 0, log[-3000:]
    assert "re-run the same command to resume" in log
    saved = load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["global_step"] >= 6 and saved["epoch"] == 1 and saved["step_in_epoch"] == saved["global_step"] - 4
    _assert_resumes_identically(data, tmp_path, reference)


def test_in_process_sigterm_mid_epoch_resumes(data, tmp_path, reference):
    """The signal handler itself (no subprocess): SIGTERM delivered to this process after step 3."""
    out = tmp_path
    fired = threading.Event()

    def send_when_ready() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _steps_logged(out) < 3:
            time.sleep(0.005)
        fired.set()
        os.kill(os.getpid(), signal.SIGTERM)

    def ignore(signum, frame) -> None:  # a late signal must never kill pytest
        pass

    original = signal.signal(signal.SIGTERM, ignore)
    thread = threading.Thread(target=send_when_ready, daemon=True)
    thread.start()
    try:
        summary = run(PretrainEngine(), pretrain_args(data, out, *RUN_ARGS))
        restored = signal.getsignal(signal.SIGTERM)
    finally:
        thread.join(5)
        signal.signal(signal.SIGTERM, original)
    assert restored is ignore  # the run's handler was uninstalled
    assert fired.is_set() and summary["status"] == "preempted"
    saved = load_checkpoint(out / CHECKPOINT)
    assert saved["global_step"] >= 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["type"] == "step"
    _assert_resumes_identically(data, out, reference)
