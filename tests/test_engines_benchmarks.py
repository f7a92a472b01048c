"""Fine-tuning on LaViLa's extra benchmarks end to end on generated data with a tiny model (CPU): EGTEA
classification (``main_finetune_classification.py --dataset egtea``) and Charades-Ego video-text fine-tuning
(``main_finetune_retrieval.py --dataset charades_ego``, InfoNCE on ``metadata_filtered_train.pkl``)."""
from __future__ import annotations

import math

import pytest
from engine_helpers import TINY_MODEL, benchmark_data, tiny_pretrained_checkpoint

from lavila.evaluation.benchmarks import benchmark_class_embeddings, evaluate_charades_ego
from lavila.evaluation.zeroshot import sharded_loader
from lavila.train.finetune_classification import ClassificationEngine
from lavila.train.finetune_retrieval import RetrievalEngine
from lavila.train.loop import CHECKPOINT, TrainingError, run
from lavila.utils.checkpoint import load_checkpoint
from lavila.utils.logging import read_metrics
from lavila.zoo import build_model_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: steady timings on a loaded machine

EVAL_FLAGS = ["--input-size", "32", "--clip-length", "2", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # EGTEA: 12 clips, 6 in each split; Charades-Ego: 4 test videos (every class has a positive), 3 train videos
    # (6 trimmed clips)
    return benchmark_data(tmp_path_factory, "ft_bench_data", ego4d_videos=1, video_sec=8.0, egtea_clips=12,
                          charades_train_videos=3, egomcq_questions=0)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return tiny_pretrained_checkpoint(tmp_path_factory)


def _mean(values):
    return sum(values) / len(values)


# ---- EGTEA ----------------------------------------------------------------------------------------------------------

def _egtea_data(data):
    out, manifest = data
    m = manifest["egtea"]
    return ["--dataset", "egtea", "--root", str(out / m["root"]), "--val-metadata", str(out / m["test"]),
            "--num-clips", "2", "--num-crops", "3"], out / m["train"], out / m["classes"]


def test_egtea_finetune_end_to_end(data, pretrained, tmp_path):
    val, train_split, classes_file = _egtea_data(data)
    out = tmp_path / "egtea"
    engine = ClassificationEngine()
    summary = run(engine, [*val, "--train-metadata", str(train_split), "--pretrain-model", str(pretrained),
                           "--output-dir", str(out), *TINY_MODEL, "--batch-size", "3", "--epochs", "6",
                           "--eval-freq", "1", "--fix-lr", "--lr", "3e-2", "--no-lr-scaling", "--mixup", "0",
                           "--cutmix", "0", "--dropout-rate", "0"])
    assert summary["status"] == "finished"
    losses = [r["loss"] for r in read_metrics(out, "step")]
    assert len(losses) == 12  # 6 training clips // 3 x 6 epochs
    assert _mean(losses[-3:]) < _mean(losses[:3]) - 0.3, losses

    # the classifier has one row per line of action_idx.txt, and the checkpoint keeps the class texts
    lines = classes_file.read_text().splitlines()
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert ckpt["state_dict"]["fc_cls.weight"].shape[0] == len(lines) == len(ckpt["classes"])
    assert ckpt["classes"][0] == "take cup"  # "Take_cup 1"
    assert "actions" not in ckpt and ckpt["metric"] == "mean_acc"

    # --num-clips windows per validation clip, one centre crop each: LaViLa's fine-tuning takes its --num-crops 3
    # crops from the centre crop (three copies of it)
    views, _ = engine.validation.dataset[0]
    assert views.shape == (2, 3, 2, 32, 32)
    log = (out / "log.txt").read_text()
    assert "--num-crops has no effect" in log and "--num-clips has no effect" not in log

    metrics = summary["metrics"]
    assert set(metrics) == {"acc1", "mean_acc", "mean_acc_present"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics  # fractions
    epochs = read_metrics(out, "epoch")
    tracked = [r["test_mean_acc"] for r in epochs]
    assert len(tracked) == 6 and summary["best"] == max(tracked) > 0  # mean_acc is tracked
    assert load_checkpoint(out / "checkpoint_best.pt")["best_acc1"] == summary["best"]

    final_probs = engine.validation.outputs["probs"]
    for name, expected in ((CHECKPOINT, metrics), ("checkpoint_best.pt", None)):
        evaluator = ClassificationEngine()
        evaluated = run(evaluator, [*val, "--evaluate", "--resume", str(out / name), "--output-dir",
                                    str(tmp_path / f"eval_{name}"), *EVAL_FLAGS])
        assert evaluated["status"] == "evaluated"
        if expected is not None:
            assert evaluated["metrics"] == pytest.approx(expected, abs=1e-6)
            # the same probabilities, not only the same (coarse) accuracies
            assert evaluator.validation.outputs["probs"] == pytest.approx(final_probs, abs=1e-6)
        else:
            assert evaluated["metrics"]["mean_acc"] == pytest.approx(summary["best"], abs=1e-6)


@pytest.mark.parametrize("flag, value, message", [("--num-clips", "0", "--num-clips must be at least 1"),
                                                   ("--clip-stride", "0", "--clip-stride must be at least 1")])
def test_egtea_bad_views_fail_at_start_up(data, pretrained, tmp_path, flag, value, message):
    # not after a training epoch, as an unreadable validation video
    val, train_split, _ = _egtea_data(data)
    with pytest.raises(TrainingError, match=message):
        run(ClassificationEngine(), [*val, "--train-metadata", str(train_split), "--pretrain-model", str(pretrained),
                                     "--output-dir", str(tmp_path), *TINY_MODEL, "--batch-size", "3", "--epochs", "1",
                                     flag, value])
    assert not (tmp_path / CHECKPOINT).exists()


# ---- Charades-Ego ---------------------------------------------------------------------------------------------------

def _charades_data(data):
    out, manifest = data
    m = manifest["charades_ego"]
    return ["--dataset", "charades_ego", "--root", str(out / m["root"]), "--val-metadata", str(out / m["test"])], \
        out / m["train_clips"]


def test_charades_ego_finetune_end_to_end(data, pretrained, tmp_path):
    val, train_clips = _charades_data(data)
    out = tmp_path / "charades"
    engine = RetrievalEngine()
    # one batch of all 6 trimmed clips per step: the InfoNCE of the whole set goes down, and below ln 6 (what
    # embeddings that ignore the pairing, e.g. one text for every clip, give at best)
    summary = run(engine, [*val, "--train-metadata", str(train_clips), "--pretrain-model", str(pretrained),
                           "--output-dir", str(out), *TINY_MODEL, "--batch-size", "6", "--epochs", "10",
                           "--eval-freq", "10", "--fix-lr", "--lr", "1e-3"])
    assert summary["status"] == "finished"
    losses = [r["loss"] for r in read_metrics(out, "step")]
    assert len(losses) == 10
    assert _mean(losses[-2:]) < min(_mean(losses[:2]) - 0.1, math.log(6) - 0.05), losses
    metrics = summary["metrics"]
    assert 0.0 < metrics["map"] <= 1.0 and summary["best"] == metrics["map"]
    assert load_checkpoint(out / CHECKPOINT)["metric"] == "map"

    # LaViLa's fine-tuning validation: views averaged, softmax over the classes even for one view (its zero-shot
    # script keeps one view's raw cosines)
    model = build_model_from_checkpoint(out / CHECKPOINT).eval()
    dataset = engine.validation.dataset
    classes = benchmark_class_embeddings(model, dataset.classes, "cpu")
    loader = sharded_loader(dataset, 6)
    finetune_metrics, finetune_scores = evaluate_charades_ego(model, loader, classes, "cpu", pooling="mean",
                                                              softmax_single=True)
    _, zeroshot_scores = evaluate_charades_ego(model, loader, classes, "cpu")
    scores = engine.validation.outputs["scores"]
    assert scores == pytest.approx(finetune_scores, abs=1e-6)
    assert scores.sum(1) == pytest.approx(1.0, abs=1e-5) and not zeroshot_scores.sum(1) == pytest.approx(1.0)
    assert metrics["map"] == pytest.approx(finetune_metrics["map"], abs=1e-9)

    evaluator = RetrievalEngine()
    evaluated = run(evaluator, [*val, "--evaluate", "--resume", str(out / CHECKPOINT), "--output-dir",
                                str(tmp_path / "eval"), *EVAL_FLAGS])
    assert evaluated["status"] == "evaluated"
    assert evaluated["metrics"] == pytest.approx(metrics, abs=1e-6)
    assert evaluator.validation.outputs["scores"] == pytest.approx(scores, abs=1e-6)
