"""The output folder of a run: its default name, the guard that keeps auto-resume from continuing a different run,
and the console log written beside the checkpoints.

Auto-resume continues ``<output-dir>/checkpoint.pt``. When the folder's ``config.yaml`` differs from this launch in a
flag that changes training (:data:`GUARDED`), the run stops with the differences and the two ways out: a new
``--output-dir``, or ``--resume-anyway`` (continue with the new values, e.g. more ``--epochs``).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from lavila.config import CONFIG_FILE_NAME, resolved_config
from lavila.train.errors import TrainingError

WORK_DIRS = "work_dirs"
LOG_FILE = "log.txt"
# flags whose change makes a different run (the data, the model and its input, the optimisation)
GUARDED = ("model", "model_overrides", "pretrain_model", "random_init", "clip_length", "input_size", "batch_size",
           "update_freq", "lr", "epochs", "optimizer", "wd", "seed", "root", "train_metadata", "val_metadata",
           "root_val", "train_metadata_aux")
_PATH_KEYS = ("root", "train_metadata", "val_metadata", "root_val", "pretrain_model")


def default_output_dir(engine_name: str, args: argparse.Namespace) -> str:
    """``work_dirs/<engine>_<model>``: a named folder, so relaunching the same command resumes the same run."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(args.model))
    return os.path.join(WORK_DIRS, f"{engine_name}_{model}")


def _same(key: str, saved: Any, current: Any) -> bool:
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        return list(saved) == list(current)
    if isinstance(saved, (int, float)) and isinstance(current, (int, float)) and not isinstance(saved, bool):
        return float(saved) == float(current)
    if key in _PATH_KEYS and isinstance(saved, str) and isinstance(current, str) and saved and current:
        return os.path.realpath(saved) == os.path.realpath(current)
    return saved == current


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``--flag saved -> current`` for every guarded flag whose value changed."""
    out = []
    for key in GUARDED:
        if key not in saved and key not in current:
            continue
        old, new = saved.get(key), current.get(key)
        if not _same(key, old, new):
            out.append(f"--{key.replace('_', '-')} {old} -> {new}")
    return out


def check_resumable(out_dir: Path, args: argparse.Namespace, log: logging.Logger) -> None:
    """Before auto-resuming from ``out_dir``: its ``config.yaml`` must describe this launch (see the module
    docstring). Raises :class:`TrainingError` listing the differences."""
    path = out_dir / CONFIG_FILE_NAME
    if not path.is_file():
        log.warning(f"{out_dir} holds a checkpoint but no {CONFIG_FILE_NAME}: resuming without checking the flags")
        return
    saved = yaml.safe_load(path.read_text()) or {}
    diffs = config_differences(saved, resolved_config(args))
    if not diffs:
        return
    if getattr(args, "resume_anyway", False):
        log.warning(f"--resume-anyway: continuing the run in {out_dir} with changed flags: " + "; ".join(diffs))
        return
    raise TrainingError(f"{out_dir} holds a run with different flags ({'; '.join(diffs)}); auto-resume would continue "
                        "it: pass a new --output-dir to start a new run, or --resume-anyway to continue this one "
                        "with the new values")


def add_log_file(out_dir: Path, logger: logging.Logger) -> logging.Handler | None:
    """Append the console log (rank 0's logger) to ``<out_dir>/log.txt`` until :func:`remove_log_file`."""
    if logger.level > logging.INFO:  # not rank 0
        return None
    remove_log_file(logger)
    handler = logging.FileHandler(out_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler._lavila_run_log = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return handler


def remove_log_file(logger: logging.Logger) -> None:
    """Stop writing the run's ``log.txt`` (at the end of ``loop.run``)."""
    for handler in [h for h in logger.handlers if getattr(h, "_lavila_run_log", False)]:
        logger.removeHandler(handler)
        handler.close()
