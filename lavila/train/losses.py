"""Training losses: CLIP InfoNCE over the global batch, max-margin ranking for EK100 MIR, soft-target CE for CLS."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavila.utils.distributed import all_gather, all_gather_with_grad, get_rank, get_world_size


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the global batch.

    Embeddings are all-gathered with gradients, so every rank computes the same N x N logits (N = global batch) and
    the result equals one process holding the whole batch. ``local_loss`` uses only this rank's rows against all
    columns (open_clip's option; same gradients in expectation, less compute).
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    def forward(self, image_embed: torch.Tensor, text_embed: torch.Tensor,
                logit_scale: torch.Tensor | float) -> dict[str, torch.Tensor]:
        world, rank, batch = get_world_size(), get_rank(), image_embed.shape[0]
        if world > 1 and not self.gather_with_grad:
            # gradients only through the local slice (open_clip's gather_with_grad=False)
            all_img, all_txt = all_gather(image_embed).clone(), all_gather(text_embed).clone()
            all_img[rank * batch:(rank + 1) * batch] = image_embed
            all_txt[rank * batch:(rank + 1) * batch] = text_embed
        else:
            all_img, all_txt = all_gather_with_grad(image_embed), all_gather_with_grad(text_embed)
        if self.local_loss and world > 1:
            logits_img = logit_scale * image_embed @ all_txt.t()
            logits_txt = logit_scale * text_embed @ all_img.t()
            labels = torch.arange(batch, device=image_embed.device) + rank * batch
        else:
            logits_img = logit_scale * all_img @ all_txt.t()
            logits_txt = logits_img.t()
            labels = torch.arange(all_img.shape[0], device=image_embed.device)
        loss = 0.5 * (F.cross_entropy(logits_img, labels) + F.cross_entropy(logits_txt, labels))
        with torch.no_grad():
            acc = 100.0 * (logits_img.argmax(-1) == labels).float().mean()
        return {"loss": loss, "clip_acc": acc}


class MaxMarginRankingLoss(nn.Module):
    """Bidirectional max-margin ranking loss over the gathered cosine-similarity matrix (margin 0.2).

    For every off-diagonal pair (i, j) it takes ``relu(m_i - (S_ii - S_ij))`` (text i against video j) and
    ``relu(m_i - (S_ii - S_ji))`` (video i against text j) and averages the 2N(N-1) terms.
    With ``use_relevancy`` (default) the margin of row i is scaled by the relevancy of its positive pair,
    ``m_i = margin * w_i`` (the adaptive margin of the EK100 MIR baselines): a caption that only partially describes the
    clip need not beat the negatives by the full margin. ``use_relevancy=False`` is the reference behaviour, which
    ignores the weights.
    """

    def __init__(self, margin: float = 0.2, use_relevancy: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.use_relevancy = use_relevancy

    def forward(self, image_embed: torch.Tensor, text_embed: torch.Tensor,
                weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        image = F.normalize(all_gather_with_grad(image_embed), dim=-1, eps=1e-8)
        text = F.normalize(all_gather_with_grad(text_embed), dim=-1, eps=1e-8)
        sim = text @ image.t()  # rows: texts, columns: videos
        n = sim.shape[0]
        margin = torch.full((n,), self.margin, device=sim.device, dtype=sim.dtype)
        if self.use_relevancy:
            if weight is None:
                raise ValueError("MaxMarginRankingLoss(use_relevancy=True) needs the relevancy weights of the batch")
            margin = self.margin * all_gather(weight.to(sim.dtype).reshape(-1).contiguous()).to(sim.device)
        pos = sim.diag().unsqueeze(1)  # (n, 1)
        off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        rows = F.relu(margin.unsqueeze(1) - (pos - sim))[off]
        cols = F.relu(margin.unsqueeze(1) - (pos - sim.t()))[off]
        loss = torch.cat([rows, cols]).mean() if n > 1 else sim.sum() * 0.0
        return {"loss": loss, "max_margin_loss": loss.detach()}


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k target_k log softmax(logits)_k`` (targets from mixup/cutmix)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class ClassificationLoss(nn.Module):
    """Soft-target CE when targets are distributions (mixup), else CE with label smoothing."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:
            return soft_target_cross_entropy(logits, target)
        return F.cross_entropy(logits.float(), target, label_smoothing=self.smoothing)
