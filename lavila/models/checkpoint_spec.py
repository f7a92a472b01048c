"""What a checkpoint describes: the one reading of its model name, architecture, frame count, ``args`` and
normalisation.

This project's checkpoints store ``model_name`` / ``model_config`` (the full resolved config) and ``args`` (a dict);
released video-mamba-suite files carry only ``args`` (an ``argparse.Namespace``: ``model``, ``clip_length``,
``project_embed_dim``, ``context_length``, ``vocab_size``, ``norm_style``) and the frame count of their temporal
embedding. Finding the state dict and telling a classifier apart is :mod:`lavila.utils.checkpoint`'s job.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from lavila.utils.checkpoint import state_dict_entry

TEMPORAL_KEYS = ("visual.temporal_embed", "visual.temporal_embedding")
NORM_STYLES = ("openai", "timm")


def temporal_dim(key: str) -> int:
    """Frame axis of a temporal embedding: TimeSformer ``[1, T, D]`` -> 1; ViT ``[T, D]``, ViViM ``[T, 1, D]`` -> 0."""
    return 1 if key.endswith("temporal_embed") else 0


def checkpoint_args(checkpoint: Any) -> dict[str, Any]:
    """The checkpoint's ``args`` as a new dict: a Namespace in released files, a dict in this project's."""
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    return {k: getattr(args, k) for k in dir(args) if not k.startswith("_")}


def checkpoint_frames(checkpoint: Any) -> int | None:
    """Frame count of a checkpoint's (or state dict's) temporal embedding; None without one."""
    for key in TEMPORAL_KEYS:
        value = state_dict_entry(checkpoint, key)
        if hasattr(value, "shape"):
            return int(value.shape[temporal_dim(key)])
    return None


def checkpoint_norm_style(checkpoint: Any, styles: tuple[str, ...] = NORM_STYLES) -> str | None:
    """``args.norm_style`` of a checkpoint when it is one of ``styles``, else None."""
    value = checkpoint_args(checkpoint).get("norm_style")
    return value if value in styles else None


def checkpoint_model_spec(checkpoint: Mapping[str, Any], model_name: str | None = None
                          ) -> tuple[str | None, dict[str, Any]]:
    """Model name and named-config overrides a checkpoint describes (``None`` name: the file names no model).

    A stored ``model_config`` is used as is; otherwise a released file's ``args`` (``project_embed_dim``,
    ``context_length``, ``vocab_size``) and its frame count (temporal embedding, else ``args.clip_length``).
    ``model_name`` wins over the stored name.
    """
    from lavila.models.registry import OVERRIDES

    args = checkpoint_args(checkpoint)
    config = checkpoint.get("model_config") if isinstance(checkpoint, Mapping) else None
    if isinstance(config, Mapping) and config:
        name = model_name or checkpoint.get("model_name") or config.get("name") or args.get("model")
        return name, {k: config[k] for k in OVERRIDES if k in config}
    overrides: dict[str, Any] = {}
    for key in ("project_embed_dim", "context_length", "vocab_size"):
        value = args.get(key)
        if value is not None:
            overrides[key] = int(value)
    frames = checkpoint_frames(checkpoint) or args.get("clip_length")
    if frames is not None:
        overrides["num_frames"] = int(frames)
    return model_name or args.get("model"), overrides
