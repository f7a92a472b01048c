"""Every registry model at full size has exactly the released checkpoints' keys and shapes (built on `meta`)."""
from __future__ import annotations

import pytest
import torch

from lavila.models import create_model, get_model_config, list_models

UPSTREAM_NAMES = ["CLIP_TimeSformerB16", "CLIP_FrozenInTime_TimeSformerB16", "CLIP_TimeMamba_like_timesformer",
                  "CLIP_TimeMamba_like_frozen", "CLIP_VITT16", "CLIP_VITS16", "CLIP_VITB16", "CLIP_ViViM_tiny",
                  "CLIP_ViViM_small", "CLIP_ViViM_tiny_hs4"]


def _build_like_spec(entry: str, spec: dict) -> torch.nn.Module:
    name = spec["builder"].rsplit(".", 1)[1]
    frames = spec["builder_kwargs"]["num_frames"]
    assert spec["builder_kwargs"]["project_embed_dim"] == 256
    with torch.device("meta"):  # no memory, no init cost: only names and shapes matter here
        if entry.startswith("VideoClassifier"):
            return create_model(name, num_classes=3806, num_frames=frames)
        return create_model(name, num_frames=frames)


def test_spec_has_twelve_entries(checkpoint_keys_spec):
    assert len([k for k in checkpoint_keys_spec if not k.startswith("_")]) == 12


def test_every_released_key_set_matches(checkpoint_keys_spec):
    for entry, spec in checkpoint_keys_spec.items():
        if entry.startswith("_"):
            continue
        model = _build_like_spec(entry, spec)
        got = {"module." + k: list(v.shape) for k, v in model.state_dict().items()}
        want = spec["state_dict"]
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        assert not missing and not extra, f"{entry}: missing {missing[:5]}, extra {extra[:5]}"
        wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert not wrong, f"{entry}: shape mismatches {list(wrong.items())[:5]}"
        assert list(got) == list(want), f"{entry}: same keys but a different order"


def test_attention_mask_is_not_persistent():
    with torch.device("meta"):
        model = create_model("CLIP_VITT16")
    assert "textual.attn_mask" not in model.state_dict()
    assert model.textual.attn_mask.shape == (77, 77)


def test_registry_lists_upstream_names():
    assert set(UPSTREAM_NAMES) <= set(list_models())


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="CLIP_TimeSformerB16"):
        create_model("CLIP_NotAModel")


def test_unknown_override_lists_valid_overrides():
    with pytest.raises(TypeError, match="embed_dim"):
        create_model("CLIP_VITT16", width=3)


def test_bad_override_values_are_rejected():
    with pytest.raises(ValueError, match="num_heads"):
        get_model_config("CLIP_VITT16", embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="patch_size"):
        get_model_config("CLIP_VITT16", img_size=40)


def test_config_and_frames_are_stored_on_the_model():
    with torch.device("meta"):
        model = create_model("CLIP_TimeSformerB16", num_frames=16)
        classifier = create_model("CLIP_TimeMamba_like_timesformer", num_classes=10)
    assert model.num_frames == 16 and model.config["num_frames"] == 16
    assert model.config["name"] == "CLIP_TimeSformerB16" and model.config["project_embed_dim"] == 256
    assert classifier.num_frames == 4 and classifier.config["num_classes"] == 10
    assert not hasattr(classifier, "textual") and classifier.visual.image_projection is None
    assert classifier.dropout.p == 0.5  # the reference's --dropout-rate default
    with torch.device("meta"):
        assert create_model("CLIP_VITT16", num_classes=3, dropout_rate=0.2).dropout.p == 0.2


def test_released_defaults():
    cfg = get_model_config("CLIP_TimeMamba_like_frozen")
    assert (cfg["attention_style"], cfg["temporal_mixer"], cfg["num_frames"]) == ("frozen-in-time", "mamba", 4)
    assert get_model_config("CLIP_ViViM_tiny_hs4")["d_state"] == 4
    assert all(get_model_config(n)["drop_path_rate"] == 0.0 for n in list_models())
