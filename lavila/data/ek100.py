"""EPIC-KITCHENS-100 datasets on the official annotation files: multi-instance retrieval (MIR) and action
classification (CLS), plus the class texts of zero-shot classification.

CSV columns (``EPIC_100_{train,validation}.csv``, ``EPIC_100_retrieval_{train,test}.csv``): narration_id,
participant_id, video_id, narration_timestamp, start_timestamp, stop_timestamp, start_frame, stop_frame, narration,
verb, verb_class, noun, noun_class, all_nouns, all_noun_classes. Timestamps ``HH:MM:SS.ff`` are converted to seconds;
frames are located with the fps read from the video files.

* MIR: the ``<stem>_sentence.csv`` beside the CSV and the relevancy pickle
  ``<csv dir>/relevancy/caption_relevancy_<stem>.pkl`` (rows = clips, columns = sentences; rebuilt from the CSVs
  when absent). Training picks a caption with relevancy > 0.1 at random and returns ``(frames, tokens, relevancy)``;
  clips with no such caption are dropped when the index is built (``num_without_positive``). Evaluation returns
  ``(frames, tokens of the clip's own narration)``.
* CLS: ``(frames, action id)``; the action vocabulary is every ``"verb_class:noun_class"`` of the train + validation
  CSVs **sorted as strings** (the released classifier rows follow this order: "10:..." before "2:..."), saved /
  loaded as JSON so evaluation does not need the train CSV.

Items read flat arrays (``EK100Clips``: video ids as an index into the unique ids, times as float64, narrations as
one UTF-8 buffer; ``lavila.data.metadata``), built from the CSVs before the DataLoader forks, so workers share
them instead of copying Python objects. The ``clips`` / ``sentences`` DataFrames are read again on first access
(for the main process's own uses: relevancy, sentence columns) and not held otherwise.

Example::

    from lavila.data.ek100 import EK100MIRDataset, ActionVocabulary, EK100CLSDataset
    test = EK100MIRDataset("videos", "retrieval_annotations/EPIC_100_retrieval_test.csv", is_training=False)
    vocab = ActionVocabulary.from_csvs(["EPIC_100_train.csv", "EPIC_100_validation.csv"]); vocab.save("actions.json")
    val = EK100CLSDataset("videos", "EPIC_100_validation.csv", ActionVocabulary.load("actions.json"))
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lavila.data.annotations import AnnotationError, parse_column, read_csv
from lavila.data.clips import ClipDataset
from lavila.data.metadata import TextTable, factorize_strings
from lavila.data.relevancy import default_sentence_path, resolve_relevancy, sentence_columns
from lavila.data.tokenizer import tokenize

__all__ = ["EK100_COLUMNS", "timestamp_to_seconds", "read_ek100_csv", "load_class_names", "ActionVocabulary",
           "EK100Clips", "EK100MIRDataset", "EK100CLSDataset", "zeroshot_class_texts"]

log = logging.getLogger(__name__)
EK100_COLUMNS = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                 "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                 "noun_class", "all_nouns", "all_noun_classes"]


def timestamp_to_seconds(value: str) -> float:
    """``"HH:MM:SS.ff"`` -> seconds."""
    try:
        h, m, s = str(value).split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError as exc:
        raise ValueError(f"bad EK100 timestamp {value!r}; expected HH:MM:SS.ff") from exc


def read_ek100_csv(path: str | os.PathLike, require_labels: bool = True) -> pd.DataFrame:
    """An EK100 annotation CSV with ``start_sec`` / ``stop_sec`` columns added; columns are checked."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EK100 annotation file {path} not found (check --train-metadata / --val-metadata)")
    df = read_csv(path)
    need = ["narration_id", "video_id", "start_timestamp", "stop_timestamp", "narration"]
    if require_labels:
        need += ["verb_class", "noun_class"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise AnnotationError(f"{path} lacks EK100 column(s) {missing}; found {list(df.columns)}")
    df["start_sec"] = parse_column(df, "start_timestamp", timestamp_to_seconds, path, "HH:MM:SS.ff")
    df["stop_sec"] = parse_column(df, "stop_timestamp", timestamp_to_seconds, path, "HH:MM:SS.ff")
    df["narration"] = df["narration"].astype(str)
    return df


def load_class_names(path: str | os.PathLike) -> list[str]:
    """``EPIC_100_{verb,noun}_classes.csv`` -> class keys indexed by id (97 verbs, 300 nouns)."""
    df = pd.read_csv(path)
    if not {"id", "key"} <= set(df.columns):
        raise ValueError(f"{path} lacks the id/key columns of an EK100 class file")
    names = dict(zip(df["id"].astype(int), df["key"].astype(str)))
    return [names.get(i, f"<unused {i}>") for i in range(max(names) + 1)]


class ActionVocabulary:
    """Action ids of ``"verb:noun"`` strings sorted as strings, with the verb / noun of every action."""

    def __init__(self, actions: Sequence[str]) -> None:
        self.actions = list(actions)
        if self.actions != sorted(set(self.actions)):
            raise ValueError("action vocabulary must be unique 'verb:noun' strings sorted as strings")
        self.vn2act = {a: i for i, a in enumerate(self.actions)}
        split = [a.split(":") for a in self.actions]
        self.act2verb = np.array([int(v) for v, _ in split], dtype=np.int64)
        self.act2noun = np.array([int(n) for _, n in split], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.actions)

    @classmethod
    def from_frames(cls, frames: Sequence[pd.DataFrame]) -> ActionVocabulary:
        keys = {f"{int(v)}:{int(n)}" for df in frames for v, n in zip(df["verb_class"], df["noun_class"])}
        return cls(sorted(keys))

    @classmethod
    def from_csvs(cls, paths: Sequence[str | os.PathLike]) -> ActionVocabulary:
        """Build from the train + validation CSVs (the released CLS heads use 3,806 actions)."""
        return cls.from_frames([read_ek100_csv(p) for p in paths])

    def label(self, verb: int, noun: int) -> int:
        key = f"{int(verb)}:{int(noun)}"
        if key not in self.vn2act:
            raise KeyError(f"action {key} is not in the vocabulary of {len(self)} actions (built from other CSVs?)")
        return self.vn2act[key]

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"actions": self.actions}, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActionVocabulary:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"action vocabulary {path} not found; build it with "
                                    "ActionVocabulary.from_csvs([train_csv, val_csv]).save(path)")
        return cls(json.loads(Path(path).read_text())["actions"])


