"""Distributed runtime: env parsing, Slurm node lists, and a real 2-process gloo gather with gradients."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import dist_env_restored

from lavila.utils import distributed as du


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss(feats: torch.Tensor) -> torch.Tensor:
    # position-dependent so that a wrong slice in the backward changes the gradient
    sim = feats @ feats.t()
    weights = torch.arange(1, feats.shape[0] + 1, dtype=feats.dtype)
    return (torch.logsumexp(sim, dim=1) * weights).sum() + (feats[:, 0] * weights).sum()


def _worker(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = du.init_distributed(device="cpu")
    try:
        assert info.distributed and info.rank == rank and info.world_size == world
        assert torch.distributed.get_backend() == "gloo"
        torch.manual_seed(0)
        data = torch.randn(4 * world, 5)
        lin = torch.nn.Linear(5, 3)
        # single-process reference on the global batch
        ref_lin = torch.nn.Linear(5, 3)
        ref_lin.load_state_dict(lin.state_dict())
        ref_x = data.clone().requires_grad_(True)
        ref_feats = ref_lin(ref_x)
        _loss(ref_feats).backward()

        x = data[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
        gathered = du.all_gather_with_grad(lin(x))
        torch.testing.assert_close(gathered, ref_feats.detach())
        _loss(gathered).backward()
        # DDP averages parameter gradients over ranks; that average must be the global-loss gradient
        for p, ref_p in zip(lin.parameters(), ref_lin.parameters()):
            torch.testing.assert_close(du.all_reduce_mean(p.grad), ref_p.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.grad / world, ref_x.grad[rank * 4:(rank + 1) * 4], rtol=1e-5, atol=1e-5)

        # ranks holding different batch sizes (a batch that lost unreadable samples): rank 0 has 3 rows, rank 1 has 5
        sizes = [3, 5]
        start = sum(sizes[:rank])
        y = data[start:start + sizes[rank]].clone().requires_grad_(True)
        g = du.all_gather_with_grad(y * 2)
        torch.testing.assert_close(g, data[:8] * 2)
        _loss(g).backward()
        ref_y = data[:8].clone().requires_grad_(True)
        _loss(ref_y * 2).backward()
        torch.testing.assert_close(y.grad / world, ref_y.grad[start:start + sizes[rank]], rtol=1e-5, atol=1e-5)

        # no-grad gather with uneven shards keeps rank order
        part = torch.full((rank + 1, 2), float(rank))
        assert du.all_gather(part).tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        assert du.all_reduce_mean(float(rank)) == pytest.approx(0.5)
        assert du.all_gather_object({"r": rank}) == [{"r": 0}, {"r": 1}]
        assert du.is_main_process() == (rank == 0)
    finally:
        du.cleanup_distributed()


def test_two_process_gloo_gather_matches_single_process():
    # fork avoids re-importing torch in each child (spawn costs ~10 s on a busy 2-core machine)
    with dist_env_restored():
        mp.start_processes(_worker, args=(2, _free_port()), nprocs=2, join=True, start_method="fork")


def test_single_process_without_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    info = du.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.distributed, info.device.type) == (0, 1, False, "cpu")
    x = torch.randn(3, 2, requires_grad=True)
    assert du.all_gather_with_grad(x) is x
    assert du.all_gather(x) is x
    assert du.all_reduce_mean(2.0) == 2.0


def test_device_selection(monkeypatch):
    assert du.resolve_device("cpu").type == "cpu"
    assert du.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cpu"):
            du.resolve_device("cuda")


@pytest.mark.parametrize("nodelist, hosts", [
    ("node01", ["node01"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("a[1-2],b5,c[9]", ["a1", "a2", "b5", "c9"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
])
def test_expand_slurm_nodelist(nodelist, hosts):
    assert du.expand_nodelist(nodelist) == hosts


def test_slurm_env_exports_torchrun_variables(monkeypatch):
    # setenv first so that monkeypatch restores (removes) the variables _env_from_slurm exports; a leaked RANK /
    # WORLD_SIZE would make later tests wait for peers that never come
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the built-in parser is used
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[12-13]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    du._env_from_slurm()
    assert os.environ["RANK"] == "3" and os.environ["WORLD_SIZE"] == "4" and os.environ["LOCAL_RANK"] == "1"
    assert os.environ["MASTER_ADDR"] == "gpu12"
    assert os.environ["MASTER_PORT"] == str(20000 + 4242)


def test_single_task_slurm_is_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    info = du.init_distributed(device="cpu")
    assert not info.distributed and info.world_size == 1
