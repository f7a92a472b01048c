"""Model throughput benchmark (issue 9, target 4), CPU, 2 threads, fp32, so regressions show.

* Tiny-config pretraining step (CLIP forward on video + text, ClipLoss, backward, AdamW step) for TimeSformer,
  TimeMamba, joint ViT and ViViM: clips/s. Baseline column: TimeSformer's clips/s (the reference tower); for the
  Mamba towers a second row compares the scan the models use (backend "auto") with the pure-PyTorch fallback.
* Forward-only throughput of the full-size visual towers (TimeSformer-B, TimeMamba-B, ViT-T, ViViM-T) at 4 and
  16 frames, batch 1, no grad: clips/s (16 frames only without --quick; one timed run there, they take seconds).

All rows are informational (no target: issue 9 asks for the figures). Standalone:
``python benchmarks/bench_train_step.py [--quick] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, make_row, median_seconds  # noqa: E402

from lavila.models import create_model  # noqa: E402
from lavila.models.mamba import BiMambaMixer  # noqa: E402
from lavila.models.ssm import resolve_backend  # noqa: E402
from lavila.train.losses import ClipLoss  # noqa: E402

THREADS = 2
TOWERS = {  # label: registry name
    "TimeSformer": "CLIP_TimeSformerB16",
    "TimeMamba": "CLIP_TimeMamba_like_timesformer",
    "ViT": "CLIP_VITT16",
    "ViViM": "CLIP_ViViM_tiny",
}
FULL_SIZE = {"TimeSformer-B": "CLIP_TimeSformerB16", "TimeMamba-B": "CLIP_TimeMamba_like_timesformer",
             "ViT-T": "CLIP_VITT16", "ViViM-T": "CLIP_ViViM_tiny"}
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64, "patch_size": 16, "num_frames": 4,
        "text_width": 64, "text_layers": 1, "text_heads": 2, "project_embed_dim": 32}
BATCH = 4


def set_scan_backend(model: torch.nn.Module, backend: str) -> int:
    mixers = [m for m in model.modules() if isinstance(m, BiMambaMixer)]
    for m in mixers:
        m.scan_backend = backend
    return len(mixers)


def train_step_clips_per_s(name: str, repeats: int, backend: str = "auto") -> tuple[float, int]:
    torch.manual_seed(0)
    model = create_model(name, **TINY)
    n_mixers = set_scan_backend(model, backend)
    model.train()
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(BATCH, 3, TINY["num_frames"], TINY["img_size"], TINY["img_size"], generator=g)
    tokens = torch.randint(0, 49408, (BATCH, 77), generator=g)

    def step():
        out = model(video, tokens)
        loss = loss_fn(out["image_embed"], out["text_embed"], out["logit_scale"])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    med, _ = median_seconds(step, repeats, warmup=1)
    return BATCH / med, n_mixers


def forward_clips_per_s(name: str, frames: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = create_model(name, num_frames=frames).visual.eval()
    video = torch.randn(1, 3, frames, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        med, _ = median_seconds(lambda: model(video), repeats, warmup=1 if repeats > 1 else 0)
    return 1.0 / med


def run(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run_all.py (informational: passed is None)."""
    torch.set_num_threads(THREADS)
    repeats = 5 if quick else 10
    scan = resolve_backend("auto", torch.device("cpu"))
    rows = []
    tiny = {label: train_step_clips_per_s(name, repeats) for label, name in TOWERS.items()}
    ref = tiny["TimeSformer"][0]
    cfg = f"{TINY['depth']} layers, width {TINY['embed_dim']}, {TINY['num_frames']}x{TINY['img_size']}px, batch {BATCH}"
    for label, (cps, n_mixers) in tiny.items():
        notes = f"baseline = TimeSformer; {cfg}" + (f"; scan backend {scan}" if n_mixers else "")
        rows.append(make_row(f"train step tiny {label} (vs TimeSformer)", ref, cps, "clips/s", "info", None,
                             higher_is_better=True, notes=notes))
        if n_mixers:
            slow, _ = train_step_clips_per_s(TOWERS[label], repeats, backend="torch")
            rows.append(make_row(f"train step tiny {label}: scan '{scan}' vs pure-PyTorch scan", slow, cps,
                                 "clips/s", "info", None, higher_is_better=True, notes=cfg))
    for frames in (4,) if quick else (4, 16):
        fwd = {label: forward_clips_per_s(name, frames, 2 if frames == 4 else 1) for label, name in FULL_SIZE.items()}
        for label, cps in fwd.items():
            rows.append(make_row(f"forward full-size {label} {frames}f 224px batch 1 (vs TimeSformer-B)",
                                 fwd["TimeSformer-B"], cps, "clips/s", "info", None, higher_is_better=True,
                                 notes=f"no grad; scan backend {scan}" if "Mamba" in label or "ViViM" in label
                                 else "no grad"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, full-size towers at 4 frames only")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args()
    rows = run(args.quick)
    print(format_table(rows))
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
