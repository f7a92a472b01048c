"""The engines take the model settings from the checkpoint (--evaluate / --resume / --pretrain-model), refuse
flags that contradict it, log the model they built, and fine-tune from random weights on request."""
from __future__ import annotations

import json
import logging

import pytest
from engine_helpers import TINY_MODEL, paths, synthetic_root, tiny_pretrained_checkpoint

from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.finetune_retrieval import RetrievalEngine
from lavila.train.loop import TrainingError, run

pytestmark = pytest.mark.usefixtures("lavila_log_to_caplog")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return tiny_pretrained_checkpoint(tmp_path_factory)  # 2 frames, crop 32: not the engines' defaults (16, 224)


def _evaluate(data, ckpt, out, *extra):
    p = paths(data)
    return ["--evaluate", "--resume", str(ckpt), "--root", p["ek_root"], "--val-metadata", p["mir_test"],
            "--output-dir", str(out), "--workers", "0", "--device", "cpu", "--batch-size", "4", *extra]


def test_evaluate_takes_the_model_from_the_checkpoint_and_equals_eval_zeroshot(data, pretrained, tmp_path, caplog,
                                                                              monkeypatch):
    import eval_zeroshot

    with caplog.at_level(logging.INFO, logger="lavila"):
        summary = run(RetrievalEngine(), _evaluate(data, pretrained, tmp_path / "engine"))
    assert "from the checkpoint" in caplog.text
    assert "--clip-length 2" in caplog.text and "--input-size 32" in caplog.text
    assert "model CLIP_TimeSformerB16: 2 frames, crop 32, context length 77" in caplog.text
    p = paths(data)
    monkeypatch.chdir(tmp_path)  # eval_zeroshot.py's default output folder: work_dirs/zeroshot_<checkpoint stem>
    assert eval_zeroshot.main(["--resume", str(pretrained), "--mir-root", p["ek_root"], "--mir-metadata",
                               p["mir_test"], "--device", "cpu", "--batch-size", "4"]) == 0
    assert not (tmp_path / "zeroshot_metrics.json").exists()
    saved = tmp_path / "work_dirs" / "zeroshot_checkpoint" / "zeroshot_metrics.json"
    zeroshot = json.loads(saved.read_text())["ek100_mir"]
    assert summary["metrics"]["avg_map"] == pytest.approx(zeroshot["avg_map"], abs=1e-6)
    assert summary["metrics"] == pytest.approx(zeroshot, abs=1e-6)


@pytest.mark.parametrize("flag, value, what", [("--input-size", "64", "crop size is 32"),
                                                ("--clip-length", "8", "frame count is 2"),
                                                ("--context-length", "32", "context length is 77")])
def test_flag_contradicting_the_checkpoint_is_an_error(data, pretrained, tmp_path, flag, value, what):
    with pytest.raises(TrainingError, match=rf"{flag} {value} contradicts the checkpoint .*, whose {what}: drop "
                                            rf"{flag}"):
        run(RetrievalEngine(), _evaluate(data, pretrained, tmp_path, flag, value))


def _finetune(data, pretrained, out, *extra):
    p = paths(data)
    return ["--root", p["ek_root"], "--train-metadata", p["mir_train"], "--pretrain-model", str(pretrained),
            "--output-dir", str(out), "--workers", "0", "--device", "cpu", "--batch-size", "10", "--epochs", "1",
            *extra]


def test_model_flag_with_pretrain_model_is_not_ignored(data, pretrained, tmp_path):
    with pytest.raises(TrainingError, match=r"--model CLIP_VITB16 contradicts the checkpoint .*, whose model is "
                                            r"CLIP_TimeSformerB16: drop --model, or pass --random-init"):
        run(RetrievalEngine(), _finetune(data, pretrained, tmp_path, "--model", "CLIP_VITB16"))


def test_finetune_takes_architecture_and_crop_and_applies_a_new_frame_count_with_a_notice(data, pretrained,
                                                                                           tmp_path, caplog):
    import yaml

    with caplog.at_level(logging.INFO, logger="lavila"):
        # --epochs 0: everything up to the first step (settings, model, config.yaml), no training
        summary = run(RetrievalEngine(), _finetune(data, pretrained, tmp_path, "--clip-length", "3", "--epochs", "0",
                                                   "--fix-lr"))
    assert summary["status"] == "finished"
    assert "fine-tuning at 3 frames (--clip-length): the 2-frame temporal embedding" in caplog.text
    assert "model CLIP_TimeSformerB16: 3 frames, crop 32" in caplog.text
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())  # config.yaml tells what was built
    assert config["model"] == "CLIP_TimeSformerB16" and config["input_size"] == 32 and config["clip_length"] == 3


@pytest.mark.parametrize("how", [("--random-init",), pytest.param(("--pretrain-model", "none"),
                                                                    marks=pytest.mark.slow)])
def test_random_init_fine_tunes_from_random_weights(data, tmp_path, how):
    p = paths(data)
    argv = ["--root", p["ek_root"], "--train-metadata", p["cls_train"],
            "--val-metadata", p["cls_val"], "--output-dir", str(tmp_path), *TINY_MODEL, "--batch-size", "10",
            "--epochs", "1", "--eval-freq", "5", *how]
    summary = run(ClassificationEngine(), argv)
    assert summary["status"] == "finished" and summary["global_step"] == 2


def test_retrieval_without_a_checkpoint_names_random_init(data, tmp_path):
    p = paths(data)
    with pytest.raises(TrainingError, match=r"--pretrain-model .*or --random-init"):
        run(RetrievalEngine(), ["--root", p["ek_root"], "--train-metadata", p["mir_train"], "--output-dir",
                                str(tmp_path), *TINY_MODEL])


def test_pretrain_model_none_means_random_init():
    import argparse

    from lavila.train.engine_utils import starting_checkpoint
    from lavila.train.run_spec import describing_source

    args = argparse.Namespace(pretrain_model="none", random_init=False, resume="", evaluate=False)
    assert describing_source(args) is None and starting_checkpoint(args, "MIR fine-tuning") is None
