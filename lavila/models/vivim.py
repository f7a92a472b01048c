"""ViViM: a video Vision-Mamba over all space-time tokens.

Each frame gets its own copy of the cls token inserted in the middle of its patch tokens (index grid^2 // 2), plus
``pos_embed``; ``temporal_embedding [T, 1, D]`` is added per frame and the frames are concatenated frame-major into
one sequence of (grid^2 + 1) * T tokens. 24 layers of bidirectional Mamba ("v2", directions averaged) in the
prenorm "add -> RMSNorm -> mixer" form with the residual stream kept in fp32; the output is the mean over frames of
the final-normed cls positions, times ``image_projection``.
"""
from __future__ import annotations

import math

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from lavila.models.layers import DropPath, PatchEmbed, RMSNorm, check_num_frames, lecun_normal_, trunc_normal_


def _build_mixer(dim: int, d_state: int, layer_idx: int) -> nn.Module:
    from lavila.models.mamba import BiMambaMixer  # lazy: the mixer pulls in the scan implementation

    return BiMambaMixer(dim, d_state=d_state, d_conv=4, expand=2, if_divide_out=True, layer_idx=layer_idx)


class MambaLayer(nn.Module):
    """``(hidden, residual) -> (mixer(norm(residual')), residual')`` with ``residual' = residual + drop_path(hidden)``
    (or ``hidden`` for the first layer), the add and the norm fused as the Triton kernel does (fp32 residual)."""

    def __init__(self, dim: int, d_state: int, layer_idx: int, drop_path: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.mixer = _build_mixer(dim, d_state, layer_idx)
        self.norm = RMSNorm(dim, eps=eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            hidden = self.drop_path(hidden)
        hidden, residual = self.norm(hidden, residual, prenorm=True, residual_in_fp32=True)
        return self.mixer(hidden), residual


class ViViM(nn.Module):
    """``forward(video (B, 3, T, H, W)) -> (B, output_dim)`` (or ``(B, D)`` when ``image_projection`` is None)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 192, depth: int = 24,
                 num_frames: int = 16, d_state: int = 16, output_dim: int | None = 256,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_frames = num_frames
        self.patches_per_frame = (img_size // patch_size) ** 2
        self.cls_position = self.patches_per_frame // 2
        self.grad_checkpointing = False

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, embed_dim))
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, 1, embed_dim))
        self.image_projection = nn.Parameter(embed_dim ** -0.5 * torch.randn(embed_dim, output_dim)) \
            if output_dim else None
        self.patch_embed = PatchEmbed(patch_size, embed_dim, bias=True)
        # As the reference: layers 0 and 1 get no stochastic depth, layer i >= 1 gets rate * (i - 1) / (depth - 1).
        rates = [0.0] + [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.layers = nn.ModuleList(
            [MambaLayer(embed_dim, d_state, i, rates[i], norm_eps) for i in range(depth)])
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path_rate)
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for name, module in self.layers.named_modules():
            # Zero Linear biases except the dt projections (the reference also zeroes dt_proj_b's; we keep its init).
            keep_bias = name.endswith(("dt_proj", "dt_proj_b"))
            if isinstance(module, nn.Linear) and module.bias is not None and not keep_bias:
                nn.init.zeros_(module.bias)
            if name.endswith("out_proj"):  # prenorm residual rescaling of the Mamba init
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                with torch.no_grad():
                    module.weight /= math.sqrt(depth)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video (B, 3, T, H, W), got {tuple(video.shape)}")
        b, _, t, h, w = video.shape
        check_num_frames("ViViM", t, self.num_frames)
        if h != self.img_size or w != self.img_size:
            raise ValueError(f"expected {self.img_size}x{self.img_size} frames, got {h}x{w}")
        x = self.patch_embed(video.transpose(1, 2).reshape(b * t, 3, h, w))  # (B*T, N, D)
        m = self.cls_position
        cls = self.cls_token.to(x.dtype).expand(b * t, 1, -1)
        x = torch.cat([x[:, :m], cls, x[:, m:]], dim=1) + self.pos_embed.to(x.dtype)
        x = (x.reshape(b, t, -1, self.embed_dim) + self.temporal_embedding.to(x.dtype)).reshape(b, -1, self.embed_dim)

        hidden, residual = x, None
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                if residual is None:
                    hidden, residual = torch_checkpoint.checkpoint(layer, hidden, None, use_reentrant=False)
                else:
                    hidden, residual = torch_checkpoint.checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
        hidden = self.norm_f(self.drop_path(hidden), residual, prenorm=False)
        tokens_per_frame = self.patches_per_frame + 1
        return hidden.reshape(b, t, tokens_per_frame, self.embed_dim)[:, :, m].mean(dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(video)
        if self.image_projection is not None:
            x = x @ self.image_projection.to(x.dtype)
        return x
