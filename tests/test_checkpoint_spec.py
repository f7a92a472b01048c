"""A checkpoint is read in one way: its state dict found (``state_dict`` / ``model`` / ``module``, ``module.``
stripped) and a classifier told apart by :mod:`lavila.utils.checkpoint`, its architecture read by
:mod:`lavila.models.checkpoint_spec`; the zoo, the classification engine and eval_zeroshot.py agree."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from engine_helpers import TINY_MODEL, TINY_OVERRIDES

from lavila import zoo
from lavila.models import VideoClassifier, create_model
from lavila.models.checkpoint_spec import checkpoint_frames, checkpoint_model_spec, checkpoint_norm_style
from lavila.utils.checkpoint import classifier_classes, is_classifier_state_dict, save_checkpoint, unwrap_state_dict

NAME = "CLIP_TimeSformerB16"


def _wrap(sd: dict, wrapper: str, prefix: str) -> dict:
    sd = {prefix + k: v for k, v in sd.items()}
    return sd if wrapper == "bare" else {wrapper: sd, "epoch": 1}


@pytest.mark.parametrize("wrapper", ["bare", "state_dict", "model", "module"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_classifier_recognised_in_every_wrapping(wrapper, prefix):
    cls = {"fc_cls.weight": torch.zeros(7, 8), "fc_cls.bias": torch.zeros(7),
           "visual.temporal_embed": torch.zeros(1, 3, 8)}
    clip = {"visual.temporal_embed": torch.zeros(1, 3, 8), "textual.ln_final.weight": torch.zeros(8)}
    assert is_classifier_state_dict(_wrap(cls, wrapper, prefix))
    assert classifier_classes(_wrap(cls, wrapper, prefix)) == 7
    assert not is_classifier_state_dict(_wrap(clip, wrapper, prefix))
    assert checkpoint_frames(_wrap(cls, wrapper, prefix)) == 3
    assert set(unwrap_state_dict(_wrap(cls, wrapper, prefix))) == set(cls)


def test_inspection_never_raises_on_files_without_a_state_dict():
    for obj in ({"state_dict": {}, "args": {}}, {}, None, [1, 2], {"model": "CLIP_VITT16"}):
        assert classifier_classes(obj) is None and checkpoint_frames(obj) is None


def test_norm_style_read_from_args():
    ckpt = {"args": argparse.Namespace(norm_style="lavila")}
    assert checkpoint_norm_style(ckpt) is None  # not a flag value of the engines / eval_zeroshot.py
    assert checkpoint_norm_style(ckpt, ("openai", "timm", "lavila")) == "lavila"
    assert checkpoint_norm_style({"args": {"norm_style": "timm"}}) == "timm" and checkpoint_norm_style(None) is None


@pytest.fixture()
def wrapped_classifier(tmp_path) -> tuple[Path, VideoClassifier]:
    """A released-style classification checkpoint: DDP keys under ``model``, Namespace args."""
    torch.manual_seed(0)
    model = create_model(NAME, num_classes=5, **TINY_OVERRIDES)
    torch.nn.init.normal_(model.fc_cls.weight)
    path = tmp_path / "cls.pt"
    save_checkpoint({"model": {"module." + k: v for k, v in model.state_dict().items()},
                     "args": argparse.Namespace(model=NAME, clip_length=2)}, path)
    return path, model


def test_zoo_engine_and_eval_agree_on_a_wrapped_classifier(wrapped_classifier, tmp_path):
    from lavila.train.finetune_classification import ClassificationEngine
    from lavila.train.loop import parse_engine_args
    from lavila.utils.checkpoint import load_checkpoint

    path, model = wrapped_classifier
    ckpt = load_checkpoint(path)
    assert zoo.infer_model_spec(ckpt) == {"model": NAME, "num_frames": 2, "num_classes": 5}
    assert checkpoint_model_spec(ckpt) == (NAME, {"num_frames": 2})

    built = zoo.build_model_from_checkpoint(path, **TINY_OVERRIDES)
    assert isinstance(built, VideoClassifier) and torch.equal(built.fc_cls.weight, model.fc_cls.weight)

    engine = ClassificationEngine()
    engine.num_classes = 5  # prepare_args sets it from the action vocabulary
    args = parse_engine_args(engine, ["--pretrain-model", str(path), "--output-dir", str(tmp_path / "out"),
                                      *TINY_MODEL])
    tuned = engine.build_model(args)
    assert torch.equal(tuned.fc_cls.weight, model.fc_cls.weight)  # loaded as a classifier, not a fresh head

    from engine_helpers import load_script

    script = load_script("eval_zeroshot")
    eval_args = script.build_parser().parse_args(["--resume", str(path), "--model-overrides",
                                                  "embed_dim=32", "depth=1", "num_heads=2", "project_embed_dim=16",
                                                  "img_size=32"])
    with pytest.raises(script.EvalError, match="classifier"):
        script.build_model(eval_args)
