"""Divided space-time tower (TimeSformer / Frozen-in-Time) with a pluggable temporal mixer.

``temporal_mixer="attention"`` is the released TimeSformer (``timeattn`` + ``temporal_embed``);
``temporal_mixer="mamba"`` is TimeMamba (``time_mamba``, a bidirectional Mamba over each location's T frames, and
no temporal embedding). Tokens are ``[cls] + patches`` in patch-major, time-minor order (``b (n t) d``).

Per block, with patches ``x_p`` and the global cls ``c``:
  time_out = tanh(alpha_timeattn) * mixer(norm3(x_p)) along T (cls excluded); time_res = x_p + time_out
  space_out = attn(norm1([c; time_res])) per frame; the T cls outputs are averaged
  timesformer-div: x = [c; time_res] + [cls_out; space_out]                  (no drop-path, as the reference)
  frozen-in-time:  x = [c; x_p] + drop_path([cls_out; space_out])            (TimeMamba: no drop-path, as the reference)
  x = x + drop_path(mlp(norm2(x)))

The reference builders never pass ``drop_path_rate`` to these towers, so the released models train without
stochastic depth; here the rate is honoured when given (linear schedule over depth, as the reference constructor).
``--drop-path-scope reference`` (the zoo recipes) builds these towers with rate 0 whatever ``--drop-path-rate`` says
(:func:`lavila.models.registry.effective_drop_path_rate`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from lavila.models.layers import Attention, DropPath, Mlp, PatchEmbed, trunc_normal_

ATTENTION_STYLES = ("timesformer-div", "frozen-in-time")
TEMPORAL_MIXERS = ("attention", "mamba")


def _build_mamba_mixer(dim: int) -> nn.Module:
    from lavila.models.mamba import BiMambaMixer  # lazy: keeps the attention-only towers import-light

    return BiMambaMixer(dim, d_state=16, d_conv=4, expand=1, if_divide_out=False)


class SpaceTimeBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 attention_style: str = "timesformer-div", temporal_mixer: str = "attention") -> None:
        super().__init__()
        if attention_style not in ATTENTION_STYLES:
            raise ValueError(f"unknown attention_style {attention_style!r}; valid: {ATTENTION_STYLES}")
        if temporal_mixer not in TEMPORAL_MIXERS:
            raise ValueError(f"unknown temporal_mixer {temporal_mixer!r}; valid: {TEMPORAL_MIXERS}")
        self.attention_style = attention_style
        self.temporal_mixer = temporal_mixer
        self.alpha_timeattn = nn.Parameter(torch.zeros([]))  # tanh gate: 0 -> the block starts as an image block
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        if temporal_mixer == "attention":
            self.timeattn = Attention(dim, num_heads)
        else:
            self.time_mamba = _build_mamba_mixer(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path)
        # TimeMamba's frozen-in-time sum has no drop-path in the reference; TimeSformer's has.
        self.drop_path_space = self.drop_path if temporal_mixer == "attention" else nn.Identity()

    def _temporal(self, x: torch.Tensor) -> torch.Tensor:
        mixer = self.timeattn if self.temporal_mixer == "attention" else self.time_mamba
        return mixer(x)

    def forward(self, x: torch.Tensor, num_patches: int, num_frames: int) -> torch.Tensor:
        b, _, d = x.shape
        n, t = num_patches, num_frames
        cls, x_p = x[:, :1], x[:, 1:]

        time_out = self._temporal(self.norm3(x_p.reshape(b * n, t, d))).reshape(b, n * t, d)
        time_out = torch.tanh(self.alpha_timeattn).to(time_out.dtype) * time_out
        time_res = x_p + time_out

        frames = time_res.reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)
        frames = torch.cat([cls.expand(b, t, d).reshape(b * t, 1, d), frames], dim=1)
        space = self.attn(self.norm1(frames))
        space_cls = space[:, 0].reshape(b, t, d).mean(1, keepdim=True)
        space_p = space[:, 1:].reshape(b, t, n, d).transpose(1, 2).reshape(b, n * t, d)
        space_out = torch.cat([space_cls, space_p], dim=1)

        if self.attention_style == "timesformer-div":
            x = torch.cat([cls, time_res], dim=1) + space_out
        else:
            x = x + self.drop_path_space(space_out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SpaceTimeTransformer(nn.Module):
    """``forward(video (B, 3, T, H, W)) -> (B, output_dim)`` (or ``(B, D)`` when ``image_projection`` is None).

    A clip whose frame count differs from ``num_frames`` uses a nearest-resized temporal embedding, and a different
    spatial grid a nearest-resized position embedding, as the reference does at inference.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, num_frames: int = 4,
                 attention_style: str = "timesformer-div", temporal_mixer: str = "attention",
                 output_dim: int | None = 256, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_frames = num_frames
        self.temporal_mixer = temporal_mixer
        self.patches_per_frame = (img_size // patch_size) ** 2
        self.grad_checkpointing = False

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, embed_dim))
        if temporal_mixer == "attention":
            self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.image_projection = nn.Parameter(embed_dim ** -0.5 * torch.randn(embed_dim, output_dim)) \
            if output_dim else None
        self.patch_embed = PatchEmbed(patch_size, embed_dim, bias=False)
        self.ln_pre = nn.LayerNorm(embed_dim, eps=1e-5)  # the reference's ln_pre keeps PyTorch's default eps
        rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0]  # torch.linspace
        self.blocks = nn.ModuleList([
            SpaceTimeBlock(embed_dim, num_heads, mlp_ratio, rates[i], attention_style, temporal_mixer)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if num_frames == 1:  # the reference re-initialises Linear layers only for image models
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _pos_embed_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if grid_h * grid_w == self.patches_per_frame:
            return self.pos_embed
        side = int(round(self.patches_per_frame ** 0.5))
        grid = self.pos_embed[0, 1:].T.reshape(1, self.embed_dim, side, side)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="nearest").flatten(2).transpose(1, 2)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video (B, 3, T, H, W), got {tuple(video.shape)}")
        b, _, t, h, w = video.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        n = gh * gw
        x = self.patch_embed(video.transpose(1, 2).reshape(b * t, 3, h, w))  # (B*T, N, D)
        pos = self._pos_embed_for(gh, gw).to(x.dtype)
        cls = (self.cls_token.to(x.dtype) + pos[:, :1]).expand(b, 1, -1)
        x = (x + pos[:, 1:]).reshape(b, t, n, self.embed_dim)
        if self.temporal_mixer == "attention":
            temporal = self.temporal_embed
            if t != temporal.shape[1]:
                temporal = F.interpolate(temporal.transpose(1, 2), size=t, mode="nearest").transpose(1, 2)
            x = x + temporal.to(x.dtype)[:, :, None, :]
        x = x.transpose(1, 2).reshape(b, n * t, self.embed_dim)  # patch-major, time-minor
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(block, x, n, t, use_reentrant=False)
            else:
                x = block(x, n, t)
        return self.norm(x)[:, 0]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(video)
        if self.image_projection is not None:
            x = x @ self.image_projection.to(x.dtype)
        return x
