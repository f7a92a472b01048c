"""A dual encoder whose video and text embeddings agree by construction: the plumbing check of the evaluation code.

Texts and videos embed as normalised multi-hot vectors over named concepts. A text is taught its concepts (by its
tokens), a video is shown its concepts (by a hash of its frames). A model that agrees with the ground truth then
scores 1.0 on a benchmark unless rows, columns, labels or views get mixed up on the way.
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable

import torch
from torch import nn

from lavila.data.tokenizer import tokenize


def frames_key(frames: torch.Tensor) -> str:
    return hashlib.sha1(frames.contiguous().numpy().tobytes()).hexdigest()


class AgreeingModel(nn.Module):
    """``texts``: taught their own text as concept. ``norms`` scales a video's un-normalised embedding (``visual``,
    for EgoMCQ's dot products)."""

    def __init__(self, texts: Iterable[str] = (), num_frames: int = 2) -> None:
        super().__init__()
        self.concepts: dict[Hashable, int] = {}
        self.text_concepts: dict[tuple, set[int]] = {}
        self.videos: dict[str, set[int]] = {}
        self.norms: dict[str, float] = {}
        self.num_frames = num_frames
        for text in texts:
            self.teach(text, [text])

    @property
    def config(self) -> dict:
        return {"name": "agreeing", "project_embed_dim": max(1, len(self.concepts)), "context_length": 77}

    def _ids(self, concepts: Iterable[Hashable]) -> set[int]:
        return {self.concepts.setdefault(c, len(self.concepts)) for c in concepts}

    def teach(self, text: str, concepts: Iterable[Hashable]) -> None:
        self.text_concepts.setdefault(tuple(tokenize(text).tolist()), set()).update(self._ids(concepts))

    def show(self, frames: torch.Tensor, concepts: Iterable[Hashable], norm: float = 1.0) -> None:
        key = frames_key(frames)
        self.videos.setdefault(key, set()).update(self._ids(concepts))
        self.norms[key] = norm

    def _vector(self, ids: set[int]) -> torch.Tensor:
        v = torch.zeros(len(self.concepts))
        v[sorted(ids)] = 1.0
        return v

    def visual(self, frames: torch.Tensor) -> torch.Tensor:
        keys = [frames_key(f) for f in frames]
        return torch.stack([self._vector(self.videos[k]) * self.norms[k] for k in keys])

    def textual(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._vector(self.text_concepts[tuple(t.tolist())]) for t in tokens])

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.visual(frames), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.textual(tokens), dim=-1)
