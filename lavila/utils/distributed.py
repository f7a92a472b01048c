"""Process-group set-up and collective helpers that also work in a single process.

``init_distributed`` reads, in order:

* torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``);
* Slurm's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NODELIST``): the master address is the first
  host of the node list (``scontrol show hostnames`` when available, else a built-in parser), the port
  ``MASTER_PORT`` or one derived from ``SLURM_JOB_ID``;
* nothing: one process, no process group.

The backend is NCCL for CUDA devices and gloo otherwise. Every helper is the identity at world size 1.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def print_main(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs)


def _expand_bracket(prefix: str, body: str, suffix: str) -> list[str]:
    hosts = []
    for part in body.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo)
            hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
        else:
            hosts.append(f"{prefix}{part}{suffix}")
    return hosts


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm node list such as ``gpu[01-03,07],login1`` (the format of ``SLURM_NODELIST``)."""
    groups, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            groups.append(nodelist[start:i])
            start = i + 1
    groups.append(nodelist[start:])
    hosts: list[str] = []
    for group in filter(None, (g.strip() for g in groups)):
        pending = [group]
        while pending:  # expand one bracket at a time (handles e.g. rack[1-2]-n[01-02])
            item = pending.pop(0)
            m = re.search(r"\[([^\]]+)\]", item)
            if m is None:
                hosts.append(item)
            else:
                pending = _expand_bracket(item[: m.start()], m.group(1), item[m.end():]) + pending
    return hosts


def first_slurm_host(nodelist: str) -> str:
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise RuntimeError(f"cannot read a host from SLURM_NODELIST={nodelist!r}")
    return hosts[0]


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None``/``'auto'``: ``cuda:<local_rank>`` if CUDA is available, else CPU; ``'cuda'``: ``cuda:<local_rank>``."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but CUDA is not available; use --device cpu")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was requested but CUDA is not available; use --device cpu")
    return dev


def _env_from_slurm() -> None:
    """Export torchrun-style variables from Slurm's so ``init_method='env://'`` works under ``srun``."""
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_NODELIST") or os.environ.get(
            "SLURM_JOB_NODELIST")
        if not nodelist:
            raise RuntimeError("Slurm run with several tasks but SLURM_NODELIST is not set; set MASTER_ADDR")
        os.environ["MASTER_ADDR"] = first_slurm_host(nodelist)
    if "MASTER_PORT" not in os.environ:
        job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        os.environ["MASTER_PORT"] = str(20000 + job % 20000)


DEFAULT_RENDEZVOUS_TIMEOUT_S = 120.0
RENDEZVOUS_TIMEOUT_ENV = "LAVILA_DIST_TIMEOUT"


class RendezvousTimeoutError(RuntimeError):
    """The other processes of a distributed job did not join in time."""


def rendezvous_timeout(seconds: float | None = None) -> float:
    """Seconds to wait for the other ranks at start-up: ``seconds``, else ``$LAVILA_DIST_TIMEOUT``, else 120."""
    if seconds is None:
        env = os.environ.get(RENDEZVOUS_TIMEOUT_ENV, "").strip()
        try:
            seconds = float(env) if env else DEFAULT_RENDEZVOUS_TIMEOUT_S
        except ValueError:
            raise ValueError(f"{RENDEZVOUS_TIMEOUT_ENV}={env!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"the rendezvous timeout must be > 0 seconds, got {seconds}")
    return float(seconds)


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout_minutes: int = 60, rendezvous_timeout_s: float | None = None) -> DistInfo:
    """Initialise the process group from torchrun or Slurm variables, or return a single-process ``DistInfo``.

    Joining the group waits at most ``rendezvous_timeout_s`` (default ``$LAVILA_DIST_TIMEOUT`` or 120 s; the
    ``--dist-timeout`` flag) and then raises ``RendezvousTimeoutError``: a stale ``RANK``/``WORLD_SIZE`` in the
    environment fails fast instead of waiting for peers that never come. Collectives afterwards time out after
    ``timeout_minutes``."""
    if is_dist():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        return DistInfo(rank, world, local, resolve_device(device, local), world > 1)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        pass
    elif "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        _env_from_slurm()
    else:
        return DistInfo(0, 1, 0, resolve_device(device, 0), False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local)
    if world <= 1:
        return DistInfo(rank, world, local, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    wait = rendezvous_timeout(rendezvous_timeout_s)
    set_timeout = getattr(dist, "set_timeout", None) or getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is None:  # older torch cannot lengthen the timeout afterwards: wait the long one from the start
        wait = max(wait, timeout_minutes * 60.0)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=wait))
    except (RuntimeError, ValueError) as exc:  # torch raises DistStoreError / DistNetworkError (RuntimeError)
        if is_dist():
            dist.destroy_process_group()
        raise RendezvousTimeoutError(
            f"rank {rank} of {world}: could not join the process group at {where} within {wait:g} s ({exc}). "
            "The other processes did not start or cannot reach this host. If this is not meant to be a "
            "distributed run, unset RANK/WORLD_SIZE (and SLURM_NTASKS); if peers start slowly, raise "
            f"--dist-timeout or {RENDEZVOUS_TIMEOUT_ENV}.") from exc
    # The short limit was for joining; collectives (e.g. waiting for rank 0's evaluation) get the long one.
    if set_timeout is not None:
        set_timeout(datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world, local, dev, True)


def cleanup_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:n] for o, n in zip(out, sizes)], 0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradient over ranks and returns this rank's slice.

    Every rank computes the same global loss from the gathered tensor, so the sum over ranks of the gradients reaching
    this rank's slice is ``world_size`` times its gradient in the global loss; DDP's gradient averaging then gives the
    parameters exactly the global-loss gradient (the same as one process with the whole batch). Ranks may hold
    different numbers of rows (a batch that lost unreadable samples).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        sizes = _gather_sizes(x.shape[0], x.device)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 in rank order, keeping gradients (identity at world size 1)."""
    if get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (no gradient); the first dimension may differ between ranks."""
    if get_world_size() == 1:
        return x
    return _gather_padded(x, _gather_sizes(x.shape[0], x.device))


def all_gather_object(obj: Any) -> list[Any]:
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor:
    t = x.detach().clone() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
    if get_world_size() > 1:
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor | float:
    """Mean over ranks; a Python number in gives a Python float back."""
    out = all_reduce_sum(x) / get_world_size()
    return float(out) if not isinstance(x, torch.Tensor) else out.to(x.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
