"""EgoSchema zero-shot question answering data.

Questions JSON: a list of ``{"q_uid", "question", "option 0" .. "option 4", ...}``; videos ``root/<q_uid>.mp4``,
``num_frames`` frames sampled uniformly over the whole video. The five texts are the reference's prompts
``Is it '<option lower-cased>'`` (the question itself is not used). Answers JSON (local scoring):
``{q_uid: answer index}``.

The questions are held flat (``q_uid`` and the five options as UTF-8 buffers, ``lavila.data.metadata.TextTable``);
``questions`` re-reads the JSON on first access and ``q_uids`` decodes the ids (main-process uses).

Example::

    from lavila.data.egoschema import EgoSchemaDataset
    ds = EgoSchemaDataset("egoschema/videos", "egoschema/questions.json", num_frames=16)
    frames, option_tokens, index = ds[0]     # (3, 16, 224, 224), (5, 77), int
"""
from __future__ import annotations

import json
import os

import torch

from lavila.data.annotations import load_json
from lavila.data.clips import ClipDataset
from lavila.data.metadata import TextTable
from lavila.data.tokenizer import tokenize
from lavila.data.video import VideoDecodeError

__all__ = ["load_questions", "load_answers", "option_prompts", "EgoSchemaDataset"]


def load_questions(path: str | os.PathLike) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EgoSchema questions file {path} not found (check --val-metadata)")
    questions = load_json(path)
    if isinstance(questions, dict):
        questions = list(questions.values())
    for i, q in enumerate(questions):
        missing = [k for k in ["q_uid"] + [f"option {j}" for j in range(5)] if k not in q]
        if missing:
            raise ValueError(f"{path}: question {i} lacks {missing}")
    return questions


def load_answers(path: str | os.PathLike) -> dict[str, int]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EgoSchema answers file {path} not found")
    with open(path) as f:
        return {str(k): int(v) for k, v in json.load(f).items()}


def option_prompts(question: dict) -> list[str]:
    return [f"Is it '{str(question[f'option {j}']).lower()}'" for j in range(5)]


class EgoSchemaDataset(ClipDataset):
    """``(frames (3, T, S, S), option tokens (5, context_length), index)``; evaluation only (raises on bad files)."""

    def __init__(self, root: str | os.PathLike, questions: str | os.PathLike, num_frames: int = 16,
                 crop_size: int = 224, norm: str = "openai", context_length: int = 77, backend: str = "auto",
                 output: str = "float", fused_resize: bool = False) -> None:
        super().__init__(root, num_frames, -1, crop_size, False, norm, context_length, backend, output, "raise",
                         fused_resize=fused_resize)
        self.questions_path = str(questions)
        loaded = load_questions(questions)
        self._uids = TextTable.from_strings([str(q["q_uid"]) for q in loaded])
        self._options = TextTable.from_strings([str(q[f"option {j}"]) for q in loaded for j in range(5)])
        self._questions: list[dict] | None = None

    @property
    def questions(self) -> list[dict]:
        if self._questions is None:
            self._questions = load_questions(self.questions_path)
        return self._questions

    @property
    def q_uids(self) -> list[str]:
        return self._uids.tolist()

    def __len__(self) -> int:
        return len(self._uids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        q_uid = self._uids[index]
        path = os.path.join(self.root, f"{q_uid}.mp4")
        try:
            frames = self.load_video_file(path)
        except VideoDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
        options = {f"option {j}": self._options[5 * index + j] for j in range(5)}
        return frames, tokenize(option_prompts(options), self.context_length), index
