"""CLIP text tower: token + learned position embeddings, pre-norm transformer with a causal mask, EOT pooling."""
from __future__ import annotations

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from lavila.models.layers import MultiheadSelfAttention, text_mlp


class TextResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = text_mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))


class TextTransformerLayers(nn.Module):
    """Holds ``resblocks`` so state-dict names read ``transformer.resblocks.{i}.*``."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList([TextResidualBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        return x


class TextTransformer(nn.Module):
    """``forward(tokens (B, L<=context_length) long) -> (B, output_dim)``: the feature at the EOT token
    (the largest id in each row) after ``ln_final``, times ``text_projection``."""

    def __init__(self, context_length: int = 77, vocab_size: int = 49408, width: int = 512, heads: int = 8,
                 layers: int = 12, output_dim: int | None = 256, causal_mask: bool = True) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"text_width {width} is not divisible by text_heads {heads}")
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.output_dim = output_dim
        self.causal_mask = causal_mask
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = TextTransformerLayers(width, layers, heads)
        self.ln_final = nn.LayerNorm(width, eps=1e-5)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim)) if output_dim else None
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.init_parameters()

    def init_parameters(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = self.width ** -0.5 * (2 * self.transformer.layers) ** -0.5
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        if self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=self.width ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled EOT feature before ``text_projection``: (B, width)."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"text tower expects (B, L) integer token ids, got {tuple(tokens.shape)} {tokens.dtype}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"token sequences of length {length} exceed context_length {self.context_length}; "
                             "tokenize with the model's context length")
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        mask = self.attn_mask[:length, :length] if self.causal_mask else None
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(tokens)
        if self.text_projection is not None:
            x = x @ self.text_projection.to(x.dtype)
        return x
