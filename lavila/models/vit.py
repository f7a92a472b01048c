"""Joint space-time ViT: one attention over ``[cls] + T x grid^2`` tokens (frame-major)."""
from __future__ import annotations

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from lavila.models.layers import Attention, DropPath, Mlp, check_num_frames, trunc_normal_


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln_1(x)))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class VisionTransformerLayers(nn.Module):
    """Holds ``resblocks`` so state-dict names read ``transformer.resblocks.{i}.*``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, drop_path) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class PatchDropout(nn.Module):
    """Training-time random subset of the patch tokens (https://arxiv.org/abs/2212.00794), as the reference ViT:
    each sample keeps ``max(1, int(N * (1 - prob)))`` of its N patch tokens; the class token is always kept."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"patch dropout must be in [0, 1), got {prob} (--patch-dropout)")
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, N, W) patch tokens without the class token."""
        if not self.training or self.prob == 0.0:
            return x
        b, n, _ = x.shape
        keep = max(1, int(n * (1.0 - self.prob)))
        index = torch.randn(b, n, device=x.device).topk(keep, dim=-1).indices
        return x[torch.arange(b, device=x.device)[:, None], index]


class VisionTransformer(nn.Module):
    """``forward(video (B, 3, T, H, W)) -> (B, output_dim)`` (or ``(B, width)`` when ``image_projection`` is None).

    The patch embedding ``conv1`` is a bias-free ``Linear(3*p*p, W)`` on patches flattened in (channel, row, col)
    order when ``fast_conv1`` (as in the released ViT-T/S files), else the equivalent ``Conv2d``. Stochastic depth
    uses one constant rate for every block, as the reference. ``patch_dropout`` drops that fraction of the patch
    tokens of each training clip after the position embeddings are added (:class:`PatchDropout`).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, num_frames: int = 1, output_dim: int | None = 256,
                 drop_path_rate: float = 0.0, fast_conv1: bool = True, patch_dropout: float = 0.0) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.width = width
        self.num_frames = num_frames
        self.fast_conv1 = fast_conv1
        self.grid = img_size // patch_size
        self.patches_per_frame = self.grid ** 2
        if fast_conv1:
            self.conv1 = nn.Linear(3 * patch_size ** 2, width, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(self.patches_per_frame + 1, width))
        if num_frames > 1:
            self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, width))
        self.patch_dropout = PatchDropout(patch_dropout)
        self.ln_pre = nn.LayerNorm(width, eps=1e-6)
        self.transformer = VisionTransformerLayers(width, layers, heads, mlp_ratio, drop_path_rate)
        self.ln_post = nn.LayerNorm(width, eps=1e-6)
        self.image_projection = nn.Parameter(torch.zeros(width, output_dim)) if output_dim else None
        self.init_parameters()

    def init_parameters(self) -> None:
        nn.init.normal_(self.class_embedding, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.02)
        for module in self.transformer.modules():
            if isinstance(module, nn.Linear):  # LayerNorms keep ones/zeros (the reference re-inits them too)
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if self.image_projection is not None:
            nn.init.normal_(self.image_projection, std=self.width ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def _embed_patches(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, T*grid^2, W), frame-major."""
        b, c, t, h, w = video.shape
        p = self.patch_size
        if self.fast_conv1:
            x = video.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 1, 4, 6)
            return self.conv1(x.reshape(b, t * (h // p) * (w // p), c * p * p))
        x = self.conv1(video.transpose(1, 2).reshape(b * t, c, h, w))
        return x.flatten(2).transpose(1, 2).reshape(b, -1, self.width)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim == 4:  # a batch of images
            video = video.unsqueeze(2)
        b, c, t, h, w = video.shape
        check_num_frames("ViT", t, self.num_frames)
        if c != 3 or h != self.img_size or w != self.img_size:
            raise ValueError(f"expected video (B, 3, T, {self.img_size}, {self.img_size}), got {tuple(video.shape)}")
        x = self._embed_patches(video)
        pos = self.positional_embedding[1:]
        if t > 1:
            pos = pos.repeat(t, 1) + self.temporal_embedding.repeat_interleave(self.patches_per_frame, 0)
        x = self.patch_dropout(x + pos.to(x.dtype))
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0])

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(video)
        if self.image_projection is not None:
            x = x @ self.image_projection.to(x.dtype)
        return x
