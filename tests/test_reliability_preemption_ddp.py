"""Preemption with 2 ranks (gloo, CPU): SIGTERM to both processes (what Slurm does to every task) mid-epoch, relaunch,
and the run continues from the saved step with every rank's RNG restored: bit-identical to an uninterrupted 2-rank run.

Drop path is on, so each rank's global RNG stream shapes the weights: a resume that did not restore the per-rank
RNG states (or restarted) would be caught by the step count or by the weights.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import pretrain_args, state_dicts_equal, synthetic_root

from lavila.train.loop import CHECKPOINT
from lavila.utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
# 19 clips padded to 20, 10 per rank, batch 2 per rank: 5 optimiser steps per epoch, 10 in all
RUN_ARGS = ("--batch-size", "2", "--epochs", "2", "--lr", "1e-3", "--warmup-epochs", "1", "--print-freq", "100",
            "--drop-path-rate", "0.2", "--dist-timeout", "60")
TOTAL_STEPS = 10
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(data: Path, out: Path) -> list[subprocess.Popen]:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS")}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        # depth 2: with one block the drop-path schedule gives that block rate 0
        argv = ["depth=2" if a == "depth=1" else a for a in pretrain_args(data, out, *RUN_ARGS)]
        cmd = [sys.executable, str(REPO / "main_pretrain.py"), *argv]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return outputs


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.startswith('{"type": "step"')]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


def test_two_rank_sigterm_resumes_from_the_saved_step_bit_identical(data, tmp_path):
    full = tmp_path / "full"
    _finish(_launch(data, full))
    reference = load_checkpoint(full / CHECKPOINT)
    assert reference["global_step"] == TOTAL_STEPS

    out = tmp_path / "preempted"
    procs = _launch(data, out)
    deadline = time.monotonic() + 240
    while len(_steps(out)) < 3 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    logs = _finish(procs)
    assert "re-run the same command to resume" in logs[0]
    saved = load_checkpoint(out / CHECKPOINT)
    assert 3 <= saved["global_step"] < TOTAL_STEPS and saved["world_size"] == 2
    rng = saved["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # one state per rank

    before = len(_steps(out))
    logs = _finish(_launch(data, out))
    assert f"auto-resuming from {out / CHECKPOINT}" in logs[0]
    assert _steps(out)[before:] == list(range(saved["global_step"] + 1, TOTAL_STEPS + 1))
    final = load_checkpoint(out / CHECKPOINT)
    assert final["global_step"] == TOTAL_STEPS
    assert state_dicts_equal(final["state_dict"], reference["state_dict"])
