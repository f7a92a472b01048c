"""Optimisers with parameter groups that exempt biases, norms, embeddings and SSM parameters from weight decay.

``--wd-rule default``: no decay for parameters with ``ndim < 2``, parameters of embedding and normalisation layers,
and the names below. ``--wd-rule reference`` (every zoo recipe): the reference's rule, decay every parameter with
``ndim >= 2`` unless its name contains ``bias``/``ln``/``bn``/``pos_embed``/``positional_embedding``, so it decays
``cls_token``, temporal embeddings, token embeddings, projections and Mamba ``A_log``/``A_b_log``.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

NO_DECAY_NAMES = {"cls_token", "pos_embed", "temporal_embed", "temporal_embedding", "positional_embedding",
                  "logit_scale", "A_log", "A_b_log", "D", "D_b", "token_embedding", "dist_token"}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or \
        "Norm" in type(module).__name__


def no_weight_decay(name: str, param: torch.Tensor, owner: nn.Module, extra: set[str]) -> bool:
    """True for parameters that should not be decayed."""
    parts = name.split(".")
    return (param.ndim < 2 or name.endswith(".bias") or any(p in NO_DECAY_NAMES for p in parts)
            or isinstance(owner, nn.Embedding) or _is_norm(owner) or name in extra)


WD_RULES = ("default", "reference")
REFERENCE_NO_DECAY_SUBSTRINGS = ("bias", "ln", "bn", "pos_embed", "positional_embedding")


def reference_no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """The reference's rule: substring match on the name (so ``ln`` anywhere counts), ``_no_weight_decay`` ignored."""
    return param.ndim < 2 or any(s in name for s in REFERENCE_NO_DECAY_SUBSTRINGS)


def param_groups(model: nn.Module, weight_decay: float, rule: str = "default") -> list[dict[str, Any]]:
    """Two groups (decay / no decay) of the trainable parameters under ``rule`` (:data:`WD_RULES`)."""
    if rule not in WD_RULES:
        raise ValueError(f"unknown --wd-rule {rule!r}; use one of {', '.join(WD_RULES)}")
    extra: set[str] = set()
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):  # timm-style hint: names relative to that module
            extra |= {f"{prefix}.{n}" if prefix else n for n in hook()}
    owners = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = module
    decay, skip = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = reference_no_weight_decay(name, param) if rule == "reference" else \
            no_weight_decay(name, param, owners[name], extra)
        (skip if exempt else decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if skip:
        groups.append({"params": skip, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum ``betas[0]`` (the reference's convention)."""
    groups = param_groups(model, args.wd, getattr(args, "wd_rule", "default"))
    if not groups:
        raise ValueError("the model has no trainable parameters")
    name = getattr(args, "optimizer", "adamw")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, betas=tuple(args.betas), eps=args.eps, weight_decay=args.wd)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.betas[0], weight_decay=args.wd)
    raise ValueError(f"unknown --optimizer {name!r}; use adamw or sgd")
