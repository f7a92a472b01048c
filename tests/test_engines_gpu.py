"""The training engine on CUDA (marked ``gpu``; skipped without a CUDA device): bf16 autocast, fp16 + GradScaler,
gradient checkpointing through a Mamba tower, and a torchrun launch onto the GPU.

A multi-rank NCCL group needs one GPU per rank (NCCL refuses two ranks on one device), so on a one-GPU machine the
torchrun case runs one process; the multi-process path is covered on CPU with gloo (tests/test_distributed.py)."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import pretrain_args, synthetic_root

from lavila.train.loop import CHECKPOINT, run
from lavila.train.pretrain import PretrainEngine
from lavila.utils.logging import read_metrics

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return synthetic_root(tmp_path_factory)


def _train(data, out, *extra: str) -> list[float]:
    argv = pretrain_args(data, out, "--batch-size", "4", "--epochs", "3", "--fix-lr", "--lr", "2e-3",
                         "--device", "cuda", *extra)
    summary = run(PretrainEngine(), argv)
    assert summary["status"] == "finished"
    assert (out / CHECKPOINT).is_file()
    return [r["loss"] for r in read_metrics(out, "step")]


@pytest.mark.parametrize("amp", [["--use-bf16"], [], ["--disable-amp"]], ids=["bf16", "fp16-scaler", "fp32"])
def test_pretrain_on_cuda_learns(data, tmp_path, amp):
    losses = _train(data, tmp_path / "run", *amp)
    assert all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses


def test_timemamba_grad_checkpointing_bf16_on_cuda(data, tmp_path):
    losses = _train(data, tmp_path / "run", "--use-bf16", "--grad-checkpointing", "--model",
                    "CLIP_TimeMamba_like_timesformer")
    assert all(math.isfinite(x) for x in losses), losses


def test_torchrun_single_gpu(data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(port),
           str(REPO / "main_pretrain.py"),
           *pretrain_args(data, out, "--batch-size", "4", "--epochs", "1", "--device", "cuda", "--use-bf16")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / CHECKPOINT).is_file()
    assert "1 process(es) on cuda:0" in proc.stdout + proc.stderr
