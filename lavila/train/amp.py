"""Mixed precision from the flags: autocast on CUDA (bf16 with ``--use-bf16``, else fp16 with a GradScaler), fp32 on
CPU or with ``--disable-amp``."""
from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch

__all__ = ["autocast", "grad_scaler"]


def autocast(args: argparse.Namespace, device: torch.device) -> Any:
    """The context of forward passes (training steps and evaluation)."""
    if device.type != "cuda" or args.disable_amp:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if args.use_bf16 else torch.float16)


def grad_scaler(args: argparse.Namespace, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast only (a disabled scaler passes losses and steps through unchanged)."""
    use_scaler = device.type == "cuda" and not args.disable_amp and not args.use_bf16
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=use_scaler)
