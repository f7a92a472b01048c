"""The errors a training run reports as one line (``loop.main`` catches them); no imports, so every module of
``lavila.train`` can raise them."""
from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot continue (bad flags, no data, diverged)."""


class NonFiniteLossError(TrainingError):
    pass
