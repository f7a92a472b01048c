"""The shared training core with a toy engine: accumulation, samplers, config, checkpoint contents, CLI errors."""
from __future__ import annotations

import argparse

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from lavila.train.loop import CHECKPOINT, Engine, build_loader, main, run
from lavila.train.sampler import PerSampleSeededDataset, ResumableDistributedSampler
from lavila.utils.checkpoint import load_checkpoint


class _Points(Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.01 * torch.randn(5), self.y[i]  # small "augmentation" from the global RNG


class _ToyEngine(Engine):
    name = "toy"
    metric = "acc"
    defaults = {"clip_length": 1, "epochs": 2, "warmup_epochs": 0, "batch_size": 4, "lr": 0.1, "wd": 0.0}

    def build_datasets(self, args):
        return _Points(), _Points(8)

    def build_model(self, args):
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

    def build_criterion(self, args):
        return nn.CrossEntropyLoss()

    def train_step(self, model, batch, criterion, args, device):
        return {"loss": criterion(model(batch[0]), batch[1])}

    def evaluate(self, model, loader, args, device):
        correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in loader)
        return {"acc": correct / len(loader.dataset)}


def _argv(out, *extra):
    return ["--output-dir", str(out), "--device", "cpu", "--workers", "0", "--fix-lr", *extra]


def test_gradient_accumulation_equals_larger_batch(tmp_path):
    run(_ToyEngine(), _argv(tmp_path / "big", "--batch-size", "4", "--optimizer", "sgd"))
    run(_ToyEngine(), _argv(tmp_path / "acc", "--batch-size", "2", "--update-freq", "2", "--optimizer", "sgd"))
    a = load_checkpoint(tmp_path / "big" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "acc" / CHECKPOINT)
    assert a["global_step"] == b["global_step"] == 8
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)


def test_checkpoint_contents_and_best(tmp_path):
    summary = run(_ToyEngine(), _argv(tmp_path, "--epochs", "3"))
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt["epoch"] == 3 and ckpt["step_in_epoch"] == 0 and ckpt["engine"] == "toy"
    assert isinstance(ckpt["args"], dict) and ckpt["args"]["epochs"] == 3
    assert {"optimizer", "scaler", "rng", "state_dict"} <= set(ckpt)
    assert ckpt["best_acc1"] == pytest.approx(summary["best"])
    assert (tmp_path / "checkpoint_best.pt").is_file()
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])


def test_config_file_drives_the_engine(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"batch-size": 8, "epochs": 1, "output_dir": str(tmp_path / "o"),
                                   "device": "cpu", "workers": 0}))
    run(_ToyEngine(), ["--config", str(cfg), "--epochs", "2"])
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["batch_size"] == 8 and saved["epochs"] == 2
    assert load_checkpoint(tmp_path / "o" / CHECKPOINT)["global_step"] == 4


def test_main_reports_known_errors_with_status_2(tmp_path, capsys):
    class Broken(_ToyEngine):
        def build_datasets(self, args):
            return None, None

    assert main(Broken(), _argv(tmp_path)) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: no training data")


class _Unreadable(_Points):
    def __getitem__(self, i):
        if i == 3:
            from lavila.data.video import VideoDecodeError

            raise VideoDecodeError("/data/broken.mp4", "file not found")
        return super().__getitem__(i)


class _Dropped(_Points):
    def __getitem__(self, i):
        return None if i == 3 else super().__getitem__(i)  # a training dataset's skipped sample


@pytest.mark.parametrize("dataset, workers", [(_Dropped, "0"), (_Unreadable, "0"), (_Unreadable, "1")])
def test_skip_policy_raise_stops_with_one_error_line(tmp_path, capsys, dataset, workers):
    class Strict(_ToyEngine):
        def build_datasets(self, args):
            return dataset(), None

    argv = [a for a in _argv(tmp_path) if a not in ("--workers", "0")]
    assert main(Strict(), [*argv, "--workers", workers, "--skip-policy", "raise"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "--skip-policy" in errors[0]
    assert "Traceback" not in err
    if dataset is _Unreadable:
        assert "cannot decode video /data/broken.mp4: file not found" in errors[0]


def test_resumable_sampler_shards_pads_and_skips():
    full = ResumableDistributedSampler(10, shuffle=True, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(10))
    shards = [ResumableDistributedSampler(10, rank=r, world_size=3, shuffle=True, seed=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    got = [list(s) for s in shards]
    assert all(len(g) == 4 for g in got)  # 10 padded to 12
    assert [got[r][i] for i in range(4) for r in range(3)][:10] == order  # interleaved = single-process order
    shards[1].set_start(2)
    assert list(shards[1]) == got[1][2:] and len(shards[1]) == 2
    other = ResumableDistributedSampler(10, shuffle=True, seed=3)
    other.set_epoch(3)
    assert list(other) != order  # reshuffled every epoch


def test_evaluation_loader_gives_each_rank_whole_batches(monkeypatch):
    """Evaluation goes through zeroshot.sharded_loader: rank r of N encodes exactly the batches r, r + N, ... of one
    process, so the gathered results (in dataset order) match one process."""
    from lavila.evaluation import zeroshot
    from lavila.utils.distributed import DistInfo

    args = argparse.Namespace(batch_size=3, workers=0, seed=0, skip_policy="skip")
    batches = {}
    for rank in range(2):
        monkeypatch.setattr(zeroshot.du, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(zeroshot.du, "get_world_size", lambda: 2)
        info = DistInfo(rank, 2, rank, torch.device("cpu"), True)
        loader = build_loader(list(range(11)), args, info, training=False)
        assert isinstance(loader.batch_sampler, zeroshot.ShardedBatchSampler)
        batches[rank] = [b.tolist() for b in loader]
    assert batches == {0: [[0, 1, 2], [6, 7, 8]], 1: [[3, 4, 5], [9, 10]]}


def test_per_sample_seed_is_independent_of_access_order():
    ds = PerSampleSeededDataset(_Points(6), seed=1)
    ds.set_epoch(4)
    forward = [ds[i][0] for i in range(6)]
    backward = [ds[i][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    state = torch.get_rng_state()
    ds[0]
    assert torch.equal(state, torch.get_rng_state())  # global stream untouched
    ds.set_epoch(5)
    assert not torch.equal(ds[0][0], forward[0])


def test_args_namespace_type():
    from lavila.train.loop import parse_engine_args

    args = parse_engine_args(_ToyEngine(), ["--betas", "0.8", "0.9", "--local-rank", "1"])
    assert isinstance(args, argparse.Namespace) and args.betas == [0.8, 0.9] and args.update_freq == 1
    assert args.local_rank == 1  # older torchrun passes --local-rank; the environment decides anyway
