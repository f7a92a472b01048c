"""Checks of a run's flags before anything is read or built: what ``--print-config`` validates, the reference's
default data paths (``datasets/...``) and the start-up notes about flags that have no effect here."""
from __future__ import annotations

import argparse
import os
from typing import Any

from lavila.train.flags import DATA_FLAGS, DATA_LAYOUT, REFERENCE_DATA_PATHS, parse_overrides

# paths only training reads (pretraining evaluates from --root-val; the fine-tuning engines read --root for both)
_TRAIN_ONLY = {"pretrain": ("root", "train_metadata")}
_EVAL_ONLY = ("val_metadata", "root_val")


def flag_problems(args: argparse.Namespace) -> list[str]:
    """Values that no run can use, each naming its flag and the fix (empty when all is well)."""
    from lavila.models.registry import OVERRIDES, list_models

    problems = []
    for flag, value, low in (("--update-freq", args.update_freq, 1), ("--batch-size", args.batch_size, 1),
                             ("--epochs", args.epochs, 0), ("--decode-threads", args.decode_threads, 0),
                             ("--workers", args.workers, 0)):
        if value < low:
            problems.append(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--patch-dropout", args.patch_dropout), ("--drop-path-rate", args.drop_path_rate)):
        if not 0.0 <= value < 1.0:
            problems.append(f"{flag} must be in [0, 1), got {value}")
    if args.model not in list_models():
        problems.append(f"--model {args.model!r} is not a known model; choose one of {', '.join(list_models())}")
    try:
        unknown = sorted(set(parse_overrides(args.model_overrides)) - set(OVERRIDES))
    except ValueError as exc:
        problems.append(str(exc))
    else:
        if unknown:
            problems.append(f"--model-overrides: unknown key(s) {unknown}; valid: {', '.join(OVERRIDES)}")
    return problems


def check_reference_paths(args: argparse.Namespace, engine_name: str) -> tuple[list[str], list[str]]:
    """Data flags still at the reference's default path (``datasets/...``) that do not exist here.

    Returns ``(errors, notes)``: a path the run needs gives an error naming the path, its layout and the flag; an
    evaluation path of a training run gives a note (the engines skip that evaluation set:
    :func:`lavila.train.flags.absent_reference_default`); the values themselves are left as they are.
    """
    errors, dropped = [], []
    for dest, default in REFERENCE_DATA_PATHS.get(engine_name, {}).items():
        value = getattr(args, dest, None)
        if value != default or os.path.exists(value):
            continue
        flag = DATA_FLAGS[dest]
        if dest in _EVAL_ONLY and not args.evaluate:
            dropped.append(f"{flag} {value}")
        elif not (dest in _TRAIN_ONLY.get(engine_name, ("train_metadata",)) and args.evaluate):
            errors.append(f"{value} not found: {flag} defaults to the reference's path, which should hold "
                          f"{DATA_LAYOUT[dest]}; put the data there or pass {flag} PATH")
    notes = [f"no evaluation during training: the reference's default {' and '.join(dropped)} not found; pass "
             "the flag to evaluate"] if dropped else []
    return errors, notes


def model_tower(model: Any) -> str | None:
    """The built model's tower type (``vit``, ``timesformer``, ``vivim``) from its resolved config."""
    config = getattr(model, "config", None) or {}
    return config.get("tower")
