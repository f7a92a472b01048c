"""EgoMCQ (EgoVLP's multiple-choice benchmark on Ego4D) in its ``egomcq.json`` format.

The file is a dict keyed "0".."N-1"; each question::

    {"answer": 3, "types": 1 | 2,                       # 1 = inter-video, 2 = intra-video
     "query": {"clip_text": "#C C picks up the cup", "video_uid": ..., "clip_start": ..., "clip_end": ..., ...},
     "choices": {"0": {"video_uid": ..., "clip_start": 12.3, "clip_end": 13.3, "clip_text": ..., ...}, ... "4"}}

(``tag_verb`` / ``tag_noun`` and other EgoVLP fields are ignored.) Candidate clips are read from the Ego4D videos with
the project's Ego4D clip loader (chunked ``<root>/<video_uid>/`` folders, :meth:`ClipDataset.load_video_clip`),
``num_frames`` frames over [clip_start, clip_end].

Items: ``(query tokens (context_length,), candidate frames (K, 3, T, S, S), answer, type)``.
"""
from __future__ import annotations

import json
import os

import torch

from lavila.data.clips import ClipDataset
from lavila.data.tokenizer import tokenize

__all__ = ["load_questions", "EgoMCQDataset"]

_CHOICE_KEYS = ("video_uid", "clip_start", "clip_end")


def load_questions(path: str | os.PathLike) -> list[dict]:
    """The questions of ``egomcq.json`` in key order "0", "1", ... (structure checked)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EgoMCQ file {path} not found (egomcq.json from EgoVLP)")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty dict keyed '0'..'N-1', got {type(data).__name__}")
    questions = []
    for i in range(len(data)):
        q = data.get(str(i))
        where = f"{path}: question {i}"
        if not isinstance(q, dict):
            raise ValueError(f"{where} is missing (keys must run '0'..'{len(data) - 1}')")
        for key in ("answer", "types", "query", "choices"):
            if key not in q:
                raise ValueError(f"{where} lacks '{key}'")
        if "clip_text" not in q["query"]:
            raise ValueError(f"{where}: query lacks 'clip_text'")
        choices = q["choices"]
        if not isinstance(choices, dict) or not choices:
            raise ValueError(f"{where}: choices must be a dict keyed '0'..'K-1'")
        for j in range(len(choices)):
            c = choices.get(str(j))
            if not isinstance(c, dict) or any(k not in c for k in _CHOICE_KEYS):
                raise ValueError(f"{where}: choice {j} must have {list(_CHOICE_KEYS)}")
        if not 0 <= int(q["answer"]) < len(choices):
            raise ValueError(f"{where}: answer {q['answer']} is not a choice index")
        if int(q["types"]) not in (1, 2):
            raise ValueError(f"{where}: types {q['types']} must be 1 (inter-video) or 2 (intra-video)")
        questions.append(q)
    return questions


class EgoMCQDataset(ClipDataset):
    """EgoMCQ questions; evaluation only (raises on unreadable clips, naming the file)."""

    def __init__(self, root: str | os.PathLike, metadata: str | os.PathLike, num_frames: int = 4,
                 chunk_len: float = 15.0, crop_size: int = 224, norm: str = "openai", context_length: int = 77,
                 backend: str = "auto", output: str = "float") -> None:
        super().__init__(root, num_frames, chunk_len, crop_size, False, norm, context_length, backend, output,
                         "raise")
        self.questions = load_questions(metadata)
        self.answers = [int(q["answer"]) for q in self.questions]
        self.types = [int(q["types"]) for q in self.questions]

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        q = self.questions[index]
        clips = []
        for j in range(len(q["choices"])):
            c = q["choices"][str(j)]
            start, end = max(float(c["clip_start"]), 0.0), max(float(c["clip_end"]), 0.0)
            try:
                clips.append(self.load_video_clip(str(c["video_uid"]), start, end))
            except Exception as exc:  # noqa: BLE001 - raises VideoDecodeError naming the file
                self.failed(os.path.join(self.root, str(c["video_uid"])), exc)
        query = tokenize(str(q["query"]["clip_text"]), self.context_length)
        return query, torch.stack(clips), int(q["answer"]), int(q["types"])
