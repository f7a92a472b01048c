"""Issue 15, section 3: reference flags that did nothing now act as in the reference (``--patch-dropout`` in the ViT,
``--decode-threads`` for the decoders), or print one start-up note saying why they have no effect here; the
reference's default data paths, and the error naming path and layout when they are absent."""
from __future__ import annotations

import argparse

import pytest
import torch

from lavila.models import create_model
from lavila.models.vit import PatchDropout
from lavila.train import loop
from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.finetune_retrieval import RetrievalEngine
from lavila.train.flags import REFERENCE_DATA_PATHS, no_effect_notes
from lavila.train.pretrain import PretrainEngine
from lavila.train.startup import check_reference_paths
from lavila.utils import distributed as du

TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2,
            "project_embed_dim": 16, "img_size": 32, "num_frames": 2}


def test_patch_dropout_keeps_the_class_token_and_a_fraction_of_patches():
    drop = PatchDropout(0.5).train()
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)
    kept = drop(x)
    assert kept.shape == (2, 5, 3)  # int(10 * (1 - 0.5)) patch tokens per sample
    for b in range(2):  # a subset of that sample's own tokens, no duplicates
        rows = {tuple(r) for r in kept[b].tolist()}
        assert len(rows) == 5 and rows <= {tuple(r) for r in x[b].tolist()}
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="--patch-dropout"):
        PatchDropout(1.0)


def test_patch_dropout_flag_reaches_the_vit_and_acts_in_training_only():
    args = loop.parse_engine_args(PretrainEngine(), ["--patch-dropout", "0.5", "--clip-length", "2",
                                                      "--input-size", "32"])
    assert loop.model_overrides(args)["patch_dropout"] == 0.5
    torch.manual_seed(0)
    model = create_model("CLIP_VITT16", **{**TINY_VIT, "patch_dropout": 0.5})
    torch.manual_seed(0)
    plain = create_model("CLIP_VITT16", **TINY_VIT)
    assert model.visual.patch_dropout.prob == 0.5 and model.config["patch_dropout"] == 0.5
    seen = []
    model.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    video = torch.randn(2, 3, 2, 32, 32)
    model.train()
    model.visual(video)
    assert seen == [1 + int(2 * 4 * 0.5)]  # class token + half of the 2 x 4 patch tokens
    model.eval()
    plain.eval()
    assert torch.allclose(model.visual(video), plain.visual(video))  # evaluation sees every token


def test_decode_threads_reach_the_datasets():
    class Clips(torch.utils.data.Dataset):
        decode_threads = 1

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i):
            return torch.zeros(1)

    args = loop.parse_engine_args(PretrainEngine(), ["--decode-threads", "3", "--workers", "0"])
    info = du.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False)
    for training in (True, False):
        dataset = Clips()
        loop.build_loader(dataset, args, info, training=training)
        assert dataset.decode_threads == 3


def _args(engine, argv: list[str]) -> argparse.Namespace:
    return loop.parse_engine_args(engine, argv)


def test_flags_without_effect_get_one_note_each():
    engine = RetrievalEngine()
    defaults = vars(_args(engine, []))
    argv = ["--use-flash-attn", "--use-fast-conv1", "--use-multi-epochs-loader", "--clip-stride", "16"]
    notes = no_effect_notes(_args(engine, argv), defaults)
    assert [n.split(" ")[0] for n in notes] == ["--use-flash-attn", "--use-fast-conv1", "--use-multi-epochs-loader",
                                                 "--clip-stride"]
    assert all("has no effect here: " in n for n in notes)
    assert no_effect_notes(_args(engine, []), defaults) == []
    cls_args = argparse.Namespace(num_crops=3, num_clips=2)
    assert len(no_effect_notes(cls_args, {"num_crops": 1, "num_clips": 1})) == 2
    tower_note = no_effect_notes(argparse.Namespace(patch_dropout=0.2), {}, "timesformer")
    assert len(tower_note) == 1 and "ViT only" in tower_note[0]
    assert no_effect_notes(argparse.Namespace(patch_dropout=0.2), {}, "vit") == []


@pytest.mark.parametrize("engine", [PretrainEngine(), RetrievalEngine()])
def test_reference_default_paths_are_the_defaults(engine):
    args = _args(engine, [])
    for dest, path in REFERENCE_DATA_PATHS[engine.name].items():
        assert getattr(args, dest) == path and path.startswith("datasets/")


def test_clip_stride_defaults_are_the_reference_engines():
    engines = (PretrainEngine(), RetrievalEngine(), ClassificationEngine())
    assert [_args(e, []).clip_stride for e in engines] == [16, 4, 2]


def test_absent_reference_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _args(PretrainEngine(), [])
    errors, notes = check_reference_paths(args, "pretrain")
    assert len(errors) == 2 and "datasets/Ego4D/videos_320px_15sec/ not found" in errors[0]
    assert "--root" in errors[0] and "chunks" in errors[0] and "--train-metadata" in errors[1]
    assert len(notes) == 1 and "no evaluation during training" in notes[0]
    (tmp_path / "datasets/Ego4D/videos_320px_15sec").mkdir(parents=True)
    (tmp_path / "datasets/Ego4D/ego4d_train.pkl").write_bytes(b"")
    assert check_reference_paths(_args(PretrainEngine(), []), "pretrain")[0] == []
    (tmp_path / "datasets").rename(tmp_path / "moved")
    errors, _ = check_reference_paths(_args(PretrainEngine(), ["--evaluate"]), "pretrain")  # no training data needed
    assert len(errors) == 2 and "--root-val" in errors[0] and "--val-metadata" in errors[1]
    errors, _ = check_reference_paths(_args(RetrievalEngine(), ["--evaluate"]), "finetune_retrieval")
    assert len(errors) == 2 and "--root" in errors[0] and "--val-metadata" in errors[1]
    explicit = _args(PretrainEngine(), ["--root", "elsewhere"])  # a path you give is checked by the dataset
    assert all("elsewhere" not in e for e in check_reference_paths(explicit, "pretrain")[0])
