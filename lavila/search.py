"""Text search over extracted window features (``extract_features.py --features proj``).

    python -m lavila.search "open the fridge" --features-dir feats/ --top-k 10 --html report.html

The query is encoded with the model the extraction used (its ``extract_config.json``; ``--model`` overrides) and
compared by cosine with every window's L2-normalised ``proj`` feature. Prints the top-k windows (video, start, end,
score); ``--html`` writes one self-contained page (thumbnails embedded, ``lavila.search_html``). ``--relevant CSV``
(columns video, start_s, end_s) marks a hit relevant when it overlaps a listed segment of the same video by at least
half of the shorter of the two.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavila.evaluation import feature_store as store

__all__ = ["Hit", "FeatureIndex", "load_index", "rank_windows", "load_relevant", "mark_relevant", "overlaps", "search",
           "main"]


@dataclass
class Hit:
    rank: int
    video: str
    window: int
    start_s: float
    end_s: float
    score: float
    relevant: bool | None = None


@dataclass
class FeatureIndex:
    """Every window of an extraction: ``rows`` (index.csv order), ``features`` (N, D) normalised, ``videos``
    (videos.csv rows by name) and the extraction's ``config``."""

    rows: list[dict[str, Any]]
    features: torch.Tensor
    videos: dict[str, dict[str, str]]
    config: dict[str, Any]


def load_index(features_dir: str | Path) -> FeatureIndex:
    """Read an extraction's index and its ``proj`` features (L2-normalised here if they were not)."""
    features_dir = Path(features_dir)
    config_path = features_dir / store.CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {features_dir} an extract_features.py --output-dir?")
    config = json.loads(config_path.read_text())
    if config.get("features") != "proj":
        raise ValueError(f"{features_dir} holds {config.get('features')!r} features; text search needs the projected "
                         "ones: extract with --features proj")
    rows, videos = store.read_index(features_dir)
    per_video = store.load_features(features_dir, videos)
    if not rows:
        raise ValueError(f"{features_dir / store.INDEX_FILE} lists no window (see {store.BAD_FILE})")
    features = torch.cat([per_video[v] for v in videos]) if videos else torch.zeros(0)
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    expected = [(v, k) for v, row in videos.items() for k in range(int(row["windows"]))]
    if [(r["video"], r["window"]) for r in rows] != expected:
        raise ValueError(f"{features_dir / store.INDEX_FILE} and {store.VIDEOS_FILE} disagree: re-run the extraction")
    return FeatureIndex(rows, features, videos, config)


def rank_windows(index: FeatureIndex, query: torch.Tensor, top_k: int = 10) -> list[Hit]:
    """The ``top_k`` windows by cosine with the (D,) query embedding, best first (ties: index order)."""
    query = torch.nn.functional.normalize(query.float().flatten(), dim=0)
    if query.numel() != index.features.shape[1]:
        raise ValueError(f"the query embedding has {query.numel()} dimensions, the features "
                         f"{index.features.shape[1]}: encode it with the extraction's model")
    scores = index.features @ query
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:top_k]
    return [Hit(rank + 1, index.rows[i]["video"], index.rows[i]["window"], index.rows[i]["start_s"],
                index.rows[i]["end_s"], float(scores[i])) for rank, i in enumerate(order)]


def load_relevant(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``{video: [(start_s, end_s), ...]}`` from a CSV with columns video, start_s, end_s."""
    out: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"video", "start_s", "end_s"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks the columns {sorted(missing)} (needed: video, start_s, end_s)")
        for row in reader:
            out.setdefault(row["video"], []).append((float(row["start_s"]), float(row["end_s"])))
    return out


def mark_relevant(hits: Sequence[Hit], segments: Mapping[str, Sequence[tuple[float, float]]]) -> None:
    """A hit is relevant when its window overlaps a segment of the same video by at least half of the shorter of
    the two (a window that only grazes a segment is not)."""
    for hit in hits:
        hit.relevant = any(overlaps(hit.start_s, hit.end_s, s, e) for s, e in segments.get(hit.video, ()))


def overlaps(start_a: float, end_a: float, start_b: float, end_b: float) -> bool:
    """Overlap of at least half of the shorter interval (and a positive length)."""
    common = min(end_a, end_b) - max(start_a, start_b)
    return common > 0 and common >= 0.5 * min(end_a - start_a, end_b - start_b)


def format_table(query: str, hits: Sequence[Hit]) -> str:
    marks = any(h.relevant is not None for h in hits)
    lines = [f"query: {query!r}", f"{'rank':>4}  {'video':<24} {'start':>8} {'end':>8} {'score':>7}"
             + ("  relevant" if marks else "")]
    for h in hits:
        lines.append(f"{h.rank:>4}  {h.video:<24} {h.start_s:>8.2f} {h.end_s:>8.2f} {h.score:>7.4f}"
                     + (f"  {'yes' if h.relevant else 'no'}" if marks else ""))
    return "\n".join(lines)


def search(features_dir: str | Path, queries: Sequence[str], top_k: int = 10, model: str | None = None,
           device: str = "cpu") -> tuple[FeatureIndex, list[list[Hit]]]:
    """Encode ``queries`` with the extraction's model (or ``model``) and rank the windows for each."""
    from lavila.evaluation.zeroshot import encode_texts
    from lavila.extract import model_from_config

    index = load_index(features_dir)
    config = dict(index.config)
    if model:
        config["model"] = model
    net, _ = model_from_config(config)
    if not hasattr(net, "encode_text"):
        raise ValueError("the extraction's model has no text tower (a classifier): text search needs a CLIP model")
    net.to(device)
    emb = encode_texts(net, list(queries), device, context_length=int(config["context_length"]))
    return index, [rank_windows(index, e, top_k) for e in emb]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("query", nargs="+", help="query text(s); each is searched separately")
    p.add_argument("--features-dir", required=True, help="an extract_features.py --output-dir (proj features)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--model", default=None, help="default: the model the extraction used")
    p.add_argument("--device", default="cpu")
    p.add_argument("--relevant", default=None, help="CSV video,start_s,end_s: hits overlapping a segment are marked")
    p.add_argument("--html", default=None, help="write a self-contained HTML report here (first query)")
    p.add_argument("--thumbnail-frames", type=int, default=3, help="frames per thumbnail strip")
    p.add_argument("--json", default=None, help="write the hits as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        index, results = search(args.features_dir, args.query, args.top_k, args.model, args.device)
        segments = load_relevant(args.relevant) if args.relevant else None
        for query, hits in zip(args.query, results):
            if segments is not None:
                mark_relevant(hits, segments)
            print(format_table(query, hits))
        if args.json:
            store.write_json(args.json, [{"query": q, "hits": [h.__dict__ for h in hits]}
                                         for q, hits in zip(args.query, results)])
        if args.html:
            from lavila.search_html import write_html

            path = write_html(args.html, args.query[0], results[0], index.videos, args.thumbnail_frames)
            print(f"report: {path}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
