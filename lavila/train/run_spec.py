"""What describes a run: the flags the user gave, the checkpoint the model comes from, and the model that was built.

``--evaluate``, ``--resume`` and (fine-tuning) ``--pretrain-model`` take the model name, frame count, crop size,
context length and normalisation from the checkpoint (:func:`lavila.models.checkpoint_spec.checkpoint_model_spec`, the
released files' ``args``), as ``eval_zeroshot.py`` does, before any dataset is built. A flag given on the command line
or in ``--config`` that contradicts the checkpoint is an error; the one legitimate difference, a new frame count for
fine-tuning, is applied with a logged notice (the temporal embedding is resized when the weights are loaded).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Sequence

from torch import nn

from lavila.train.errors import TrainingError
from lavila.utils.checkpoint import load_checkpoint

# dest, flag, what it is
DESCRIBED = (("model", "--model", "model"), ("clip_length", "--clip-length", "frame count"),
             ("input_size", "--input-size", "crop size"), ("context_length", "--context-length", "context length"),
             ("norm_style", "--norm-style", "normalisation"))
NO_CHECKPOINT = "none"
_CACHE: dict[str, dict[str, Any]] = {}


def resolve_checkpoint_source(source: str, trusted: bool) -> dict[str, Any]:
    """A path, or (when lavila.zoo exists) a zoo name or URL."""
    if os.path.isfile(source):
        return load_checkpoint(source, trusted=trusted)
    try:
        from lavila import zoo
    except ImportError:
        raise FileNotFoundError(f"checkpoint not found: {source}") from None
    if trusted:
        return load_checkpoint(zoo.resolve(source), trusted=True)
    return zoo.load(source)


def get_checkpoint(source: str, trusted: bool = False) -> dict[str, Any]:
    """:func:`resolve_checkpoint_source`, loaded once per process (at most one checkpoint kept in memory)."""
    if source not in _CACHE:
        _CACHE.clear()
        _CACHE[source] = resolve_checkpoint_source(source, trusted)
    return _CACHE[source]


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                   args: argparse.Namespace | None = None) -> set[str]:
    """Destinations the user set: flags on the command line (also ``--flag=value`` and unique abbreviations) and
    keys of the ``--config`` file. Without ``argv`` (API call with parsed ``args``): values that differ from the
    parser's defaults."""
    table = {opt: a.dest for a in parser._actions for opt in a.option_strings}
    if argv is None:
        if args is None:
            return set()
        return {a.dest for a in parser._actions if a.option_strings and hasattr(args, a.dest)
                and getattr(args, a.dest) != a.default}
    given: set[str] = set()
    for token in argv:
        if not token.startswith("-") or token == "--":
            continue
        option = token.split("=", 1)[0]
        dests = {table[option]} if option in table else {d for o, d in table.items() if o.startswith(option)}
        if len(dests) == 1:
            given |= dests
    config = getattr(args, "config", None) if args is not None else None
    if config:
        from lavila.config import load_config_file

        keys = {o[2:].replace("-", "_"): d for o, d in table.items() if o.startswith("--")}
        keys.update({d: d for d in table.values()})
        given |= {keys.get(str(k).replace("-", "_").lstrip("_"), str(k)) for k in load_config_file(config)}
    return given


def describing_source(args: argparse.Namespace) -> tuple[str, str] | None:
    """(checkpoint, mode) that describes the model: ``--resume`` (mode ``resume`` / ``evaluate``), else a
    fine-tuning ``--pretrain-model`` (``finetune`` / ``evaluate``); None for random weights or a fresh model."""
    if args.resume:
        return args.resume, "evaluate" if args.evaluate else "resume"
    pretrain = getattr(args, "pretrain_model", "") or ""
    if pretrain and pretrain.lower() != NO_CHECKPOINT and not getattr(args, "random_init", False):
        return pretrain, "evaluate" if args.evaluate else "finetune"
    return None


def checkpoint_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The flag values a checkpoint describes (only those it states)."""
    from lavila.models.checkpoint_spec import checkpoint_args, checkpoint_model_spec, checkpoint_norm_style

    name, spec = checkpoint_model_spec(ckpt)
    stored = checkpoint_args(ckpt)
    out: dict[str, Any] = {"model": name, "clip_length": spec.get("num_frames"),
                           "input_size": spec.get("img_size") or stored.get("input_size"),
                           "context_length": spec.get("context_length") or stored.get("context_length"),
                           "norm_style": checkpoint_norm_style(ckpt)}
    return {k: (int(v) if k not in ("model", "norm_style") else v) for k, v in out.items() if v is not None}


def adopt_checkpoint_spec(args: argparse.Namespace, ckpt: dict[str, Any], source: str, mode: str,
                          explicit: set[str], log: logging.Logger) -> None:
    """Set ``args`` from the checkpoint's description (see the module docstring); errors on contradicting flags."""
    settings = checkpoint_settings(ckpt)
    adopted = []
    for dest, flag, what in DESCRIBED:
        value, current = settings.get(dest), getattr(args, dest, None)
        if value is None or current == value:
            continue
        if dest == "clip_length" and mode == "finetune":
            log.info(f"fine-tuning at {current} frames (--clip-length): the {value}-frame temporal embedding of "
                     f"{source} is resized")
            continue
        if dest in explicit:
            way_out = (f"drop {flag}, or pass --random-init to train {current} from random weights"
                       if dest == "model" and mode == "finetune" else f"drop {flag}")
            raise TrainingError(f"{flag} {current} contradicts the checkpoint {source}, whose {what} is {value}: "
                                f"{way_out} (the checkpoint describes the model)")
        setattr(args, dest, value)
        adopted.append(f"{flag} {value}")
    if adopted:
        log.info(f"from the checkpoint {source}: " + ", ".join(adopted))


def model_summary(model: nn.Module, args: argparse.Namespace) -> str:
    """One line: name, frames, crop size, context length, parameter counts."""
    config = getattr(model, "config", {}) or {}
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kind = f", {config['num_classes']} classes" if "num_classes" in config else ""
    return (f"model {config.get('name', args.model)}{kind}: {getattr(model, 'num_frames', args.clip_length)} frames, "
            f"crop {config.get('img_size', args.input_size)}, context length "
            f"{config.get('context_length', args.context_length)}, {total / 1e6:.2f} M parameters "
            f"({trainable / 1e6:.2f} M trainable)")