class EK100Clips:
    """The clips of an EK100 CSV as flat arrays: ``video_id(i)``, ``start[i]``, ``stop[i]``, ``narration(i)``."""

    def __init__(self, df: pd.DataFrame) -> None:
        codes, unique = factorize_strings(df["video_id"].astype(str).tolist())
        self.video_index, self.video_ids = codes, TextTable.from_strings(unique)
        self.start = df["start_sec"].to_numpy(dtype=np.float64)
        self.stop = df["stop_sec"].to_numpy(dtype=np.float64)
        self.narrations = TextTable.from_strings(df["narration"].astype(str).tolist())

    def __len__(self) -> int:
        return len(self.video_index)

    def video_id(self, row: int) -> str:
        return self.video_ids[int(self.video_index[row])]

    def narration(self, row: int) -> str:
        return self.narrations[row]


class _CSVFrames:
    """``clips`` (and ``sentences``) DataFrames read on first access and kept from then on."""

    @property
    def clips(self) -> pd.DataFrame:
        if self._clips_df is None:
            self._clips_df = read_ek100_csv(self.metadata, require_labels=self._require_labels)
        return self._clips_df


class EK100MIRDataset(_CSVFrames, ClipDataset):
    """EK100 multi-instance retrieval clips (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, metadata: str | os.PathLike, is_training: bool = False,
                 sentence_path: str | os.PathLike | None = None, relevancy_path: str | os.PathLike | None = None,
                 num_frames: int = 4, chunk_len: float = 15.0, crop_size: int = 224, norm: str = "openai",
                 context_length: int = 77, backend: str = "auto", output: str = "float",
                 on_error: str | None = None, positive_threshold: float = 0.1, fused_resize: bool = False) -> None:
        super().__init__(root, num_frames, chunk_len, crop_size, is_training, norm, context_length, backend, output,
                         on_error, fused_resize=fused_resize)
        self.metadata = str(metadata)
        self._require_labels = is_training
        self._clips_df: pd.DataFrame | None = read_ek100_csv(metadata, require_labels=is_training)
        sentence_path = Path(sentence_path) if sentence_path else default_sentence_path(metadata)
        if not sentence_path.is_file():
            raise FileNotFoundError(f"sentence file {sentence_path} not found (EK100 MIR needs the "
                                    "<csv stem>_sentence.csv beside the clip CSV, or pass sentence_path)")
        self.sentence_path = sentence_path
        self._sentences_df: pd.DataFrame | None = self._read_sentences()
        self.rows = np.arange(len(self._clips_df))
        self.num_without_positive = 0
        if is_training:
            self._build_positives(relevancy_path, positive_threshold)
        self.flat = EK100Clips(self._clips_df)
        self.sentence_texts = TextTable.from_strings(self._sentences_df["narration"].tolist())
        self._clips_df = self._sentences_df = None  # items read the flat arrays; the frames are re-read on demand

    def _read_sentences(self) -> pd.DataFrame:
        sentences = pd.read_csv(self.sentence_path)
        sentences["narration"] = sentences["narration"].astype(str)
        return sentences

    @property
    def sentences(self) -> pd.DataFrame:
        if self._sentences_df is None:
            self._sentences_df = self._read_sentences()
        return self._sentences_df

    def _build_positives(self, relevancy_path: str | os.PathLike | None, threshold: float) -> None:
        relevancy = resolve_relevancy(self.clips, self.sentences, self.metadata, relevancy_path)
        # Compact (CSR) table of positives: a clip keeps only captions with relevancy > threshold.
        indptr, cols, vals = [0], [], []
        for start in range(0, relevancy.shape[0], 4096):
            block = np.asarray(relevancy[start:start + 4096])
            r, c = np.nonzero(block > threshold)
            counts = np.bincount(r, minlength=block.shape[0])
            cols.append(c.astype(np.int32))
            vals.append(block[r, c].astype(np.float32))
            indptr.extend((indptr[-1] + np.cumsum(counts)).tolist())
        indptr_arr = np.asarray(indptr, dtype=np.int64)
        has_positive = np.diff(indptr_arr) > 0
        self.num_without_positive = int((~has_positive).sum())
        if self.num_without_positive:
            log.warning("%s: %d of %d clips have no caption with relevancy > %s and are left out", self.metadata,
                        self.num_without_positive, len(has_positive), threshold)
        self.rows = np.nonzero(has_positive)[0]
        self._indptr = indptr_arr
        self._pos_cols = np.concatenate(cols) if cols else np.zeros(0, np.int32)
        self._pos_vals = np.concatenate(vals) if vals else np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def sentence_clip_rows(self) -> np.ndarray:
        """For every sentence, the clip row whose narration_id is the sentence id (the column reduction of the
        zero-shot similarity matrix to N_clips x N_sentences)."""
        return sentence_columns(self.clips["narration_id"], self.sentences["narration_id"])

    def __getitem__(self, index: int):
        row = int(self.rows[index])
        vid = self.flat.video_id(row)
        try:
            frames = self.load_video_clip(vid, float(self.flat.start[row]), float(self.flat.stop[row]))
        except Exception as exc:  # noqa: BLE001 - decode failures follow the skip/raise policy
            return self.failed(os.path.join(self.root, vid), exc)
        if not self.is_training:
            return frames, tokenize(self.flat.narration(row), self.context_length)
        lo, hi = self._indptr[row], self._indptr[row + 1]
        pick = lo + int(torch.randint(hi - lo, (1,)).item())
        caption = self.sentence_texts[int(self._pos_cols[pick])]
        relevancy = torch.tensor(float(self._pos_vals[pick]), dtype=torch.float32)
        return frames, tokenize(caption, self.context_length), relevancy


class EK100CLSDataset(_CSVFrames, ClipDataset):
    """``(frames, action id)`` per clip of ``EPIC_100_{train,validation}.csv``."""

    def __init__(self, root: str | os.PathLike, metadata: str | os.PathLike,
                 vocabulary: ActionVocabulary | str | os.PathLike, is_training: bool = False, num_frames: int = 16,
                 chunk_len: float = 15.0, crop_size: int = 224, norm: str = "openai", backend: str = "auto",
                 output: str = "float", on_error: str | None = None, fused_resize: bool = False) -> None:
        super().__init__(root, num_frames, chunk_len, crop_size, is_training, norm, 77, backend, output, on_error,
                         fused_resize=fused_resize)
        self.vocab = vocabulary if isinstance(vocabulary, ActionVocabulary) else ActionVocabulary.load(vocabulary)
        self.metadata, self._require_labels = str(metadata), True
        clips = read_ek100_csv(metadata)
        keys = [f"{int(v)}:{int(n)}" for v, n in zip(clips["verb_class"], clips["noun_class"])]
        unknown = sorted({k for k in keys if k not in self.vocab.vn2act})
        if unknown:
            raise ValueError(f"{metadata}: {len(unknown)} verb:noun pairs are not in the action vocabulary "
                             f"(first: {unknown[:5]}); build the vocabulary from the train and validation CSVs")
        self.labels = np.array([self.vocab.vn2act[k] for k in keys], dtype=np.int64)
        self.flat = EK100Clips(clips)
        self._clips_df: pd.DataFrame | None = None  # re-read on demand (``clips``)

    def __len__(self) -> int:
        return len(self.flat)

    def __getitem__(self, index: int):
        vid = self.flat.video_id(index)
        try:
            frames = self.load_video_clip(vid, float(self.flat.start[index]), float(self.flat.stop[index]))
        except Exception as exc:  # noqa: BLE001
            return self.failed(os.path.join(self.root, vid), exc)
        return frames, int(self.labels[index])


def zeroshot_class_texts(vocabulary: ActionVocabulary, frames: Sequence[pd.DataFrame],
                         verb_names: Sequence[str] | None = None, noun_names: Sequence[str] | None = None,
                         templates: Sequence[str] = ("{}",)) -> list[list[str]]:
    """Texts of every action for zero-shot classification (LaViLa's prompt ensembling): each distinct narration
    ever given to the action in ``frames`` (train / validation CSVs), formatted with each template (LaViLa's
    ``--cls-use-template`` uses ``("#C C {}", "#C {}")``). An action with no narration in the given CSVs falls back
    to ``"<verb key> <noun key>"`` when class names are given (logged), else it is an error."""
    texts: dict[int, list[str]] = {i: [] for i in range(len(vocabulary))}
    for df in frames:
        for v, n, text in zip(df["verb_class"], df["noun_class"], df["narration"].astype(str)):
            key = f"{int(v)}:{int(n)}"
            if key in vocabulary.vn2act and text not in texts[vocabulary.vn2act[key]]:
                texts[vocabulary.vn2act[key]].append(text)
    missing = [i for i, t in texts.items() if not t]
    if missing:
        if verb_names is None or noun_names is None:
            raise ValueError(f"{len(missing)} actions have no narration in the given CSVs (first: "
                             f"{[vocabulary.actions[i] for i in missing[:5]]}); pass verb_names/noun_names")
        log.warning("%d actions have no narration; using '<verb> <noun>' class names for them", len(missing))
        for i in missing:
            texts[i] = [f"{verb_names[vocabulary.act2verb[i]]} {noun_names[vocabulary.act2noun[i]]}".replace(":", " ")]
    return [[tpl.format(t) for t in texts[i] for tpl in templates] for i in range(len(vocabulary))]
