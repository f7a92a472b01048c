"""Broken checkpoints: truncated file, wrong model, wrong frame count, malicious pickle -> clear errors; the
malicious payload never executes (neither through load_checkpoint nor through the engines' --resume)."""
from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
from engine_helpers import TINY_MODEL, pretrain_args, synthetic_root

from lavila.models import create_model
from lavila.train import loop
from lavila.train.checkpointing import load_model_weights
from lavila.train.loop import CHECKPOINT
from lavila.train.pretrain import PretrainEngine
from lavila.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "text_width": 32, "text_layers": 1, "text_heads": 2,
        "project_embed_dim": 16, "img_size": 32}


def _model(frames: int = 2, **kw):
    return create_model("CLIP_TimeSformerB16", num_frames=frames, **{**TINY, **kw})


class _Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"state_dict": _model().state_dict(), "epoch": 1, "args": {"model": "CLIP_TimeSformerB16"}}, path)
    return path


def test_truncated_checkpoint_is_a_clear_error(tiny_ckpt, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(tiny_ckpt.read_bytes()[: tiny_ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint") as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_zero_byte_and_text_checkpoints_are_clear_errors(tmp_path):
    for name, content in (("empty.pt", b""), ("text.pt", b"hello, not a checkpoint\n")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)


def test_wrong_model_is_a_clear_error(tiny_ckpt):
    other = _model(embed_dim=48, num_heads=3)
    with pytest.raises((CheckpointError, KeyError, ValueError), match="(?i)shape|match|wrong model"):
        load_model_weights(other, load_checkpoint(tiny_ckpt))


def test_unrelated_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pt"
    save_checkpoint({"state_dict": torch.nn.Linear(3, 4).state_dict()}, path)
    with pytest.raises((CheckpointError, KeyError, ValueError), match="(?i)missing|match"):
        load_model_weights(_model(), load_checkpoint(path))


def test_wrong_frame_count_is_resized_explicitly_or_refused(tiny_ckpt):
    """A 2-frame checkpoint into a 4-frame model: the temporal embedding is resized (as the released recipes
    inflate 4 -> 16 frames) to the model's shape — never a silent shape mismatch; with resizing off it is refused."""
    from lavila.models.released import load_released_state_dict

    model = _model(frames=4)
    sd = load_checkpoint(tiny_ckpt)["state_dict"]
    load_model_weights(model, load_checkpoint(tiny_ckpt))
    temporal = [k for k, v in model.state_dict().items() if "temporal" in k and v.shape != sd[k].shape]
    assert temporal, "expected a temporal embedding whose shape depends on the frame count"
    with pytest.raises((CheckpointError, KeyError, ValueError), match="(?i)shape|match|frame|temporal"):
        load_released_state_dict(_model(frames=4), sd, temporal_resize="none")


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _model().state_dict(), "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as info:
        load_checkpoint(path)
    assert "os.system" in str(info.value) or "posix.system" in str(info.value)
    assert not marker.exists()


def test_plain_pickle_with_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_released_namespace_args_still_load(tmp_path):
    path = tmp_path / "released.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in _model().state_dict().items()},
                "args": argparse.Namespace(model="CLIP_TimeSformerB16", clip_length=2)}, path)
    ckpt = load_checkpoint(path)
    load_model_weights(_model(), ckpt)
    assert ckpt["args"].clip_length == 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


def test_engine_resume_from_malicious_or_truncated_file_fails_cleanly(data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, evil)
    rc = loop.main(PretrainEngine(), pretrain_args(data, tmp_path / "a", "--batch-size", "8", "--epochs", "1",
                                                   "--resume", str(evil)))
    assert rc == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert "refusing to load" in err and str(evil) in err


def test_torn_auto_resume_checkpoint_is_a_clear_error(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT).write_bytes(b"PK\x03\x04 torn")
    rc = loop.main(PretrainEngine(), pretrain_args(data, out, "--batch-size", "8", "--epochs", "1"))
    assert rc == 2 and str(out / CHECKPOINT) in capsys.readouterr().err


def test_tiny_model_flags_match_checkpoint_helper(tmp_path):
    """The engine flags used above build the same architecture as _model() (so its checkpoints fit the engines)."""
    engine = PretrainEngine()
    args = loop.parse_engine_args(engine, [*TINY_MODEL, "--output-dir", str(tmp_path)])
    built = {k: v.shape for k, v in engine.build_model(args).state_dict().items()}
    assert built == {k: v.shape for k, v in _model().state_dict().items()}
