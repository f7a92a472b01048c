"""``--use-zero`` (issue 15): torch's ZeroRedundancyOptimizer over 2 gloo processes trains the same weights as the
plain optimizer, checkpoints hold the consolidated optimizer state, and a ZeRO checkpoint resumes with or without
ZeRO."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import pretrain_args, synthetic_root

from lavila.train import loop
from lavila.train.pretrain import PretrainEngine
from lavila.utils import distributed as du
from lavila.utils.checkpoint import load_checkpoint

COMMON = ("--batch-size", "2", "--epochs", "2", "--fix-lr", "--lr", "1e-3", "--wd", "0.1", "--dist-timeout", "60")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, argv: list[str], stop_after: int | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    consolidate = ZeroRedundancyOptimizer.consolidate_state_dict

    def recording(self, to: int = 0) -> None:  # leaves a mark that the ZeRO optimizer really ran here
        Path(argv[argv.index("--output-dir") + 1], f"zero_rank{rank}").touch()
        consolidate(self, to)

    ZeroRedundancyOptimizer.consolidate_state_dict = recording  # forked child: the parent is untouched
    try:
        loop.run(PretrainEngine(), argv, stop_after_epochs=stop_after)
    finally:
        du.cleanup_distributed()


def _two_processes(argv: list[str], stop_after: int | None = None) -> None:
    # fork: no fresh interpreter per process (spawn costs ~10 s on a busy 2-core machine)
    mp.start_processes(_worker, args=(2, _free_port(), argv, stop_after), nprocs=2, join=True, start_method="fork")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / loop.CHECKPOINT)["state_dict"]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


@pytest.mark.slow  # ~80 s on 2 busy cores: four 2-process runs
def test_zero_matches_plain_optimizer_and_resumes_with_or_without_it(tmp_path_factory, tmp_path):
    data = synthetic_root(tmp_path_factory)
    _two_processes(pretrain_args(data, tmp_path / "plain", *COMMON))
    _two_processes(pretrain_args(data, tmp_path / "zero", *COMMON, "--use-zero"), stop_after=1)

    assert not list((tmp_path / "plain").glob("zero_rank*"))
    assert sorted(p.name for p in (tmp_path / "zero").glob("zero_rank*")) == ["zero_rank0", "zero_rank1"]
    ckpt = load_checkpoint(tmp_path / "zero" / loop.CHECKPOINT)
    assert ckpt["epoch"] == 1 and ckpt["args"]["use_zero"] is True
    n_params = sum(1 for v in ckpt["state_dict"].values() if v.is_floating_point())
    state = ckpt["optimizer"]["state"]  # consolidated: every trainable parameter's state, not one rank's shard
    assert len(state) == sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]) > 0
    assert len(state) <= n_params and all("exp_avg" in s for s in state.values())

    for name, flags in (("zero_resumed", ("--use-zero",)), ("plain_resumed", ())):
        shutil.copytree(tmp_path / "zero", tmp_path / name)
        _two_processes(pretrain_args(data, tmp_path / name, *COMMON, *flags))
        assert load_checkpoint(tmp_path / name / loop.CHECKPOINT)["epoch"] == 2
        assert _close(_weights(tmp_path / name), _weights(tmp_path / "plain")), name
