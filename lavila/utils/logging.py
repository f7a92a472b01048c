"""Run logging: console on rank 0, a JSONL file of metrics, TensorBoard when installed, progress bars.

``MetricLogger(output_dir)`` appends one JSON object per line to ``<output_dir>/metrics.jsonl``:
``{"type": "step", "step": ..., "epoch": ..., <metrics>}`` every logged step and ``{"type": "epoch", ...}`` per
epoch (``"type": "eval"`` for evaluation-only runs). Only rank 0 writes. ``progress(iterable)`` is a tqdm bar on a
terminal and a periodic plain line otherwise (Slurm logs, CI).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lavila.utils.distributed import is_main_process

METRICS_FILE = "metrics.jsonl"


def get_logger(name: str = "lavila") -> logging.Logger:
    """A console logger that prints INFO on rank 0 and only warnings elsewhere."""
    logger = logging.getLogger(name)
    if not getattr(logger, "_lavila_configured", False):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
        logger._lavila_configured = True  # type: ignore[attr-defined]
    logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    return logger


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


class MetricLogger:
    """JSONL + optional TensorBoard metrics sink; a no-op on ranks other than 0."""

    def __init__(self, output_dir: str | os.PathLike | None, tensorboard: bool = True, enabled: bool | None = None):
        self.enabled = is_main_process() if enabled is None else enabled
        self.path: Path | None = None
        self._tb = None
        if not self.enabled or output_dir is None:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / METRICS_FILE
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(out / "tensorboard"))
            except Exception:  # tensorboard not installed or broken: JSONL is still written
                self._tb = None

    def _write(self, record: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record), sort_keys=False) + "\n")

    def log_step(self, step: int, metrics: Mapping[str, Any], epoch: int | None = None) -> None:
        if not self.enabled:
            return
        self._write({"type": "step", "step": step, "epoch": epoch, **metrics})
        self._tb_scalars("train", metrics, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any], kind: str = "epoch") -> None:
        if not self.enabled:
            return
        self._write({"type": kind, "epoch": epoch, **metrics})
        self._tb_scalars(kind, metrics, epoch)
        if self._tb is not None:
            self._tb.flush()

    def _tb_scalars(self, prefix: str, metrics: Mapping[str, Any], step: int) -> None:
        if self._tb is None:
            return
        for k, v in metrics.items():
            v = _jsonable(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` (or the output dir holding one), optionally only records of one ``type``."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("type") == kind]


class _PeriodicLines:
    """Iterator wrapper that prints ``desc i/total`` every ``every`` items or ``seconds`` seconds."""

    def __init__(self, iterable: Iterable[Any], total: int | None, desc: str, every: int, seconds: float, file: Any,
                 unit: str = "it"):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.every, self.seconds, self.file = max(every, 1), seconds, file
        self.postfix = ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def __iter__(self) -> Iterator[Any]:
        start = last = time.monotonic()
        i = 0
        for i, item in enumerate(self.iterable, 1):
            yield item
            if self.file is None:
                continue
            now = time.monotonic()
            if i % self.every == 0 or now - last >= self.seconds or i == self.total:
                total = f"/{self.total}" if self.total else ""
                rate = i / max(now - start, 1e-9)
                eta = f", ETA {_clock((self.total - i) / rate)}" if self.total and rate > 0 else ""
                print(f"{self.desc} {i}{total} ({rate:.2f} {self.unit}/s{eta}) {self.postfix}".rstrip(),
                      file=self.file, flush=True)
                last = now

    def __len__(self) -> int:
        return self.total or 0

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress(iterable: Iterable[Any], total: int | None = None, desc: str = "", every: int = 10,
             seconds: float = 30.0, enabled: bool | None = None, file: Any = None, unit: str = "it") -> Any:
    """tqdm on a terminal, periodic lines (rate in ``unit``/s and ETA) when output is redirected, nothing off
    rank 0.

    The returned object iterates like ``iterable`` and has ``set_postfix_str``.
    """
    file = file or sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    enabled = is_main_process() if enabled is None else enabled
    if not enabled:
        return _PeriodicLines(iterable, total, desc, every=every, seconds=seconds, file=None, unit=unit)
    isatty = getattr(file, "isatty", lambda: False)()
    if isatty:
        try:
            from tqdm import tqdm

            return tqdm(iterable, total=total, desc=desc, file=file, dynamic_ncols=True, unit=unit)
        except ImportError:
            pass
    return _PeriodicLines(iterable, total, desc, every=every, seconds=seconds, file=file, unit=unit)
