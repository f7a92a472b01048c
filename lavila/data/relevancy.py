"""EK100 multi-instance retrieval relevancy: load the official pickle or rebuild it from the annotation CSVs.

The official relevancy of clip ``i`` to caption ``j`` (Wray et al., ICCV 2019; the EPIC-KITCHENS-100 MIR
challenge) is the mean of the IoU of their verb-class sets and the IoU of their noun-class sets. A caption's
classes are those of the clip whose ``narration_id`` is the caption's id (the sentence CSV only has
``narration_id, narration``). A clip has one verb class (``verb_class``) and a set of noun classes
(``all_noun_classes``, e.g. ``"[2, 49]"``). An IoU whose union is empty (both sets empty) is 0.

CLI::

    python -m lavila.data.relevancy --clips EPIC_100_retrieval_test.csv \\
        --sentences EPIC_100_retrieval_test_sentence.csv --out caption_relevancy_EPIC_100_retrieval_test.pkl
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["build_relevancy", "load_relevancy", "resolve_relevancy", "save_relevancy", "sentence_columns",
           "parse_class_list", "default_sentence_path", "default_relevancy_path", "main"]


def default_sentence_path(csv_path: str | os.PathLike) -> Path:
    """The ``<stem>_sentence.csv`` beside an EK100 MIR clip CSV."""
    p = Path(csv_path)
    return p.with_name(p.stem + "_sentence.csv")


def default_relevancy_path(csv_path: str | os.PathLike) -> Path:
    """The official relevancy pickle's place: ``<csv dir>/relevancy/caption_relevancy_<stem>.pkl``."""
    p = Path(csv_path)
    return p.parent / "relevancy" / f"caption_relevancy_{p.stem}.pkl"


def parse_class_list(value: object) -> list[int]:
    """Parse an ``all_noun_classes`` cell: ``"[2, 49]"``, a list/tuple/array of ints, or a single int."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            raise ValueError(f"cannot parse class list {value!r}: expected a list such as '[2, 49]'")
        parsed = ast.literal_eval(text)
        return [int(v) for v in parsed]
    if isinstance(value, Iterable):
        return [int(v) for v in value]
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    raise ValueError(f"cannot parse class list {value!r}: expected a list such as '[2, 49]'")


def _multi_hot(class_lists: list[list[int]], num_classes: int) -> np.ndarray:
    out = np.zeros((len(class_lists), num_classes), dtype=np.float32)
    rows = np.repeat(np.arange(len(class_lists)), [len(c) for c in class_lists])
    cols = np.fromiter((c for cl in class_lists for c in cl), dtype=np.int64, count=len(rows))
    if len(cols) and cols.min() < 0:
        raise ValueError("negative class id in the annotations")
    out[rows, cols] = 1.0
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every row set of ``a`` (N, C) with every row set of ``b`` (M, C), multi-hot float32 -> (N, M)."""
    inter = (a @ b.T).astype(np.float64)  # small integer counts: exact in float32
    union = a.sum(1, dtype=np.float64)[:, None] + b.sum(1, dtype=np.float64)[None, :] - inter
    empty = union == 0
    union[empty] = 1.0
    inter /= union  # divide in float64 so 1/3 etc. are the correctly rounded doubles
    inter[empty] = 0.0
    return inter


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {list(df.columns)}")


def build_relevancy(clips_df: pd.DataFrame, sentences_df: pd.DataFrame,
                    source_df: pd.DataFrame | None = None) -> np.ndarray:
    """Rebuild the relevancy matrix (rows = clips in CSV order, columns = sentences in CSV order), float64.

    ``clips_df`` needs ``verb_class`` and ``all_noun_classes``; ``sentences_df`` needs ``narration_id``. A sentence's
    classes are looked up by ``narration_id`` in ``source_df`` (default: ``clips_df``, which is right for the test
    split, where every sentence id is a clip of the split).
    """
    source_df = clips_df if source_df is None else source_df
    _require_columns(clips_df, ["verb_class", "all_noun_classes"], "clips table")
    _require_columns(sentences_df, ["narration_id"], "sentences table")
    _require_columns(source_df, ["narration_id", "verb_class", "all_noun_classes"], "sentence source table")
    if not source_df["narration_id"].is_unique:
        raise ValueError("narration_id is not unique in the sentence source table")

    index = pd.Index(source_df["narration_id"].astype(str))
    pos = index.get_indexer(sentences_df["narration_id"].astype(str))
    if (pos < 0).any():
        missing = sentences_df["narration_id"].astype(str)[pos < 0].tolist()
        raise ValueError(f"{len(missing)} sentence id(s) not found among the clips' narration_id "
                         f"(first: {missing[:3]}); pass the table they come from as source_df")

    clip_verbs = clips_df["verb_class"].to_numpy(dtype=np.int64)
    sent_verbs = source_df["verb_class"].to_numpy(dtype=np.int64)[pos]
    clip_nouns = [parse_class_list(v) for v in clips_df["all_noun_classes"]]
    src_nouns = [parse_class_list(v) for v in source_df["all_noun_classes"]]
    sent_nouns = [src_nouns[p] for p in pos]

    num_nouns = 1 + max((c for cl in clip_nouns + sent_nouns for c in cl), default=0)
    verb_iou = (clip_verbs[:, None] == sent_verbs[None, :]).astype(np.float64)
    noun_iou = _iou(_multi_hot(clip_nouns, num_nouns), _multi_hot(sent_nouns, num_nouns))
    relevancy = noun_iou
    relevancy += verb_iou
    relevancy *= 0.5
    return relevancy


