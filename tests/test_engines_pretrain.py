"""Pretraining engine end to end on generated data with a tiny model (CPU)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from engine_helpers import paths, pretrain_args, state_dicts_equal, synthetic_root

from lavila.train.loop import CHECKPOINT, run
from lavila.train.preemption import PreemptionFlag
from lavila.train.pretrain import PretrainEngine
from lavila.utils.checkpoint import load_checkpoint
from lavila.utils.logging import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_root(tmp_path_factory)


def _val(data) -> list[str]:
    p = paths(data)
    return ["--root-val", p["ek_root"], "--val-metadata", p["mir_test"]]


def test_pretrain_loss_decreases_saves_and_evaluate_reproduces(data, tmp_path):
    out = tmp_path / "run"
    argv = pretrain_args(data, out, "--batch-size", "4", "--epochs", "4", "--eval-freq", "4", "--fix-lr",
                         "--lr", "2e-3", *_val(data))
    summary = run(PretrainEngine(), argv)
    assert summary["status"] == "finished"
    losses = [r["loss"] for r in read_metrics(out, "step")]
    assert len(losses) == 16  # 19 clips // 4 = 4 steps x 4 epochs
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2, losses
    assert (out / CHECKPOINT).is_file() and (out / "checkpoint_best.pt").is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["batch_size"] == 4 and config["model"] == "CLIP_TimeSformerB16"

    ckpt = load_checkpoint(out / CHECKPOINT)  # weights_only: args is a plain dict
    assert isinstance(ckpt["args"], dict) and ckpt["epoch"] == 4 and ckpt["model_config"]["embed_dim"] == 32
    reported = summary["metrics"]["avg_map"]
    assert ckpt["best_acc1"] == pytest.approx(reported)

    evaluated = run(PretrainEngine(), ["--evaluate", "--resume", str(out / CHECKPOINT), "--output-dir",
                                       str(tmp_path / "eval"), "--input-size", "32", "--clip-length", "2",
                                       "--workers", "0", "--device", "cpu", "--batch-size", "3", *_val(data)])
    assert evaluated["status"] == "evaluated"
    assert evaluated["metrics"] == pytest.approx(summary["metrics"], abs=1e-6)


def test_pretrain_without_eval_data_trains(data, tmp_path):
    summary = run(PretrainEngine(), pretrain_args(data, tmp_path, "--batch-size", "8", "--epochs", "1"))
    assert summary["status"] == "finished" and summary["metrics"] == {}


RESUME_ARGS = ("--batch-size", "8", "--epochs", "2", "--lr", "1e-3", "--warmup-epochs", "1")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert run(PretrainEngine(), pretrain_args(data, out, *RESUME_ARGS))["status"] == "finished"
    return load_checkpoint(out / CHECKPOINT)


def test_resume_after_epoch_is_bit_identical(data, tmp_path, uninterrupted):
    first = run(PretrainEngine(), pretrain_args(data, tmp_path, *RESUME_ARGS), stop_after_epochs=1)
    assert first["status"] == "stopped"
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1
    second = run(PretrainEngine(), pretrain_args(data, tmp_path, *RESUME_ARGS))  # auto-resume
    assert second["status"] == "finished"
    resumed = load_checkpoint(tmp_path / CHECKPOINT)
    assert state_dicts_equal(uninterrupted["state_dict"], resumed["state_dict"])
    assert uninterrupted["global_step"] == resumed["global_step"] == 4
    # a restart would also end bit-identical on CPU: the relaunch must have run (and logged) only epoch 1's steps
    steps = [(r["step"], r["epoch"]) for r in read_metrics(tmp_path, "step")]
    assert steps == [(1, 0), (2, 0), (3, 1), (4, 1)], steps


class _StopAt(PreemptionFlag):
    """Pretends a SIGTERM arrives after ``n`` optimiser steps."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.reads = n, 0

    @property
    def signal(self):  # read once per optimiser step by the loop
        self.reads += 1
        return 15 if self.reads == self.n else None

    @signal.setter
    def signal(self, value):
        pass


