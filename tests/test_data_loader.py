"""DataLoader worker set-up: the allocator tuning is applied in workers only, once, and can be turned off."""
from __future__ import annotations

import ctypes

import pytest
from torch.utils.data import DataLoader, Dataset

from lavila.data.loader import tune_worker_allocator

GLIBC = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


class _Probe(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> bool:
        return tune_worker_allocator()


def test_allocator_tuning_is_never_applied_in_the_main_process():
    assert tune_worker_allocator() is False
    assert not any(bool(f) for batch in DataLoader(_Probe(), batch_size=2, num_workers=0) for f in batch)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
@pytest.mark.parametrize("setting, expected", [(None, True), ("0", False)])
def test_allocator_tuning_in_workers_and_opt_out(monkeypatch, setting, expected):
    if setting is None:
        monkeypatch.delenv("LAVILA_WORKER_MALLOC", raising=False)
    else:
        monkeypatch.setenv("LAVILA_WORKER_MALLOC", setting)
    flags = [bool(f) for batch in DataLoader(_Probe(), batch_size=2, num_workers=2) for f in batch]
    assert flags == [expected] * 4
