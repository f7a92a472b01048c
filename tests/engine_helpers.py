"""Shared by tests/test_engines_*.py: a small generated dataset (once per session) and tiny-model flags."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

TINY_MODEL = ["--model", "CLIP_TimeSformerB16", "--model-overrides", "embed_dim=32", "depth=1", "num_heads=2",
              "text_width=32", "text_layers=1", "text_heads=2", "project_embed_dim=16", "--input-size", "32",
              "--clip-length", "2", "--workers", "0", "--pretrain-zoo", "none", "--device", "cpu"]


TINY_OVERRIDES = {"embed_dim": 32, "depth": 1, "num_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2,
                  "project_embed_dim": 16, "img_size": 32, "num_frames": 2}


def load_script(name: str = "eval_zeroshot") -> Any:
    """A top-level entry script (``<repo>/<name>.py``) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_pretrained_checkpoint(tmp_path_factory: pytest.TempPathFactory, freeze_temperature: bool = True) -> Path:
    """A tiny 2-frame CLIP checkpoint in this project's format (what main_pretrain.py writes; with
    ``freeze_temperature=False`` what ``--no-freeze-temperature`` pretraining, e.g. the demo, writes)."""
    from lavila.models import create_model
    from lavila.utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("CLIP_TimeSformerB16", freeze_temperature=freeze_temperature, **TINY_OVERRIDES)
    path = tmp_path_factory.mktemp("pretrained") / "checkpoint.pt"
    save_checkpoint({"state_dict": model.state_dict(), "model_name": "CLIP_TimeSformerB16",
                     "model_config": model.config, "args": {"model": "CLIP_TimeSformerB16"}, "epoch": 1}, path)
    return path


def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate (once per pytest session) a small dataset in the real Ego4D / EK100 layouts."""
    root = tmp_path_factory.getbasetemp() / "lavila_synthetic"
    if not (root / "manifest.json").is_file():
        from lavila.data.synthetic import generate

        generate(root, seed=0, ego4d_videos=2, ek100_train_videos=2, ek100_test_videos=1, egoschema_questions=1)
    return root


def benchmark_data(tmp_path_factory: pytest.TempPathFactory, name: str, **sizes: Any) -> tuple[Path, dict]:
    """A small generated dataset with every benchmark (EK100, EgoSchema, EGTEA, Charades-Ego, EgoMCQ on Ego4D) in
    its real layout: ``(root, manifest)``; ``sizes`` override the counts (keywords of ``synthetic.generate``)."""
    from lavila.data.synthetic import generate

    out = tmp_path_factory.mktemp(name)
    settings = {"seed": 5, "ego4d_videos": 2, "ek100_train_videos": 1, "ek100_test_videos": 1,
                "egoschema_questions": 0, "video_sec": 16.0, "height": 32, "width": 48, "num_verbs": 2,
                "num_nouns": 3, "action_min_sec": 1.0, "action_max_sec": 2.0, "egtea_clips": 4,
                "charades_test_videos": 4, "charades_train_videos": 1, "egomcq_questions": 4}
    return out, generate(out, **{**settings, **sizes})


def paths(root: Path) -> dict[str, str]:
    ann = root / "ek100" / "epic-kitchens-100-annotations"
    ret = ann / "retrieval_annotations"
    return {"ego4d_root": str(root / "ego4d" / "videos"), "ego4d_meta": str(root / "ego4d" / "ego4d_train.pkl"),
            "ek_root": str(root / "ek100" / "videos"), "mir_train": str(ret / "EPIC_100_retrieval_train.csv"),
            "mir_test": str(ret / "EPIC_100_retrieval_test.csv"), "cls_train": str(ann / "EPIC_100_train.csv"),
            "cls_val": str(ann / "EPIC_100_validation.csv")}


def pretrain_args(root: Path, out: Path, *extra: str) -> list[str]:
    p = paths(root)
    return ["--root", p["ego4d_root"], "--train-metadata", p["ego4d_meta"], "--output-dir", str(out), *TINY_MODEL,
            *extra]


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def dist_env_restored() -> Iterator[None]:
    """Put the torchrun variables back as they were (forked test workers set them in this process's environment)."""
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v



def tiny_open_clip(seed: int, vision_width: int = 32, context_length: int = 77, vocab_size: int = 49408):
    """A random tiny open_clip CLIP (1 layer per tower, text width 32, 32 px, patch 16): the weights a
    ``--pretrain-zoo openai`` / ``open_clip`` file would hold, at test size."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=vision_width, head_width=vision_width // 2,
                                                 patch_size=16, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=context_length, vocab_size=vocab_size, width=32, heads=2,
                                             layers=1))
