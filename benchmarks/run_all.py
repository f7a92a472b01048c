"""Run every ``benchmarks/bench_*.py`` (each exposes ``run(quick) -> list[dict]``, see common.py) and print one table.

    python benchmarks/run_all.py [--quick] [--only scan,train] [--json rows.json] [--markdown]

Exit status 1 when a row misses its target or a benchmark crashes (the crash is reported as a FAIL row).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import REQUIRED_KEYS, format_table, machine_info  # noqa: E402


def discover(only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        names = [n for n in names if any(key in n for key in only)]
    return names


def run_one(module_name: str, quick: bool) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(module_name)
        rows = list(module.run(quick=quick))
        for r in rows:
            missing = [k for k in REQUIRED_KEYS if k not in r]
            if missing:
                raise ValueError(f"{module_name}.run() returned a row without {missing}: {r}")
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        rows = [{"name": f"{module_name} crashed", "baseline": float("nan"), "ours": float("nan"),
                 "ratio": float("nan"), "target": "runs", "passed": False, "unit": "",
                 "notes": f"{type(exc).__name__}: {exc}"[:200]}]
    return rows, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (each script decides what that means)")
    parser.add_argument("--only", default="", help="comma-separated substrings of script names, e.g. scan,mir")
    parser.add_argument("--json", type=Path, help="write all rows (and the run's metadata) to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for RESULTS.md)")
    args = parser.parse_args()

    started = dt.datetime.now(dt.timezone.utc)
    all_rows = []
    for name in discover([s for s in args.only.split(",") if s]):
        print(f"== {name} ...", flush=True)
        rows, seconds = run_one(name, args.quick)
        print(f"   {name}: {len(rows)} rows in {seconds:.0f} s", flush=True)
        all_rows.extend(rows)
    total = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    cmd = "python benchmarks/run_all.py " + " ".join(sys.argv[1:])
    print(f"\n{started:%Y-%m-%d %H:%M} UTC; {machine_info()}; `{cmd.strip()}`; total {total:.0f} s\n")
    print(format_table(all_rows, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps({"date": started.isoformat(), "machine": machine_info(), "command": cmd,
                                         "total_s": total, "rows": all_rows}, indent=1))
    return 1 if any(r.get("passed") is False for r in all_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
