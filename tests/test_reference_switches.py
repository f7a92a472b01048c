"""Reference-behaviour switches reach the engines: --epoch-shuffle (sample order over epochs), --cutmix-variant."""
from __future__ import annotations

import argparse

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from lavila.train.sampler import ResumableDistributedSampler


class _Range(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


@pytest.mark.parametrize("reshuffle", [True, False])
def test_sampler_order_matches_torch_distributed_sampler_with_or_without_set_epoch(reshuffle):
    """reshuffle=False is the reference's pretraining / MIR engines: DistributedSampler never told the epoch."""
    for rank in (0, 1):
        ours = ResumableDistributedSampler(11, rank, 2, seed=0, reshuffle=reshuffle)
        torch_sampler = DistributedSampler(_Range(11), num_replicas=2, rank=rank, shuffle=True, seed=0)
        orders = []
        for epoch in range(3):
            ours.set_epoch(epoch)
            if reshuffle:
                torch_sampler.set_epoch(epoch)
            orders.append(list(ours))
            assert orders[-1] == list(torch_sampler)
        assert (orders[0] == orders[1] == orders[2]) is (not reshuffle)


def test_epoch_shuffle_flag_reaches_the_training_loader():
    from lavila.train.finetune_retrieval import RetrievalEngine
    from lavila.train.loop import build_loader, parse_engine_args
    from lavila.utils.distributed import DistInfo

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False)
    for value, reshuffle in (("each-epoch", True), ("reference", False)):
        args = parse_engine_args(RetrievalEngine(), ["--epoch-shuffle", value, "--workers", "0", "--batch-size", "2"])
        loader = build_loader(_Range(6), args, info, training=True)
        assert loader.sampler.reshuffle is reshuffle
    assert not hasattr(parse_engine_args(RetrievalEngine(), []), "cutmix_variant")  # CLS-only switch
    with pytest.raises(SystemExit):
        parse_engine_args(RetrievalEngine(), ["--epoch-shuffle", "never"])
    assert isinstance(args, argparse.Namespace)


def test_cutmix_variant_flag_reaches_the_classification_mixup(tmp_path):
    from lavila.data.ek100 import ActionVocabulary
    from lavila.train.finetune_classification import ClassificationEngine
    from lavila.train.loop import parse_engine_args

    ActionVocabulary(["0:1", "1:0", "1:2"]).save(tmp_path / "actions.json")
    for value in ("hw", "reference"):
        engine = ClassificationEngine()
        args = parse_engine_args(engine, ["--actions", str(tmp_path / "actions.json"), "--output-dir",
                                          str(tmp_path / value), "--cutmix-variant", value])
        engine.prepare_args(args, None)
        assert engine.mixup.cutmix_variant == value
