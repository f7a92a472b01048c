"""Building blocks shared by every tower: attention, MLP, stochastic depth, RMSNorm.

Parameter names follow the released checkpoints: visual attention is ``Wqkv``/``out_proj`` (flash-attn's MHA
layout, rows ``[q; k; v]`` with heads contiguous), visual MLPs are ``fc1``/``fc2``; the text tower keeps the
``nn.MultiheadAttention`` names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) and ``c_fc``/``c_proj``.
All attention goes through ``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on GPU, math on CPU).

Why not ``timm.layers`` (timm 1.0.31's ``Mlp``, ``DropPath``, ``trunc_normal_``, ``lecun_normal_``): importing any
timm submodule runs ``timm/__init__``, which imports ``torchvision.models`` and ``torch._dynamo`` (and so triton,
where installed, which ``lavila.models`` promises not to import): 1.8 s on top of ``import torch`` (best of 5, fresh
process, 2-core CPU, Python 3.11), against 5 ms for all of ``lavila.models`` (tests/test_models_imports.py keeps
timm out). Its ``Mlp`` would be a drop-in (same ``fc1``/``fc2`` keys, init draws and outputs); its ``trunc_normal_``
draws other numbers than ours under a seed (see ``trunc_normal_``). Measured on 2026-12-02; ``timm`` is a test-only
dependency (the DeiT conversion oracle).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, 3*D) -> three (B, H, L, D/H) tensors; rows are [q; k; v], heads contiguous inside each."""
    b, n, three_d = qkv.shape
    head_dim = three_d // (3 * num_heads)
    qkv = qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``Wqkv`` projection (batch-first input)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.Wqkv = nn.Linear(dim, 3 * dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = _split_heads(self.Wqkv(x), self.num_heads)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        return self.out_proj(_merge_heads(out))


class MultiheadSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter names, computed with SDPA (batch-first)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim, bias=True)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = _split_heads(F.linear(x, self.in_proj_weight, self.in_proj_bias), self.num_heads)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(_merge_heads(out))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (the released towers never use QuickGELU); ``timm.layers.Mlp(dim, hidden_dim)``'s
    keys, init draws and outputs (bitwise), without timm's import."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def text_mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    """The text tower's MLP with CLIP names ``c_fc``/``c_proj`` (exact GELU)."""
    return nn.Sequential(OrderedDict([("c_fc", nn.Linear(dim, hidden_dim)), ("gelu", nn.GELU()),
                                      ("c_proj", nn.Linear(hidden_dim, dim))]))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (first dimension)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """timm's ``DropPath`` (same mask draws); timm computes ``x * (mask / keep)``, this ``x * mask / keep``: equal at
    p=0.5, else at most 1 ulp apart (measured 4.8e-7 in float32)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    """Per-frame ``Conv2d`` patch embedding ``proj`` (TimeSformer: bias-free, followed by ``ln_pre``; ViViM: bias)."""

    def __init__(self, patch_size: int, embed_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, grid^2, D)."""
        return self.proj(frames).flatten(2).transpose(1, 2)


def check_num_frames(tower: str, frames: int, num_frames: int) -> None:
    """A tower with a fixed temporal embedding refuses another frame count, naming the fix."""
    if frames != num_frames:
        raise ValueError(f"this {tower} was built for num_frames={num_frames} but got {frames} frames; build it "
                         "with create_model(..., num_frames=T) (load_released_state_dict resizes the temporal "
                         "embedding)")


class RMSNorm(nn.Module):
    """RMSNorm with the fused add-norm semantics of the Mamba fork's Triton kernel, in pure PyTorch.

    ``forward(x, residual, prenorm=True, residual_in_fp32=True)`` computes ``r = x + residual`` in fp32, returns the
    normalised ``r`` in ``x``'s dtype and ``r`` itself (kept in fp32 when ``residual_in_fp32``).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, prenorm: bool = False,
                residual_in_fp32: bool = False):
        r = x.float() if residual is None else x.float() + residual.float()
        y = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        y = y.to(x.dtype)
        if not prenorm:
            return y
        return y, (r if residual_in_fp32 else r.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm's ``trunc_normal_`` distribution (bounds at +-2 absolute, i.e. practically untruncated for small std).

    Not timm's draws: torch 2.14's ``nn.init.trunc_normal_`` samples by rejection, timm's by the inverse CDF, so
    under one seed the values differ (measured max |diff| 0.19 on a (768, 3072) std-0.02 draw); kept so that seeded
    inits do not change.
    """
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0, b=2.0)


def lecun_normal_(tensor: torch.Tensor) -> torch.Tensor:
    """timm's ``lecun_normal_`` distribution (+-2 std, std corrected for the truncation); other draws, as above."""
    fan_in = tensor[0].numel()
    std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978  # truncation correction as in timm's variance scaling
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)
