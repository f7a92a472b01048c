"""Shared pytest fixtures.

Tests that need the real reference material in ``../shared`` (next to the project root) use the
``shared_dir`` / ``ek100_annotations`` fixtures, which skip with a clear reason when it is absent
(a user's clone has no ``../shared``; CI has it).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("LAVILA_SHARED_DIR", REPO_ROOT.parent / "shared"))

# Two cores on CI: keep intra-op threads low so parallel helpers and workers do not thrash.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_sessionstart(session: pytest.Session) -> None:
    """With a C compiler present, a kernel that fails to build fails the session with the compiler's message (the
    kernel tests skip only when there is no compiler at all)."""
    from kernel_check import kernel_build_failures

    failures = kernel_build_failures()
    if failures:
        pytest.exit("a compiled C kernel failed to build although a C compiler is present:\n" + "\n".join(failures),
                    returncode=1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"reference material not found at {SHARED_DIR} (only present on CI / dev machines)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def ek100_annotations(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "ek100" / "epic-kitchens-100-annotations"
    if not path.is_dir():
        pytest.skip(f"EK100 annotations not found at {path}")
    return path


@pytest.fixture(scope="session")
def checkpoint_keys_spec(shared_dir: Path) -> dict:
    import json

    path = shared_dir / "spec" / "checkpoint_keys.json"
    if not path.is_file():
        pytest.skip(f"checkpoint key spec not found at {path}")
    return json.loads(path.read_text())


@pytest.fixture
def lavila_log_to_caplog(monkeypatch):
    """The 'lavila' logger does not propagate (its own console handler); let caplog see its records."""
    from lavila.utils.logging import get_logger

    monkeypatch.setattr(get_logger("lavila"), "propagate", True)


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread (two threads on a loaded 2-core machine spin ~100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trainable_temperature(tmp_path_factory):
    """A tiny checkpoint pretrained with a trainable temperature (the demo's ``--no-freeze-temperature``)."""
    from engine_helpers import tiny_pretrained_checkpoint

    return tiny_pretrained_checkpoint(tmp_path_factory, freeze_temperature=False)
