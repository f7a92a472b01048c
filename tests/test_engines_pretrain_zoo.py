"""--pretrain-zoo openai / open_clip / lavila through the pretraining engine, end to end (one epoch, tiny model).

The CLIP ViT-B/16 file is a locally generated random open_clip CLIP of the tiny tower sizes (nothing is downloaded);
without --pretrain-path only open_clip's own download call (``open_clip.create_model(..., pretrained="openai")``) is
replaced. Each run checks that the model the engine trains starts from the file's weights, and that it trains.
"""
from __future__ import annotations

import pytest
import torch
from engine_helpers import pretrain_args, synthetic_root, tiny_open_clip, tiny_pretrained_checkpoint

from lavila.train.loop import CHECKPOINT, run
from lavila.train.pretrain import PretrainEngine
from lavila.utils.checkpoint import load_checkpoint, save_checkpoint

open_clip = pytest.importorskip("open_clip")

RUN = ("--batch-size", "8", "--epochs", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A random open_clip CLIP with the sizes of engine_helpers.TINY_MODEL (width 32, 1 layer, 2 heads, 32 px)."""
    clip = tiny_open_clip(seed=1)
    path = tmp_path_factory.mktemp("clip") / "clip_vitb16.pt"
    torch.save(clip.state_dict(), path)
    return path, clip.state_dict()


class _Capture(PretrainEngine):
    """The pretraining engine, keeping a copy of the model's weights as built (before any step)."""

    def build_model(self, args):
        model = super().build_model(args)
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model


def _run(data, out, zoo: str, *extra: str) -> _Capture:
    argv = pretrain_args(data, out, *RUN, *extra)
    argv[argv.index("--pretrain-zoo") + 1] = zoo
    engine = _Capture()
    summary = run(engine, argv)
    assert summary["status"] == "finished" and summary["global_step"] == 2
    trained = load_checkpoint(out / CHECKPOINT)["state_dict"]
    assert not torch.equal(trained["visual.blocks.0.mlp.fc1.weight"], engine.initial["visual.blocks.0.mlp.fc1.weight"])
    return engine


def _assert_from_clip(initial: dict, clip_sd: dict) -> None:
    assert torch.equal(initial["visual.patch_embed.proj.weight"], clip_sd["visual.conv1.weight"])
    assert torch.equal(initial["visual.blocks.0.attn.Wqkv.weight"],
                       clip_sd["visual.transformer.resblocks.0.attn.in_proj_weight"])
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight"):
        assert torch.equal(initial[f"textual.{key}"], clip_sd[key]), key
    # the projections keep their random initialisation, as in the reference (convert._CLIP_IGNORED)
    assert not torch.equal(initial["textual.text_projection"], clip_sd["text_projection"])


@pytest.mark.parametrize("zoo", [pytest.param("openai", marks=pytest.mark.slow), "open_clip"])  # the same path
def test_clip_zoo_from_a_weights_file(data, tmp_path, clip_file, zoo):
    path, clip_sd = clip_file
    engine = _run(data, tmp_path, zoo, "--pretrain-path", str(path))
    _assert_from_clip(engine.initial, clip_sd)


@pytest.mark.slow
def test_clip_zoo_without_a_path_uses_open_clips_download(data, tmp_path, clip_file, monkeypatch):
    calls = []
    tiny = tiny_open_clip(seed=0)
    tiny.load_state_dict(clip_file[1])

    def fake_download(name, pretrained=None, **kw):
        calls.append((name, pretrained))
        return tiny

    monkeypatch.setattr(open_clip, "create_model", fake_download)
    engine = _run(data, tmp_path, "openai")
    assert calls == [("ViT-B-16", "openai")]
    _assert_from_clip(engine.initial, clip_file[1])


def test_lavila_zoo_from_a_checkpoint(data, tmp_path, tmp_path_factory):
    ckpt = load_checkpoint(tiny_pretrained_checkpoint(tmp_path_factory))
    # moved off the seed-0 initialisation the engine itself would draw, so ignoring the file cannot pass
    g = torch.Generator().manual_seed(2)
    ckpt["state_dict"] = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    path = tmp_path / "lavila_pretrained.pt"
    save_checkpoint(ckpt, path)
    engine = _run(data, tmp_path / "run", "lavila", "--pretrain-path", str(path))
    expected = ckpt["state_dict"]
    assert engine.initial.keys() == expected.keys()
    assert all(torch.equal(engine.initial[k], expected[k]) for k in expected)
