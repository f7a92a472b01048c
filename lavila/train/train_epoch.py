"""One training epoch of the loop (``loop.run``): per-iteration learning rate, gradient accumulation (DDP ``no_sync``
on the inner micro-batches), AMP, gradient clipping, the logit-scale clamp, step and epoch metrics, skipped-sample
counts, and a stop at the next optimiser-step boundary when a preemption signal arrived on any rank.

Every rank takes the same branch: a batch unreadable on one rank is skipped on all, and a signal on one rank stops
all (one tiny all-reduce each). A non-finite loss raises ``NonFiniteLossError`` naming the epoch and step; the last
good checkpoint stays in place.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lavila.train.amp import autocast
from lavila.train.checkpointing import CHECKPOINT, TrainState, unwrap_model
from lavila.train.errors import NonFiniteLossError, TrainingError
from lavila.train.preemption import PreemptionFlag
from lavila.train.schedule import set_lr
from lavila.utils import distributed as du
from lavila.utils.logging import MetricLogger, progress

__all__ = ["train_epoch", "count_skips", "LOGIT_SCALE_MAX"]

LOGIT_SCALE_MAX = math.log(100.0)


def _agree(flags: Sequence[float], device: torch.device) -> list[float]:
    """Max over ranks of a few flags (one tiny all-reduce), so every rank takes the same branch."""
    if du.get_world_size() == 1:
        return list(flags)
    t = torch.tensor(list(flags), dtype=torch.float32, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.tolist()


def train_epoch(train_step: Callable[..., dict[str, torch.Tensor]], args: argparse.Namespace, model: nn.Module,
                loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, schedule: np.ndarray | None, state: TrainState, ipe: int,
                start_micro: int, device: torch.device, metrics_log: MetricLogger, log: Any, flag: PreemptionFlag,
                info: du.DistInfo) -> int | None:
    """One epoch from micro-batch ``start_micro`` (``train_step``: the engine's hook); returns the signal number if
    stopped by preemption."""
    model.train()
    bare = unwrap_model(model)
    n_micro = ipe * args.update_freq
    epoch = state.epoch
    sums: dict[str, float] = {}
    count = 0
    t0 = time.monotonic()
    bar = progress(loader, total=n_micro, desc=f"epoch {epoch}", every=args.print_freq, start=start_micro)
    if start_micro == 0:
        optimizer.zero_grad(set_to_none=True)
    for micro, batch in enumerate(bar, start=start_micro):
        if micro >= n_micro:
            break
        optim_iter = micro // args.update_freq
        if micro % args.update_freq == 0 and schedule is not None:
            set_lr(optimizer, float(schedule[epoch * ipe + optim_iter]))
        missing = batch is None
        if _agree([float(missing)], device)[0]:
            if args.skip_policy == "raise":
                raise TrainingError(f"epoch {epoch} step {micro}: a whole batch could not be read")
            log.warning(f"epoch {epoch} step {micro}: no readable sample in the batch on some rank; batch skipped")
            state.step_in_epoch = micro + 1
            continue
        last_micro = (micro + 1) % args.update_freq == 0
        sync = model.no_sync() if (not last_micro and isinstance(model, nn.parallel.DistributedDataParallel)) \
            else contextlib.nullcontext()
        with sync:
            with autocast(args, device):
                out = train_step(model, batch, criterion, args, device)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                last = Path(args.output_dir) / CHECKPOINT
                where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
                raise NonFiniteLossError(f"non-finite loss ({float(loss.detach())}) at epoch {epoch}, step {micro} "
                                         f"(optimiser step {state.global_step + 1}); stopping: {where}")
            scaler.scale(loss / args.update_freq).backward()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)
        count += 1
        state.step_in_epoch = micro + 1
        if not last_micro:
            continue
        if args.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        logit_scale = getattr(bare, "logit_scale", None)
        if isinstance(logit_scale, torch.Tensor) and logit_scale.requires_grad:
            with torch.no_grad():
                logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        state.global_step += 1
        step_metrics = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
        step_metrics["lr"] = optimizer.param_groups[0]["lr"]
        if isinstance(logit_scale, torch.Tensor):
            step_metrics["logit_scale"] = float(logit_scale.detach().exp())
        metrics_log.log_step(state.global_step, step_metrics, epoch=epoch)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"loss {step_metrics['loss']:.4f} lr {step_metrics['lr']:.3g}")
        stop = _agree([float(flag.signal or 0)], device)[0]
        if stop:
            count_skips(loader, state, epoch, log)  # the resumed run never re-reads this part of the epoch
            return int(stop)
    count_skips(loader, state, epoch, log)
    if count:
        averages = {f"train_{k}": du.all_reduce_mean(v / count) for k, v in sums.items()}
        averages["train_lr"] = optimizer.param_groups[0]["lr"]
        averages["epoch_seconds"] = time.monotonic() - t0
        metrics_log.log_epoch(epoch, averages, kind="train", step=state.global_step)
    return None


def count_skips(loader: DataLoader, state: TrainState, epoch: int, log: Any) -> None:
    """Add the samples skipped since the last count (summed over ranks; collective) to the run's total."""
    skipped = loader.skip_tracker.report(epoch, logger=log)["skipped"]  # type: ignore[attr-defined]
    state.skipped += int(du.all_reduce_sum(float(skipped)).item())

