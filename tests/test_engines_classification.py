"""CLS fine-tuning engine end to end on generated data with a tiny model (CPU)."""
from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import TINY_MODEL, paths, synthetic_root, tiny_pretrained_checkpoint

from lavila.evaluation.classification import ek100_cls_metrics
from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.loop import CHECKPOINT, TrainingError, run
from lavila.utils.checkpoint import load_checkpoint
from lavila.utils.logging import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return tiny_pretrained_checkpoint(tmp_path_factory)


def _args(data, out, pretrained, *extra):
    p = paths(data)
    return ["--root", p["ek_root"], "--train-metadata", p["cls_train"], "--val-metadata", p["cls_val"],
            "--pretrain-model", str(pretrained), "--output-dir", str(out), *TINY_MODEL, *extra]


def test_cls_finetune_end_to_end(data, pretrained, tmp_path):
    out = tmp_path / "cls"
    summary = run(ClassificationEngine(), _args(data, out, pretrained, "--batch-size", "4", "--epochs", "4",
                                                "--eval-freq", "4", "--fix-lr", "--lr", "3e-3", "--no-lr-scaling",
                                                "--mixup", "0", "--cutmix", "0", "--dropout-rate", "0"))
    assert summary["status"] == "finished"
    losses = [r["loss"] for r in read_metrics(out, "step")]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    vocab = json.loads((out / "actions.json").read_text())["actions"]
    assert vocab == sorted(vocab)  # "verb:noun" sorted as strings
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["state_dict"]["fc_cls.weight"].shape[0] == len(vocab) and ckpt["actions"] == vocab
    assert "visual.image_projection" not in ckpt["state_dict"] and not any(k.startswith("textual.")
                                                                          for k in ckpt["state_dict"])
    metrics = summary["metrics"]
    assert set(metrics) >= {"acc1", "acc5", "mean_acc", "verb_acc1", "noun_acc1"}

    p = paths(data)
    evaluated = run(ClassificationEngine(), ["--evaluate", "--resume", str(out / CHECKPOINT), "--root", p["ek_root"],
                                             "--val-metadata", p["cls_val"], "--actions", str(out / "actions.json"),
                                             "--output-dir", str(tmp_path / "eval"), "--input-size", "32",
                                             "--clip-length", "2", "--workers", "0", "--device", "cpu"])
    assert evaluated["metrics"] == pytest.approx(metrics, abs=1e-6)


def test_cls_with_mixup_sgd_and_lr_scaling(data, pretrained, tmp_path):
    summary = run(ClassificationEngine(), _args(data, tmp_path, pretrained, "--batch-size", "8", "--epochs", "1",
                                                "--optimizer", "sgd", "--lr", "0.5", "--eval-freq", "5"))
    assert summary["status"] == "finished"
    (step,) = [r for r in read_metrics(tmp_path, "step") if r["step"] == 1]
    # warmup starts at lr_start scaled by global batch / 128
    assert step["lr"] == pytest.approx(1e-6 * 8 / 128)


def test_num_classes_must_match_vocabulary(data, pretrained, tmp_path):
    with pytest.raises(TrainingError, match="--num-classes 3806"):
        run(ClassificationEngine(), _args(data, tmp_path, pretrained, "--num-classes", "3806"))


def test_classification_metrics_marginalise_actions():
    # actions: 0 -> (verb 0, noun 1), 1 -> (verb 1, noun 1), 2 -> (verb 1, noun 0)
    act2verb, act2noun = torch.tensor([0, 1, 1]).numpy(), torch.tensor([1, 1, 0]).numpy()
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.4, 0.35, 0.25]]).numpy()
    targets = torch.tensor([0, 2, 1]).numpy()
    m = ek100_cls_metrics(probs, targets, act2verb, act2noun)  # what the engine reports
    assert m["acc1"] == pytest.approx(200 / 3)  # sample 3 predicts action 0, truth 1
    # verbs: sample 3 has verb-1 mass 0.6 > 0.4 -> verb correct everywhere
    assert m["verb_acc1"] == pytest.approx(100.0)
    # nouns: sample 2 noun-0 mass 0.7 (correct), sample 3 noun-1 mass 0.75 (correct)
    assert m["noun_acc1"] == pytest.approx(100.0)
    assert m["acc5"] == pytest.approx(100.0)
