"""Start-up cost of the libraries issue 18 decided not to import (figures quoted in ``lavila/models/layers.py`` and
``lavila/data/tokenizer.py``), each in a fresh Python process with torch already imported:

* tokenising 1,000 narrations: open_clip's tokenizer (``import open_clip`` + tokenize; baseline) vs ours
  (``lavila.data.tokenizer``);
* the shared layers: ``import timm.layers`` (baseline) vs ``import lavila.models``.

Median of fresh processes. Standalone: ``python benchmarks/bench_imports.py [--quick]``.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, make_row  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXTS = "texts = [f'#C C takes the cup {i} from the table' for i in range(1000)]"
# each snippet prints the seconds it took after `import torch` (torch is imported by every entry script anyway)
SNIPPETS = {
    "open_clip tokenizer": f"import open_clip; {TEXTS}; open_clip.tokenize(texts)",
    "lavila tokenizer": f"from lavila.data.tokenizer import tokenize; {TEXTS}; tokenize(texts)",
    "timm.layers": "import timm.layers",
    "lavila.models": "import lavila.models",
}


def _seconds(code: str) -> float:
    program = f"import time, torch; t0 = time.perf_counter(); {code}; print(time.perf_counter() - t0)"
    out = subprocess.run([sys.executable, "-c", program], cwd=REPO, check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    repeats = 1 if quick else 5
    t = {name: statistics.median(_seconds(code) for _ in range(repeats)) for name, code in SNIPPETS.items()}
    return [
        make_row("tokenise 1,000 texts in a fresh process: open_clip (baseline) vs lavila.data.tokenizer",
                 t["open_clip tokenizer"], t["lavila tokenizer"], "s", 1.0,
                 notes=f"median of {repeats} processes; ids equal (tests/test_tokenizer.py)"),
        make_row("shared layers in a fresh process: import timm.layers (baseline) vs import lavila.models",
                 t["timm.layers"], t["lavila.models"], "s", 1.0, notes=f"median of {repeats} processes"),
    ]


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