def test_preemption_mid_epoch_saves_and_resumes_bit_identical(data, tmp_path, uninterrupted):
    stopped = run(PretrainEngine(), pretrain_args(data, tmp_path, *RESUME_ARGS), preemption=_StopAt(3))
    assert stopped["status"] == "preempted" and stopped["epoch"] == 1 and stopped["step_in_epoch"] == 1
    assert load_checkpoint(tmp_path / CHECKPOINT)["step_in_epoch"] == 1
    resumed = run(PretrainEngine(), pretrain_args(data, tmp_path, *RESUME_ARGS))
    assert resumed["status"] == "finished"
    assert state_dicts_equal(uninterrupted["state_dict"], load_checkpoint(tmp_path / CHECKPOINT)["state_dict"])


def test_signal_handler_sets_flag():
    import signal

    flag = PreemptionFlag()
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.signal == signal.SIGUSR1
    finally:
        flag.uninstall()


class _DivergingEngine(PretrainEngine):
    calls = 0

    def train_step(self, *a, **k):
        out = super().train_step(*a, **k)
        self.calls += 1
        if self.calls == 3:
            out["loss"] = out["loss"] * float("inf")
        return out


def test_non_finite_loss_stops_naming_the_step(data, tmp_path):
    from lavila.train.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 2 \(optimiser step 3\)"):
        run(_DivergingEngine(), pretrain_args(data, tmp_path, "--batch-size", "4", "--epochs", "1"))


def test_missing_data_is_a_clear_error_before_the_model(tmp_path):
    from lavila.train.loop import TrainingError

    with pytest.raises(TrainingError, match="--root"):
        run(PretrainEngine(), ["--output-dir", str(tmp_path), "--device", "cpu"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~25 s: two fresh interpreters
def test_torchrun_two_processes_match_one_process_at_step_1(data, tmp_path, repo_root):
    common = ("--epochs", "1", "--fix-lr", "--lr", "1e-3")
    run(PretrainEngine(), pretrain_args(data, tmp_path / "one", "--batch-size", "4", *common))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(repo_root / "main_pretrain.py"),
           *pretrain_args(data, tmp_path / "two", "--batch-size", "2", *common)]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = read_metrics(tmp_path / "one", "step")[0]
    two = read_metrics(tmp_path / "two", "step")[0]
    assert one["step"] == two["step"] == 1
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert torch.isfinite(torch.tensor(two["loss"]))


# ---- --pretrain-zoo deit: visual tower from DeiT, text tower from CLIP ViT-B/16 (--pretrain-clip-path) ------------

_TINY_VIT = {"embed_dim": 64, "depth": 1, "num_heads": 2, "img_size": 32, "text_width": 32, "text_layers": 1,
             "text_heads": 2, "project_embed_dim": 16, "num_frames": 2}


@pytest.fixture(scope="module")
def deit_and_clip_files(tmp_path_factory):
    import open_clip

    timm = pytest.importorskip("timm", reason="timm (the dev extra) builds the DeiT model these tests convert")
    torch.manual_seed(0)
    deit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=1,
                                                            num_heads=2, num_classes=10)
    clip = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=16, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=100, width=32, heads=2, layers=1))
    folder = tmp_path_factory.mktemp("init")
    torch.save({"model": deit.state_dict()}, folder / "deit.pth")  # the DeiT release layout
    torch.save(clip.state_dict(), folder / "clip.pt")  # open_clip state_dict
    return folder / "deit.pth", folder / "clip.pt", deit, clip


def _init_args(**kw):
    import argparse

    base = {"pretrain_zoo": "deit", "pretrain_path": None, "pretrain_clip_path": None, "trust_checkpoint": False}
    return argparse.Namespace(**{**base, **kw})


def test_deit_init_fills_visual_from_deit_and_text_from_clip(deit_and_clip_files):
    from lavila.models import create_model
    from lavila.train.engine_utils import init_pretrained

    deit_path, clip_path, deit, clip = deit_and_clip_files
    model = create_model("CLIP_VITT16", **_TINY_VIT)
    init_pretrained(model, _init_args(pretrain_path=str(deit_path), pretrain_clip_path=str(clip_path)))
    assert torch.equal(model.visual.ln_post.weight, deit.norm.weight)
    assert torch.equal(model.textual.ln_final.bias, clip.ln_final.bias)
    assert torch.equal(model.textual.positional_embedding, clip.positional_embedding)


