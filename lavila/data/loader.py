"""DataLoader construction with DistributedSampler support and a collate that drops and counts skipped samples.

Training datasets return ``None`` for a sample they cannot read and record its path and reason in their
``skip_tracker``; ``skip_collate`` drops the ``None`` items and counts them. The tracker lives in shared memory,
so counts and first paths from all worker processes reach the main process. A batch in which every sample was
skipped comes out as ``None`` (the training loop skips it). Call ``report_skips(loader, epoch)`` once per epoch.
With ``on_error="raise"`` a ``None`` sample raises instead.

Worker memory: each sample allocates a few MB-sized buffers (decoded frames, the float clip) and each batch holds
several of them, so with glibc's default heuristics most of them end up in fresh ``mmap`` pages that are faulted
in (and zeroed) on every sample: ~1,800 page faults and 6-8 ms of CPU per 8-frame 224-px float clip on the
project's 2-core VM. ``tune_worker_allocator`` (called once per DataLoader worker process by the video datasets)
makes glibc serve allocations below 32 MiB from the heap and keep up to 512 MiB of freed heap for reuse (faults
drop to ~5 per clip); the main process is never changed. Set ``LAVILA_WORKER_MALLOC=0`` to turn it off.

Example::

    from lavila.data.loader import build_loader, report_skips
    loader = build_loader(dataset, batch_size=8, num_workers=2, shuffle=True, distributed=dist_info.distributed)
    for epoch in range(epochs):
        set_loader_epoch(loader, epoch)
        for batch in loader:
            if batch is None:
                continue
            ...
        report_skips(loader, epoch)
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset, get_worker_info
from torch.utils.data import default_collate as torch_default_collate

__all__ = ["SkipTracker", "SkipCollate", "build_loader", "report_skips", "set_loader_epoch", "attach_skip_tracker",
           "SampleSkippedError", "tune_worker_allocator"]

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_tuned: dict[int, bool] = {}  # pid -> applied (a forked worker starts with its parent's entry, under another pid)


def tune_worker_allocator() -> bool:
    """Inside a DataLoader worker on glibc, once per process: allocations below 32 MiB come from the heap and up to
    512 MiB of freed heap is kept for reuse (see the module docstring). Returns whether it is applied; a no-op in
    the main process, on other C libraries, or with ``LAVILA_WORKER_MALLOC=0``."""
    pid = os.getpid()
    if pid not in _tuned:
        _tuned.clear()
        _tuned[pid] = _apply_worker_malloc_options()
    return _tuned[pid]


def _apply_worker_malloc_options() -> bool:
    if get_worker_info() is None or os.environ.get("LAVILA_WORKER_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: the parameter numbers are glibc's
            return False
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20))
    except (OSError, AttributeError):
        return False


class SampleSkippedError(RuntimeError):
    """Raised by the collate when skipping is disabled (``on_error='raise'``)."""


class SkipTracker:
    """Shared-memory count of skipped samples and the first ``max_paths`` (path, reason) records."""

    def __init__(self, max_paths: int = 5, path_bytes: int = 400) -> None:
        ctx = mp.get_context()
        self.max_paths, self.path_bytes = max_paths, path_bytes
        self._count = ctx.Value("l", 0)
        self._recorded = ctx.Value("l", 0)
        self._paths = ctx.Array("c", max_paths * path_bytes)

    def record(self, path: str, reason: str) -> None:
        """Remember a failed sample's path (called by the dataset, in whichever process reads it)."""
        log.debug("skipping sample %s: %s", path, reason)
        text = f"{path} ({reason})".encode("utf-8", "replace")[:self.path_bytes - 1]
        with self._recorded.get_lock():
            slot = self._recorded.value
            if slot >= self.max_paths:
                return
            self._recorded.value += 1
            start = slot * self.path_bytes
            self._paths[start:start + self.path_bytes] = text.ljust(self.path_bytes, b"\0")

    def add_dropped(self, n: int) -> None:
        with self._count.get_lock():
            self._count.value += n

    @property
    def count(self) -> int:
        return int(self._count.value)

    def first_paths(self) -> list[str]:
        with self._recorded.get_lock():
            n = self._recorded.value
            raw = bytes(self._paths[:n * self.path_bytes])
        return [raw[i * self.path_bytes:(i + 1) * self.path_bytes].rstrip(b"\0").decode("utf-8", "replace")
                for i in range(n)]

    def reset(self) -> None:
        with self._count.get_lock():
            self._count.value = 0
        with self._recorded.get_lock():
            self._recorded.value = 0

    def report(self, epoch: int | None = None, reset: bool = True, logger: logging.Logger | None = None) -> dict:
        """{"skipped": N, "first_paths": [...]} for the epoch; logs a warning when N > 0."""
        result = {"skipped": self.count, "first_paths": self.first_paths()}
        if result["skipped"]:
            (logger or log).warning("epoch %s: skipped %d unreadable sample(s); first: %s", epoch,
                                    result["skipped"], "; ".join(result["first_paths"]) or "(paths not recorded)")
        if reset:
            self.reset()
        return result