def load_relevancy(path: str | Path, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Load a relevancy pickle (the official ``caption_relevancy_*.pkl`` or one written by the CLI).

    Unpickling goes through the project's restricted unpickler (plain arrays only, no code execution).
    ``expected_shape`` = (number of clips, number of sentences) is checked when given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"relevancy file {path} not found; rebuild it from the annotation CSVs with "
            f"`python -m lavila.data.relevancy --clips CLIPS.csv --sentences SENTENCES.csv --out {path}`")
    from lavila.utils.checkpoint import safe_pickle_load

    obj = safe_pickle_load(path)
    if hasattr(obj, "to_numpy"):
        obj = obj.to_numpy()
    relevancy = np.asarray(obj)
    if relevancy.ndim != 2 or not np.issubdtype(relevancy.dtype, np.number):
        raise ValueError(f"{path} does not hold a 2-D numeric relevancy matrix (got {relevancy.dtype} "
                         f"array of shape {relevancy.shape})")
    if expected_shape is not None and tuple(relevancy.shape) != tuple(expected_shape):
        raise ValueError(
            f"relevancy in {path} has shape {tuple(relevancy.shape)} but the annotations give "
            f"{tuple(expected_shape)} (clips x sentences); it belongs to another split or CSV — rebuild it with "
            f"`python -m lavila.data.relevancy`")
    return relevancy


def sentence_columns(clip_ids: Sequence[Any], sentence_ids: Sequence[Any]) -> np.ndarray:
    """For every sentence id, the row of the clip with that narration_id (one dict lookup per sentence): the
    columns that reduce a (clips x clips' narrations) similarity to (clips x sentences)."""
    lookup = {str(c): i for i, c in enumerate(clip_ids)}
    if len(lookup) != len(clip_ids):
        raise ValueError("clip narration_ids are not unique")
    missing = [str(s) for s in sentence_ids if str(s) not in lookup]
    if missing:
        raise ValueError(f"{len(missing)} sentence ids are not clip narration_ids (first: {missing[:3]}); the "
                         "sentence CSV must belong to the clip CSV")
    return np.fromiter((lookup[str(s)] for s in sentence_ids), dtype=np.int64, count=len(sentence_ids))


def resolve_relevancy(clips_df: pd.DataFrame, sentences_df: pd.DataFrame, metadata: str | Path,
                      relevancy_path: str | Path | None = None) -> np.ndarray:
    """The (clips x sentences) relevancy of an MIR split: ``relevancy_path`` when given (it must exist), else the
    official pickle's default place beside ``metadata`` (``relevancy/caption_relevancy_<stem>.pkl``), else rebuilt
    from the CSVs (logged)."""
    expected = (len(clips_df), len(sentences_df))
    path = Path(relevancy_path) if relevancy_path else default_relevancy_path(metadata)
    if path.is_file():
        return load_relevancy(path, expected_shape=expected)
    if relevancy_path:
        raise FileNotFoundError(f"relevancy file {path} not found (--relevancy-path); drop the flag to rebuild it "
                                "from the annotation CSVs")
    logging.getLogger("lavila").warning(
        "relevancy %s not found: the matrix is rebuilt in memory from %s and its sentence CSV (not saved); save it "
        "once with: python -m lavila.data.relevancy --clips %s --sentences %s --out %s", path, metadata,
        metadata, default_sentence_path(metadata), path)
    return build_relevancy(clips_df, sentences_df)


def save_relevancy(relevancy: np.ndarray, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(np.ascontiguousarray(relevancy), f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def _read_csv(path: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise SystemExit(f"error: CSV file {path} not found")
    return pd.read_csv(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the EK100 MIR caption relevancy matrix from the CSVs.")
    parser.add_argument("--clips", required=True, help="clip CSV, e.g. EPIC_100_retrieval_test.csv")
    parser.add_argument("--sentences", required=True, help="sentence CSV, e.g. EPIC_100_retrieval_test_sentence.csv")
    parser.add_argument("--source", default=None,
                        help="CSV whose rows define the sentences' classes (default: --clips)")
    parser.add_argument("--out", required=True, help="output pickle path")
    args = parser.parse_args(argv)
    clips = _read_csv(args.clips)
    sentences = _read_csv(args.sentences)
    source = _read_csv(args.source) if args.source else None
    relevancy = build_relevancy(clips, sentences, source)
    save_relevancy(relevancy, args.out)
    positives = (relevancy == 1).sum()
    print(f"relevancy {relevancy.shape[0]} x {relevancy.shape[1]}: {positives} exact matches, "
          f"{(relevancy > 0).mean():.2%} non-zero -> {args.out}")


if __name__ == "__main__":
    main()
