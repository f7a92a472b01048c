"""Run logging: console on rank 0, a JSONL file of metrics, TensorBoard when installed, progress bars.

``MetricLogger(output_dir)`` appends one JSON object per line to ``<output_dir>/metrics.jsonl``:
``{"type": "step", "step": ..., "epoch": ..., <metrics>}`` every logged step and ``{"type": "epoch", ...}`` per
epoch (``"type": "eval"`` for evaluation-only runs). Only rank 0 writes. A resumed run calls ``resume_at`` first:
records past the checkpoint's step (written by the interrupted run after its last save) are dropped, and TensorBoard
hides them (``purge_step``), so curves do not overlap. Every TensorBoard scalar is indexed by the optimiser step.
``progress(iterable)`` is a tqdm bar on a terminal and a periodic plain line otherwise (Slurm logs, CI).
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


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to ``sys.stdout`` as it is at each record, not as it was when the logger was made (an entry script run
    in-process, e.g. under pytest's capture, would otherwise keep writing to a closed stream)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def get_logger(name: str = "lavila") -> logging.Logger:
    """A console logger that prints INFO on rank 0 and only warnings elsewhere."""
    logger = logging.getLogger(name)
    if not getattr(logger, "_lavila_configured", False):
        handler = _CurrentStdoutHandler()
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
        self._tb_wanted = tensorboard
        self._purge_step: int | None = None
        if not self.enabled or output_dir is None:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / METRICS_FILE

    def _writer(self) -> Any:
        """The TensorBoard writer, opened on first use (after ``resume_at`` has set its ``purge_step``)."""
        if self._tb is None and self._tb_wanted and self.path is not None:
            self._tb_wanted = False
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=self._purge_step)
            except Exception:  # tensorboard not installed or broken: JSONL is still written
                self._tb = None
        return self._tb

    def resume_at(self, global_step: int, epoch: int) -> int:
        """A run resumed after ``global_step`` optimiser steps, in ``epoch``: drop the records the interrupted run
        wrote past that point (steps > ``global_step``, epoch records of ``epoch`` and later); returns how many."""
        self._purge_step = global_step + 1
        if not self.enabled or self.path is None or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: drop it
                dropped += 1
                continue
            step, rec_epoch = record.get("step"), record.get("epoch")
            later = (record.get("type") == "step" and isinstance(step, int) and step > global_step) or \
                (record.get("type") != "step" and isinstance(rec_epoch, int) and rec_epoch >= epoch)
            if later:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        return dropped

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

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any], kind: str = "epoch", step: int | None = None) -> None:
        """One epoch's record; TensorBoard puts it at optimiser step ``step`` (default: the epoch number)."""
        if not self.enabled:
            return
        self._write({"type": kind, "epoch": epoch, **metrics})
        self._tb_scalars(kind, metrics, epoch if step is None else step)
        if self._tb is not None:
            self._tb.flush()

    def _tb_scalars(self, prefix: str, metrics: Mapping[str, Any], step: int) -> None:
        writer = self._writer()
        if writer is None:
            return
        for k, v in metrics.items():
            v = _jsonable(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                writer.add_scalar(f"{prefix}/{k}", v, step)

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
                 unit: str = "it", start: int = 0):
        self.iterable, self.total, self.desc, self.unit, self.start = iterable, total, desc, unit, start
        self.every, self.seconds, self.file = max(every, 1), seconds, file
        self.postfix = ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def __iter__(self) -> Iterator[Any]:
        start = last = time.monotonic()
        i = 0
        for i, item in enumerate(self.iterable, self.start + 1):
            yield item
            if self.file is None:
                continue
            now = time.monotonic()
            if i % self.every == 0 or now - last >= self.seconds or i == self.total:
                total = f"/{self.total}" if self.total else ""
                rate = (i - self.start) / max(now - start, 1e-9)
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
             seconds: float = 30.0, enabled: bool | None = None, file: Any = None, unit: str = "it",
             start: int = 0) -> Any:
    """tqdm on a terminal, periodic lines (rate in ``unit``/s and ETA) when output is redirected, nothing off
    rank 0.

    The returned object iterates like ``iterable`` and has ``set_postfix_str``. ``start``: items already done before
    ``iterable`` begins (a resumed epoch), so the count runs ``start + 1 .. total``.
    """
    file = file or sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    enabled = is_main_process() if enabled is None else enabled
    if not enabled:
        return _PeriodicLines(iterable, total, desc, every=every, seconds=seconds, file=None, unit=unit, start=start)
    isatty = getattr(file, "isatty", lambda: False)()
    if isatty:
        try:
            from tqdm import tqdm

            return tqdm(iterable, total=total, desc=desc, file=file, dynamic_ncols=True, unit=unit, initial=start)
        except ImportError:
            pass
    return _PeriodicLines(iterable, total, desc, every=every, seconds=seconds, file=file, unit=unit, start=start)
