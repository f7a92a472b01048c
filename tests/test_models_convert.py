"""Released-format checkpoints: save/load round trip, temporal resizing, CLS files, clear errors."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from lavila.models import VideoClassifier, create_model
from lavila.models.checkpoint_spec import checkpoint_model_spec
from lavila.models.released import build_from_released_checkpoint, load_released_state_dict, resize_temporal
from lavila.utils.checkpoint import StateDictError, unwrap_state_dict

TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, patch_size=16, project_embed_dim=16,
            text_width=32, text_layers=1, text_heads=2, vocab_size=100, context_length=16)
VISUAL_TINY = {k: v for k, v in TINY.items() if not k.startswith(("text", "vocab", "context"))}


def _released(model: torch.nn.Module, name: str, frames: int) -> dict:
    """A checkpoint in the released layout: DDP keys under `state_dict`, an argparse Namespace under `args`."""
    args = argparse.Namespace(model=name, clip_length=frames, project_embed_dim=16, context_length=16, vocab_size=100)
    return {"epoch": 3, "state_dict": {"module." + k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": {}, "scaler": {}, "best_acc1": 0.0, "args": args}


def _randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)


@pytest.mark.parametrize("name", ["CLIP_TimeSformerB16", "CLIP_TimeMamba_like_frozen", "CLIP_VITT16",
                                  "CLIP_ViViM_tiny"])
def test_save_and_load_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, num_frames=2, **TINY).eval()
    _randomise(model)
    path = tmp_path / "checkpoint.pt"
    torch.save(_released(model, name, 2), path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert all(k.startswith("module.") for k in checkpoint["state_dict"])

    fresh = create_model(name, num_frames=2, **TINY).eval()
    report = load_released_state_dict(fresh, checkpoint)
    assert not report.left_at_init and not report.resized
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    video, tokens = torch.randn(1, 3, 2, 32, 32), torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(video, tokens)["image_embed"], fresh(video, tokens)["image_embed"])

    rebuilt = build_from_released_checkpoint(checkpoint, **{k: v for k, v in TINY.items()
                                                             if k not in ("project_embed_dim", "context_length",
                                                                          "vocab_size")})
    assert rebuilt.num_frames == 2 and rebuilt.config["name"] == name


def test_project_checkpoint_is_rebuilt_from_its_stored_model_config():
    """This project's checkpoints carry ``model_name`` / ``model_config``: no override is needed to rebuild them,
    and their args (the flags of the run, here a different default model) do not decide the architecture."""
    torch.manual_seed(0)
    model = create_model("CLIP_ViViM_tiny", num_frames=3, **TINY).eval()
    _randomise(model)
    ckpt = {"state_dict": model.state_dict(), "model_name": "CLIP_ViViM_tiny", "model_config": dict(model.config),
            "args": {"model": "CLIP_TimeSformerB16", "clip_length": 16}}
    name, overrides = checkpoint_model_spec(ckpt)
    assert name == "CLIP_ViViM_tiny" and overrides["num_frames"] == 3 and overrides["depth"] == 1
    rebuilt = build_from_released_checkpoint(ckpt).eval()
    assert rebuilt.config["name"] == "CLIP_ViViM_tiny" and rebuilt.num_frames == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k]), k
    assert build_from_released_checkpoint(ckpt, num_frames=5).num_frames == 5  # resized temporal embedding
    released = _released(model, "CLIP_ViViM_tiny", 3)
    assert checkpoint_model_spec(released) == ("CLIP_ViViM_tiny", {"project_embed_dim": 16, "context_length": 16,
                                                                   "vocab_size": 100, "num_frames": 3})


@pytest.mark.parametrize("name,key", [("CLIP_TimeSformerB16", "visual.temporal_embed"),
                                      ("CLIP_VITT16", "visual.temporal_embedding"),
                                      ("CLIP_ViViM_tiny", "visual.temporal_embedding")])
@pytest.mark.parametrize("src,dst", [(4, 16), (16, 4)])
def test_temporal_resize(name, key, src, dst):
    torch.manual_seed(0)
    source = create_model(name, num_frames=src, **TINY)
    _randomise(source)
    target = create_model(name, num_frames=dst, **TINY)
    report = load_released_state_dict(target, _released(source, name, src))
    old, new = source.state_dict()[key], target.state_dict()[key]
    assert report.resized == {key: (tuple(old.shape), tuple(new.shape))}
    dim = 1 if key.endswith("temporal_embed") else 0
    assert new.shape[dim] == dst and new.shape[:dim] == old.shape[:dim] and new.shape[dim + 1:] == old.shape[dim + 1:]
    if src > dst:  # keep the first frames
        assert torch.equal(new, old.narrow(dim, 0, dst))
    else:  # linear interpolation along T (align_corners=False), per channel
        flat = old.movedim(dim, -1).reshape(1, -1, src)
        expected = F.interpolate(flat, size=dst, mode="linear", align_corners=False)
        assert torch.allclose(new.movedim(dim, -1).reshape(1, -1, dst), expected)
    pos_key = "visual.positional_embedding" if name == "CLIP_VITT16" else "visual.pos_embed"
    assert torch.equal(target.state_dict()[pos_key], source.state_dict()[pos_key])


def test_resize_temporal_linear_mode_and_identity():
    x = torch.arange(8.0).reshape(1, 4, 2)
    assert resize_temporal(x, 4, dim=1) is x
    shrunk = resize_temporal(x, 2, dim=1, mode="linear")
    assert torch.allclose(shrunk, F.interpolate(x.transpose(1, 2), size=2, mode="linear").transpose(1, 2))
    with pytest.raises(ValueError, match="mode"):
        resize_temporal(x, 2, dim=1, mode="nearest")


def test_timemamba_loads_across_frame_counts_without_resizing():
    source = create_model("CLIP_TimeMamba_like_timesformer", num_frames=4, **TINY)
    target = create_model("CLIP_TimeMamba_like_timesformer", num_frames=16, **TINY)
    report = load_released_state_dict(target, _released(source, "CLIP_TimeMamba_like_timesformer", 4))
    assert not report.resized and not report.left_at_init


def test_classification_checkpoint_loads_into_video_classifier(tmp_path):
    torch.manual_seed(0)
    name = "CLIP_TimeSformerB16"
    clf = create_model(name, num_classes=5, num_frames=4, **VISUAL_TINY)
    _randomise(clf)
    checkpoint = _released(clf, name, 4)
    assert "module.fc_cls.weight" in checkpoint["state_dict"]
    assert not any("image_projection" in k for k in checkpoint["state_dict"])
    rebuilt = build_from_released_checkpoint(checkpoint, num_frames=16, **VISUAL_TINY)
    assert isinstance(rebuilt, VideoClassifier) and rebuilt.num_frames == 16
    assert rebuilt.fc_cls.out_features == 5
    with pytest.raises(KeyError, match="num_classes=5"):
        load_released_state_dict(create_model(name, num_frames=4, **TINY), checkpoint)


def test_clip_checkpoint_into_classifier_gives_a_hint():
    name = "CLIP_VITT16"
    clip = create_model(name, num_frames=2, **TINY)
    with pytest.raises(KeyError, match="from_clip"):
        load_released_state_dict(create_model(name, num_classes=3, num_frames=2, **VISUAL_TINY),
                                 _released(clip, name, 2))
    clf = VideoClassifier.from_clip(clip, num_classes=3)
    assert clf(torch.randn(1, 3, 2, 32, 32)).shape == (1, 3) and clf.num_frames == 2


def test_wrong_model_and_spatial_mismatch_errors():
    vit = create_model("CLIP_VITT16", num_frames=2, **TINY)
    with pytest.raises(KeyError, match="args.model"):
        load_released_state_dict(create_model("CLIP_TimeSformerB16", num_frames=2, **TINY),
                                 _released(vit, "CLIP_VITT16", 2))
    bigger = create_model("CLIP_VITT16", num_frames=2, **{**TINY, "img_size": 48})
    with pytest.raises(ValueError, match="img_size"):
        load_released_state_dict(vit, _released(bigger, "CLIP_VITT16", 2))


def test_unwrap_variants():
    t = torch.zeros(2)
    assert unwrap_state_dict({"state_dict": {"module.a": t}}) == {"a": t}
    assert unwrap_state_dict({"model": {"a": t}}) == {"a": t}
    with pytest.raises(ValueError, match="no model state dict"):  # a StateDictError is also a ValueError
        unwrap_state_dict({"a": t, "b": "x"})
    with pytest.raises(StateDictError):
        unwrap_state_dict([t])
    assert list(unwrap_state_dict(torch.nn.Linear(2, 3))) == ["weight", "bias"]
