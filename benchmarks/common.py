"""The contract shared by the benchmark scripts and ``run_all.py`` (see benchmarks/README.md).

Every ``benchmarks/bench_*.py`` exposes ``run(quick: bool) -> list[dict]``; each dict is one result row:

* ``name`` (str): what was measured, with the shape / config;
* ``baseline``, ``ours`` (float): the two figures, measured in the same run, in ``unit``;
* ``ratio`` (float): how many times better ours is (baseline/ours for times, ours/baseline for rates);
* ``target`` (float | str): the minimum ratio (a number), or a short text when the criterion is more than a ratio;
* ``passed`` (bool | None): target met; None for an informational row without a target;
* ``unit`` (str): e.g. "s", "clips/s";
* optional ``notes`` (str): extra figures (error, memory, backend, ...).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["make_row", "median_seconds", "format_table", "machine_info"]

REQUIRED_KEYS = ("name", "baseline", "ours", "ratio", "target", "passed", "unit")


def make_row(name: str, baseline: float, ours: float, unit: str, target: float | str,
             passed: bool | None = None, higher_is_better: bool = False, notes: str = "") -> dict:
    """A result row; ``passed`` defaults to ratio >= target when the target is a number."""
    if higher_is_better:
        ratio = ours / baseline if baseline else float("inf")
    else:
        ratio = baseline / ours if ours else float("inf")
    if passed is None and isinstance(target, (int, float)):
        passed = bool(ratio >= target)
    row = {"name": name, "baseline": baseline, "ours": ours, "ratio": ratio, "target": target, "passed": passed,
           "unit": unit}
    if notes:
        row["notes"] = notes
    return row


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones; also all the times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _fmt(x) -> str:
    if isinstance(x, float):
        if x == float("inf"):
            return "inf"
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """One table: name | baseline | ours | unit | ratio | target | result (| notes)."""
    header = ["benchmark", "baseline", "ours", "unit", "ratio", "target", "result", "notes"]
    body = []
    for r in rows:
        result = {True: "PASS", False: "FAIL", None: "info"}[r.get("passed")]
        target = r.get("target")
        target = f">= {target}x" if isinstance(target, (int, float)) else str(target)
        body.append([str(r.get("name")), _fmt(r.get("baseline")), _fmt(r.get("ours")), str(r.get("unit", "")),
                     _fmt(r.get("ratio")) + "x", target, result, str(r.get("notes", ""))])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # notes: no padding
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in body])


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")
