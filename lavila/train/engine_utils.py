"""Pieces the engines share: building a model from a checkpoint, pretrained initialisation, MIR evaluation."""
from __future__ import annotations

import argparse
import os
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from lavila.train.loop import TrainingError, _resolve_checkpoint_source, checkpoint_model_config, model_overrides

_CACHE: dict[str, dict[str, Any]] = {}


def get_checkpoint(source: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load (once per process) a checkpoint given as a path, zoo name or URL."""
    if source not in _CACHE:
        _CACHE.clear()  # keep at most one checkpoint in memory
        _CACHE[source] = _resolve_checkpoint_source(source, getattr(args, "trust_checkpoint", False))
    return _CACHE[source]


def overrides_for(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Model name and overrides: a checkpoint's stored config wins for the architecture; the flags set the frame
    count, crop size and drop path (the temporal embedding is resized to ``--clip-length`` when loading)."""
    overrides = model_overrides(args)
    name = args.model
    if ckpt is not None:
        ck_name, ck_over = checkpoint_model_config(ckpt)
        name = ck_name or name
        ck_over = {k: v for k, v in ck_over.items() if k not in ("num_frames", "drop_path_rate")}
        overrides = {**overrides, **ck_over}
        released = ckpt.get("args")
        if not ck_over and released is not None:  # released file: dimensions from its args
            get = released.get if isinstance(released, dict) else lambda k, d=None: getattr(released, k, d)
            for key in ("project_embed_dim", "context_length", "vocab_size"):
                if get(key, None) is not None:
                    overrides[key] = get(key)
    return name, overrides


def load_weights(model: nn.Module, ckpt: dict[str, Any]) -> None:
    from lavila.train.loop import load_model_weights

    try:
        load_model_weights(model, ckpt)
    except (KeyError, ValueError) as exc:
        raise TrainingError(f"checkpoint does not fit the model: {exc}") from exc


def init_pretrained(model: nn.Module, args: argparse.Namespace) -> None:
    """``--pretrain-zoo`` initialisation of a fresh CLIP (``none``: random; weights from ``--pretrain-path``)."""
    zoo = args.pretrain_zoo
    if zoo == "none":
        return
    from lavila.models import convert

    path = args.pretrain_path
    if zoo in ("openai", "open_clip"):
        if path:
            from lavila.utils.checkpoint import load_checkpoint

            state = load_checkpoint(path, trusted=args.trust_checkpoint)
        else:
            try:
                import open_clip

                state = open_clip.create_model("ViT-B-16", pretrained="openai").state_dict()
            except Exception as exc:
                raise TrainingError(
                    f"--pretrain-zoo {zoo} needs the CLIP ViT-B/16 weights, which could not be loaded ({exc}); "
                    "pass --pretrain-path FILE, or --pretrain-zoo none for a random initialisation") from exc
        convert.init_from_clip(model, state)
    elif zoo in ("deit", "lavila"):
        if not path:
            raise TrainingError(f"--pretrain-zoo {zoo} needs --pretrain-path (no download here); "
                                "or use --pretrain-zoo none")
        from lavila.utils.checkpoint import load_checkpoint

        state = load_checkpoint(path, trusted=args.trust_checkpoint)
        if zoo == "deit":
            if getattr(model.visual, "__class__", type).__name__ == "ViViM":
                convert.init_from_vim(model, state)
            else:
                convert.init_from_deit(model, state)
        else:
            load_weights(model, state)


def require_file(path: str | None, flag: str) -> str:
    if not path:
        raise TrainingError(f"{flag} is required")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path} does not exist")
    return path


def mir_relevancy(dataset: Any, relevancy_path: str | None) -> np.ndarray:
    """The evaluation relevancy matrix (clips x sentences): the given/default pickle, else rebuilt from the CSVs."""
    from lavila.data.ek100 import default_relevancy_path
    from lavila.evaluation.relevancy import build_relevancy, load_relevancy

    expected = (len(dataset.clips), len(dataset.sentences))
    path = relevancy_path or str(default_relevancy_path(dataset.metadata))
    if os.path.isfile(path):
        return load_relevancy(path, expected_shape=expected)
    if relevancy_path:
        raise FileNotFoundError(f"--relevancy-path {relevancy_path} does not exist")
    return build_relevancy(dataset.clips, dataset.sentences)


@torch.no_grad()
def evaluate_mir(model: nn.Module, loader: Iterable[Any], relevancy: np.ndarray, device: torch.device
                 ) -> dict[str, float]:
    """EK100 MIR mAP / nDCG: encode every clip and its narration, reduce the columns to the unique sentences."""
    from lavila.evaluation.retrieval import mir_metrics
    from lavila.train.loop import ordered_gather

    dataset = loader.dataset
    videos, texts = [], []
    for frames, tokens in loader:
        videos.append(model.encode_video(frames.to(device, non_blocking=True)).float())
        texts.append(model.encode_text(tokens.to(device, non_blocking=True)).float())
    n = len(dataset)
    video = ordered_gather(torch.cat(videos), n).cpu()
    text = ordered_gather(torch.cat(texts), n).cpu()
    similarity = (video @ text.t() + 1) / 2
    similarity = similarity[:, torch.from_numpy(dataset.sentence_clip_rows())].numpy()
    return mir_metrics(similarity, relevancy)
