"""Released video-mamba-suite checkpoints (and this project's): load into a model, build the model they describe.

``load_released_state_dict`` unwraps the state dict (:func:`lavila.utils.checkpoint.unwrap_state_dict`), resizes
temporal embeddings to the model's frame count and loads strictly, with a hint when a classifier and a CLIP
checkpoint are mixed up; ``build_from_released_checkpoint`` builds the model :mod:`lavila.models.checkpoint_spec`
reads from the file. ``LoadReport`` is what a load or a pretrained initialisation (:mod:`lavila.models.convert`) did.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lavila.models.checkpoint_spec import TEMPORAL_KEYS, checkpoint_model_spec, temporal_dim
from lavila.utils.checkpoint import classifier_classes, unwrap_state_dict


@dataclass
class LoadReport:
    """What a load or an initialisation did."""

    loaded: list[str] = field(default_factory=list)
    left_at_init: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    ignored_source_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.resized:
            lines.append("resized: " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in self.resized.items()))
        if self.left_at_init:
            lines.append(f"left at init ({len(self.left_at_init)}): {abbrev(self.left_at_init)}")
        if self.ignored_source_keys:
            lines.append(f"ignored source keys ({len(self.ignored_source_keys)}): {abbrev(self.ignored_source_keys)}")
        return "; ".join(lines)


def abbrev(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def resize_temporal(tensor: torch.Tensor, num_frames: int, dim: int, mode: str = "auto") -> torch.Tensor:
    """Resize a temporal embedding along ``dim`` to ``num_frames``.

    ``auto`` (the fine-tune engines' inflation): more frames in the checkpoint -> keep the first ones; fewer ->
    linear interpolation (align_corners=False). ``linear``: interpolate in both directions (the pretrain engine's
    ``--resume``).
    """
    if mode not in ("auto", "linear"):
        raise ValueError(f"temporal resize mode must be 'auto' or 'linear', got {mode!r}")
    old = tensor.shape[dim]
    if old == num_frames:
        return tensor
    if mode == "auto" and old > num_frames:
        return tensor.narrow(dim, 0, num_frames).clone()
    x = tensor.movedim(dim, -1)
    shape = x.shape
    x = F.interpolate(x.reshape(1, -1, old).float(), size=num_frames, mode="linear", align_corners=False)
    return x.reshape(*shape[:-1], num_frames).to(tensor.dtype).movedim(-1, dim)


def adapt_released_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], mode: str = "auto"
                              ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Unwrapped, prefix-stripped copy of ``state_dict`` with temporal embeddings resized to ``model``'s."""
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    resized = {}
    for key in TEMPORAL_KEYS:
        if key in sd and key in own and sd[key].shape != own[key].shape:
            src = sd[key]
            dim = temporal_dim(key)
            if src.ndim != own[key].ndim or [s for i, s in enumerate(src.shape) if i != dim] != \
                    [s for i, s in enumerate(own[key].shape) if i != dim]:
                raise ValueError(f"{key}: checkpoint {tuple(src.shape)} cannot be resized to {tuple(own[key].shape)} "
                                 "(different width: wrong model name for this checkpoint?)")
            sd[key] = resize_temporal(src, own[key].shape[dim], dim, mode)
            resized[key] = (tuple(src.shape), tuple(own[key].shape))
    for key in ("visual.pos_embed", "visual.positional_embedding"):
        if key in sd and key in own and sd[key].shape != own[key].shape:
            raise ValueError(f"{key}: checkpoint {tuple(sd[key].shape)} vs model {tuple(own[key].shape)}; spatial "
                             "position-embedding resizing is not supported: build the model with the checkpoint's "
                             "img_size / patch_size")
    return sd, resized


def load_released_state_dict(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True,
                             temporal_resize: str = "auto") -> LoadReport:
    """Load a released-format checkpoint (or its ``state_dict``) into ``model``; strict by default."""
    sd, resized = adapt_released_state_dict(model, state_dict, temporal_resize)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        hint = _mismatch_hint(model, sd, missing, unexpected)
        raise KeyError(f"checkpoint does not match the model: missing {len(missing)} "
                       f"[{abbrev(missing, 5)}], unexpected {len(unexpected)} [{abbrev(unexpected, 5)}]. {hint}")
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
           for k in sd if k in own and sd[k].shape != own[k].shape]
    if bad:
        raise ValueError("checkpoint shapes do not match the model (wrong model name or overrides?): "
                         + "; ".join(bad[:5]))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=strict)
    return LoadReport(loaded=[k for k in sd if k in own], left_at_init=missing, resized=resized,
                      ignored_source_keys=unexpected)


def _mismatch_hint(model: nn.Module, sd: Mapping[str, torch.Tensor], missing: list[str], unexpected: list[str]) -> str:
    num_classes = classifier_classes(sd)
    has_text = any(k.startswith("textual.") for k in sd)
    is_classifier = hasattr(model, "fc_cls")
    if num_classes is not None and not is_classifier:
        return f"This is a classification checkpoint: build create_model(name, num_classes={num_classes})."
    if is_classifier and has_text and num_classes is None:
        return ("This is a CLIP checkpoint: load it into create_model(name) and wrap it with "
                "VideoClassifier.from_clip(model, num_classes).")
    return "Check that the model name (args.model of the checkpoint) and the overrides match the checkpoint."


def build_from_released_checkpoint(checkpoint: Mapping[str, Any], num_frames: int | None = None,
                                   model_name: str | None = None, **overrides: Any) -> nn.Module:
    """Build the model a checkpoint describes (:func:`checkpoint_model_spec`; ``fc_cls`` -> ``VideoClassifier``)
    and load it strictly. ``num_frames`` defaults to the checkpoint's own frame count; ``overrides`` win over the
    stored config."""
    from lavila.models.registry import create_model, list_models

    name, stored = checkpoint_model_spec(checkpoint, model_name)
    if name is None:
        raise ValueError("the checkpoint has no args.model; pass model_name= (one of: "
                         + ", ".join(list_models()) + ")")
    sd = unwrap_state_dict(checkpoint)
    overrides = {**stored, **overrides}
    if num_frames is not None:
        overrides["num_frames"] = int(num_frames)
    model = create_model(name, num_classes=classifier_classes(sd), **overrides)
    load_released_state_dict(model, sd)
    return model
