"""What a training checkpoint holds and how it is written and restored.

``save_training_checkpoint`` (collective: every rank gives its RNG state; with ``--use-zero`` the optimizer shards
are consolidated on rank 0 first) writes ``<output-dir>/checkpoint.pt`` (and ``checkpoint_best.pt``) atomically from
rank 0. A checkpoint holds ``state_dict`` (no ``module.`` prefix), ``optimizer``, ``scaler``, ``epoch`` (next epoch
to run), ``step_in_epoch``, ``global_step``, ``best_acc1``, ``args`` (plain dict), ``model_name``, ``model_config``,
``skipped_samples`` and the RNG states of every rank, so it loads with ``torch.load(weights_only=True)``.
``restore_training_state`` puts one back into a model, optimizer, scaler and :class:`TrainState` (and this rank's
RNG state when the world size matches); ``load_model_weights`` is the strict weights-only load. ``engine`` is a
``lavila.train.loop.Engine`` (its ``name``, ``metric`` and ``checkpoint_extra`` are stored).
"""
from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lavila.config import resolved_config
from lavila.utils import distributed as du
from lavila.utils.checkpoint import load_state_dict_strict, save_checkpoint, unwrap_state_dict

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"


class TrainState:
    def __init__(self) -> None:
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best = -math.inf
        self.skipped = 0


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------ RNG states


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(obj: Any) -> Any:
    return tuple(_tuplify(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


# ------------------------------------------------------------------------------------------------ checkpoints


def load_model_weights(model: nn.Module, ckpt: dict[str, Any]) -> None:
    """Strict load of a checkpoint's weights into a bare model (released format handled by the converter)."""
    state_dict = unwrap_state_dict(ckpt)
    try:
        from lavila.models.released import load_released_state_dict
    except ImportError:
        load_state_dict_strict(model, state_dict)
        return
    load_released_state_dict(model, state_dict)


def _checkpoint_dict(engine: Any, args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, state: TrainState, rng: list[Any]) -> dict[str, Any]:
    bare = unwrap_model(model)
    return {
        "engine": engine.name,
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "state_dict": bare.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "best_acc1": state.best if math.isfinite(state.best) else None,
        "metric": engine.metric,
        "args": resolved_config(args),
        "model_name": getattr(bare, "config", {}).get("name", args.model),
        "model_config": dict(getattr(bare, "config", {})),
        "rng": rng,
        "world_size": du.get_world_size(),
        "skipped_samples": state.skipped,
        **engine.checkpoint_extra(args),
    }


def save_training_checkpoint(engine: Any, args: argparse.Namespace, model: nn.Module,
                             optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, state: TrainState,
                             best: bool = False) -> Path | None:
    """Collective (every rank gives its RNG state); rank 0 writes checkpoint.pt (and checkpoint_best.pt)."""
    rng = du.all_gather_object(rng_state())
    if hasattr(optimizer, "consolidate_state_dict"):  # --use-zero: gather every shard's state on rank 0
        optimizer.consolidate_state_dict(0)
    if not du.is_main_process():
        du.barrier()
        return None
    obj = _checkpoint_dict(engine, args, model, optimizer, scaler, state, rng)
    out = Path(args.output_dir)
    path = save_checkpoint(obj, out / CHECKPOINT)
    if best:
        save_checkpoint(obj, out / CHECKPOINT_BEST)
    du.barrier()
    return path


def restore_training_state(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler, state: TrainState, full: bool, log: Any) -> None:
    load_model_weights(unwrap_model(model), ckpt)
    if not full:
        return
    if "optimizer" in ckpt:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            log.warning(f"optimizer state in the checkpoint does not fit this optimizer ({exc}); starting it fresh")
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    state.epoch = int(ckpt.get("epoch", 0))
    state.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
    state.global_step = int(ckpt.get("global_step", 0))
    best = ckpt.get("best_acc1")
    state.best = float(best) if best is not None else -math.inf
    state.skipped = int(ckpt.get("skipped_samples", 0))
    rng = ckpt.get("rng")
    if isinstance(rng, list) and len(rng) == du.get_world_size():
        set_rng_state(rng[du.get_rank()])
    elif rng is not None:
        log.warning("checkpoint RNG states are from a different world size; random streams restart")