class SkipCollate:
    """Drops ``None`` samples (counting them) and collates the rest with ``default_collate``."""

    def __init__(self, tracker: SkipTracker, on_error: str = "skip") -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.tracker, self.on_error = tracker, on_error

    def __call__(self, batch: Sequence[Any]) -> Any:
        kept = [b for b in batch if b is not None]
        dropped = len(batch) - len(kept)
        if dropped:
            if self.on_error == "raise":
                raise SampleSkippedError(f"{dropped} sample(s) of this batch could not be read: "
                                         f"{self.tracker.first_paths() or 'see the log'}")
            self.tracker.add_dropped(dropped)
        return torch_default_collate(kept) if kept else None


def _leaf_datasets(dataset: Dataset) -> list[Dataset]:
    if isinstance(dataset, ConcatDataset):
        return [leaf for d in dataset.datasets for leaf in _leaf_datasets(d)]
    if isinstance(dataset, Subset):
        return _leaf_datasets(dataset.dataset)
    return [dataset]


def attach_skip_tracker(dataset: Dataset, tracker: SkipTracker) -> None:
    """Point every (nested) dataset that records skips at ``tracker``."""
    for leaf in _leaf_datasets(dataset):
        if hasattr(leaf, "skip_tracker"):
            leaf.skip_tracker = tracker


def build_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = False,
                 drop_last: bool = False, distributed: bool = False, seed: int = 0, pin_memory: bool = False,
                 on_error: str = "skip", persistent_workers: bool = False, prefetch_factor: int | None = None,
                 rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """A DataLoader with a ``DistributedSampler`` when ``distributed`` (shuffle/seed go to the sampler), the
    skip-and-count collate, and ``loader.skip_tracker``. Evaluation: ``shuffle=False, drop_last=False``."""
    tracker = SkipTracker()
    attach_skip_tracker(dataset, tracker)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    generator = torch.Generator()
    generator.manual_seed(seed)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                        num_workers=num_workers, collate_fn=SkipCollate(tracker, on_error), pin_memory=pin_memory,
                        drop_last=drop_last, generator=generator, **kwargs)
    loader.skip_tracker = tracker  # type: ignore[attr-defined]
    return loader


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """``sampler.set_epoch`` for distributed shuffling (a no-op for other samplers)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def report_skips(loader: DataLoader, epoch: int | None = None, logger: logging.Logger | None = None) -> dict:
    """Skipped-sample count and first paths of the epoch (then reset); logs a warning when any were skipped."""
    tracker = getattr(loader, "skip_tracker", None)
    if tracker is None:
        return {"skipped": 0, "first_paths": []}
    return tracker.report(epoch, logger=logger)
