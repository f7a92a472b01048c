"""The dual encoder (``CLIP``) and the action classifier (``VideoClassifier``) over a visual tower."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CLIP(nn.Module):
    """Video-text dual encoder. Both projections live inside the towers (``visual.image_projection``,
    ``textual.text_projection``), so the wrapper holds only ``logit_scale`` = log(1/0.07), frozen by default."""

    def __init__(self, visual: nn.Module, textual: nn.Module, freeze_temperature: bool = True,
                 init_temperature: float = 0.07) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.logit_scale.requires_grad_(not freeze_temperature)
        self.visual = visual
        self.textual = textual

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> L2-normalised (B, project_embed_dim)."""
        return F.normalize(self.visual(video), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> L2-normalised (B, project_embed_dim)."""
        return F.normalize(self.textual(tokens), dim=-1)

    def forward(self, video: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_embed": self.encode_video(video), "text_embed": self.encode_text(tokens),
                "logit_scale": self.logit_scale.exp()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.textual.set_grad_checkpointing(enable)


class VideoClassifier(nn.Module):
    """Visual tower without its projection -> Dropout -> ``fc_cls`` (N(0, 0.01) weights, zero bias)."""

    def __init__(self, visual: nn.Module, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        visual.image_projection = None  # the released CLS files carry no visual.image_projection
        self.visual = visual
        self.dropout = nn.Dropout(dropout)
        width = getattr(visual, "embed_dim", None) or visual.width
        self.fc_cls = nn.Linear(width, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    @classmethod
    def from_clip(cls, model: CLIP, num_classes: int, dropout: float = 0.5) -> VideoClassifier:
        """Wrap a (pretrained) CLIP's visual tower; the text tower and the projection are discarded."""
        classifier = cls(model.visual, num_classes, dropout)
        if hasattr(model, "config"):
            classifier.config = {**model.config, "num_classes": num_classes, "dropout_rate": dropout}
        if hasattr(model, "num_frames"):
            classifier.num_frames = model.num_frames
        return classifier

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.dropout(self.visual(video)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
