"""The resumable distributed training sampler and per-sample seeding (evaluation sharding:
:func:`lavila.evaluation.zeroshot.sharded_loader`)."""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ResumableDistributedSampler(Sampler[int]):
    """``DistributedSampler`` semantics (seed + epoch shuffle shared by all ranks, padding to a multiple of the world
    size, rank ``r`` takes positions ``r::world``) plus ``set_start`` to skip the samples an interrupted run had
    already consumed in this epoch. With one process it is a seeded per-epoch shuffle. ``reshuffle=False``
    (``--epoch-shuffle reference``) keeps epoch 0's order in every epoch, as the reference's pretraining and MIR
    engines, which never call ``set_epoch`` on their ``DistributedSampler``."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 reshuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.rank, self.world, self.shuffle, self.seed = size, rank, world_size, shuffle, seed
        self.reshuffle = reshuffle
        self.epoch, self.start = 0, 0
        self.per_rank = -(-size // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch."""
        self.start = start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + (self.epoch if self.reshuffle else 0))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world
        order = (order * (-(-total // len(order))))[:total]
        return order[self.rank:total:self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class PerSampleSeededDataset(Dataset):
    """Wraps a training dataset so sample ``i`` of epoch ``e`` draws its augmentation (crop, frame jitter, caption
    choice) from a generator seeded by ``(seed, e, i)`` alone.

    The augmentation then does not depend on the rank, the number of processes or DataLoader workers, or on where a
    resumed run restarted: one process with batch 2B sees exactly the samples that two processes with batch B see.
    The global random state is saved and restored around each item, so model-side randomness is unaffected.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch * 100_003 + int(index)) % (2**63 - 1)
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            # CPU generator only: torch.manual_seed would also queue a CUDA re-seed (with a formatted stack, ~1 ms
            # per sample in a worker) that fork_rng(devices=[]) does not undo.
            torch.default_generator.manual_seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
            random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