def test_deit_init_without_clip_weights_is_a_clear_error(deit_and_clip_files, monkeypatch, tmp_path):
    import open_clip

    from lavila.models import create_model
    from lavila.train.engine_utils import init_pretrained
    from lavila.train.loop import TrainingError

    def offline(*a, **kw):  # open_clip's download of the OpenAI weights, offline (fails fast)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip, "create_model", offline)
    monkeypatch.setenv("LAVILA_ZOO_DIR", str(tmp_path))
    deit_path = deit_and_clip_files[0]
    model = create_model("CLIP_VITT16", **_TINY_VIT)
    with pytest.raises(TrainingError, match="--pretrain-clip-path FILE"):
        init_pretrained(model, _init_args(pretrain_path=str(deit_path)))
    with pytest.raises(TrainingError, match="--pretrain-path"):
        init_pretrained(model, _init_args(pretrain_clip_path="clip.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        init_pretrained(model, _init_args(pretrain_path=str(deit_path), pretrain_clip_path="missing.pt"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_clip_weights_file_may_be_openai_torchscript(tmp_path):
    from lavila.train.engine_utils import load_clip_state_dict

    layer = torch.nn.Linear(2, 3)
    torch.jit.script(layer).save(str(tmp_path / "ViT-B-16.pt"))  # OpenAI's release format is a TorchScript archive
    torch.save(layer.state_dict(), tmp_path / "open_clip.pt")
    args = _init_args()
    for name in ("ViT-B-16.pt", "open_clip.pt"):
        sd = load_clip_state_dict(str(tmp_path / name), args)
        assert sd.keys() == {"weight", "bias"} and torch.equal(sd["weight"], layer.weight)


def test_pretrain_engine_accepts_pretrain_clip_path(data, tmp_path, deit_and_clip_files):
    deit_path, clip_path, _, _ = deit_and_clip_files
    p = paths(data)
    overrides = [f"{k}={v}" for k, v in _TINY_VIT.items() if k not in ("img_size", "num_frames")]
    argv = ["--root", p["ego4d_root"], "--train-metadata", p["ego4d_meta"], "--output-dir", str(tmp_path),
            "--model", "CLIP_VITT16", "--model-overrides", *overrides, "--input-size", "32", "--clip-length", "2",
            "--workers", "0", "--device", "cpu", "--batch-size", "8", "--epochs", "1", "--pretrain-zoo", "deit",
            "--pretrain-path", str(deit_path), "--pretrain-clip-path", str(clip_path)]
    summary = run(PretrainEngine(), argv)
    assert summary["status"] == "finished"


@pytest.mark.slow  # ~30 s: two fresh interpreters
def test_torchrun_two_process_evaluation_matches_one_process(data, tmp_path, repo_root):
    """MIR evaluation goes through lavila.evaluation.zeroshot: whole batches per rank -> identical numbers."""
    run(PretrainEngine(), pretrain_args(data, tmp_path / "train", "--batch-size", "8", "--epochs", "1"))
    ckpt = str(tmp_path / "train" / CHECKPOINT)
    flags = ["--evaluate", "--resume", ckpt, "--input-size", "32", "--clip-length", "2", "--workers", "0",
             "--device", "cpu", "--batch-size", "3", *_val(data)]
    one = run(PretrainEngine(), [*flags, "--output-dir", str(tmp_path / "one")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(repo_root / "main_pretrain.py"), *flags, "--output-dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (two,) = [r for r in read_metrics(tmp_path / "two", "eval")]
    assert {k: two[k] for k in one["metrics"]} == one["metrics"]  # bit-identical


def test_training_clips_leave_workers_as_uint8_and_normalise_like_the_float_output(data, tmp_path):
    from lavila.train.engine_utils import video_to_device
    from lavila.train.loop import parse_engine_args
    from lavila.train.sampler import PerSampleSeededDataset

    args = parse_engine_args(PretrainEngine(), pretrain_args(data, tmp_path))
    train, _ = PretrainEngine().build_datasets(args)
    raw = PerSampleSeededDataset(train, seed=0)[1][0]
    assert raw.dtype == torch.uint8
    train.transform.output = "float"
    reference = PerSampleSeededDataset(train, seed=0)[1][0]
    normalised = video_to_device(raw[None], torch.device("cpu"), args)[0]
    assert normalised.dtype == torch.float32
    assert torch.equal(normalised, reference)  # same arithmetic: resuming or evaluating gives the same numbers
