"""GPU benchmark (issue 9, target 5): full-size train steps in bf16 and the selective scan on CUDA.

Needs a CUDA device; without one it prints why and exits 0, and ``run_all.py`` shows one row saying so.

* Train step of the full CLIP model (TimeSformer-B or TimeMamba-B video tower + CLIP text tower), 4 frames 224 px,
  batch 32, bf16 autocast, ClipLoss, backward, AdamW (the engines' parameter groups): clips/s and peak GPU memory,
  with and without gradient checkpointing; TimeMamba-B once per available scan backend (pure PyTorch ``torch``,
  mamba_ssm's ``cuda`` kernels when importable). Baseline column: TimeSformer-B without checkpointing.
* Selective scan fwd+bwd in fp32 at the issue's shapes (TimeMamba f4/f16, ViViM-T): pure-PyTorch backend vs the CUDA
  kernels, with the max abs difference of the outputs.
* SDPA: one TimeSformer-B bf16 train step with attention restricted to the flash backend, to show every attention
  call of the tower can take it (an error would say which cannot).

Usage: ``python benchmarks/bench_gpu.py [--json FILE] [--markdown]``; ``--tiny --device cpu`` runs the script on
small models without a GPU (a smoke test of the script itself).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, make_row  # noqa: E402

from lavila.models import create_model  # noqa: E402
from lavila.models.mamba import BiMambaMixer  # noqa: E402
from lavila.models.ssm import cuda_scan_available, selective_scan  # noqa: E402
from lavila.train.losses import ClipLoss  # noqa: E402
from lavila.train.optim import param_groups  # noqa: E402

TOWERS = {"TimeSformer-B": "CLIP_TimeSformerB16", "TimeMamba-B": "CLIP_TimeMamba_like_timesformer"}
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 16, "text_width": 64,
        "text_layers": 1, "text_heads": 2, "project_embed_dim": 32}
SCAN_SHAPES = {  # label: (batch, d_inner, d_state, length)
    "TimeMamba f4": (392, 768, 16, 4),
    "TimeMamba f16": (392, 768, 16, 16),
    "ViViM-T": (2, 384, 16, 197 * 16),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds of ``fn()`` (device-synchronised) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step(name: str, device: torch.device, frames: int, batch: int, ckpt: bool, backend: str | None,
               steps: int, warmup: int, tiny: bool, flash_only: bool = False) -> tuple[float, float]:
    """(clips/s, peak memory in GiB) of full CLIP train steps in bf16 autocast (fp32 on CPU)."""
    torch.manual_seed(0)
    model = create_model(name, num_frames=frames, **(TINY if tiny else {})).to(device).train()
    if backend is not None:
        for m in model.modules():
            if isinstance(m, BiMambaMixer):
                m.scan_backend = backend
    model.set_grad_checkpointing(ckpt)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-5, fused=device.type == "cuda")
    loss_fn = ClipLoss()
    size = TINY["img_size"] if tiny else 224
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randn(batch, 3, frames, size, size, device=device, generator=g)
    tokens = torch.randint(0, 49408, (batch, 77), device=device, generator=g)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    attn = contextlib.nullcontext()
    if flash_only:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        attn = sdpa_kernel([SDPBackend.FLASH_ATTENTION])

    def step() -> None:
        with amp, attn:
            out = model(video, tokens)
            loss = loss_fn(out["image_embed"], out["text_embed"], out["logit_scale"])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, steps, warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return batch / seconds, peak


def scan_inputs(shape: tuple[int, int, int, int], device: torch.device) -> dict[str, torch.Tensor]:
    b, d, n, length = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    t = {"u": torch.randn(b, d, length, generator=g), "delta": torch.randn(b, d, length, generator=g) * 0.5,
         "A": -torch.rand(d, n, generator=g) * 4 - 0.1, "B": torch.randn(b, n, length, generator=g),
         "C": torch.randn(b, n, length, generator=g), "D": torch.randn(d, generator=g),
         "z": torch.randn(b, d, length, generator=g), "delta_bias": torch.randn(d, generator=g) * 0.1}
    return {k: v.to(device).requires_grad_() for k, v in t.items()}


def scan_step(inputs: dict[str, torch.Tensor], backend: str) -> torch.Tensor:
    y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                       z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True, backend=backend)
    y.sum().backward()
    return y.detach()


class _Rows(list):
    """Result rows, each also printed when it is added (a run cut short by a time limit keeps what it measured)."""

    def append(self, row: dict) -> None:
        super().append(row)
        print(f"  {row['name']}: {row['ours']:.4g} {row['unit']} (baseline {row['baseline']:.4g}); "
              f"{row.get('notes', '')}", flush=True)


def measure(device: torch.device, tiny: bool, steps: int, warmup: int, frames: int, batch: int) -> list[dict]:
    rows: list[dict] = _Rows()
    backends = ["torch"] + (["cuda"] if device.type == "cuda" and cuda_scan_available() else [])
    cfg = f"{frames}f {'tiny' if tiny else '224px'} batch {batch} {'bf16' if device.type == 'cuda' else 'fp32'}"
    base, base_mem = train_step(TOWERS["TimeSformer-B"], device, frames, batch, False, None, steps, warmup, tiny)
    for label, name in TOWERS.items():
        for backend in (backends if "Mamba" in label else [None]):
            for ckpt in (False, True):
                if label == "TimeSformer-B" and not ckpt:
                    cps, mem = base, base_mem
                else:
                    cps, mem = train_step(name, device, frames, batch, ckpt, backend, steps, warmup, tiny)
                what = f"train step {label} {cfg}, grad ckpt {'on' if ckpt else 'off'}"
                what += f", scan {backend}" if backend else ""
                rows.append(make_row(what + " (vs TimeSformer-B, no ckpt)", base, cps, "clips/s", "info", None,
                                     higher_is_better=True, notes=f"peak {mem:.1f} GiB (baseline {base_mem:.1f})"))
    if device.type == "cuda":
        try:
            cps, mem = train_step(TOWERS["TimeSformer-B"], device, frames, batch, False, None, steps, warmup, tiny,
                                  flash_only=True)
            rows.append(make_row(f"train step TimeSformer-B {cfg}, SDPA flash only (vs default SDPA choice)", base,
                                 cps, "clips/s", "info", None, higher_is_better=True,
                                 notes=f"flash kernel takes every attention call; peak {mem:.1f} GiB"))
        except RuntimeError as exc:  # the reason the flash kernel refused, in the table instead of a crash
            rows.append({"name": "SDPA flash only, TimeSformer-B", "baseline": base, "ours": float("nan"),
                         "ratio": float("nan"), "target": "info", "passed": None, "unit": "clips/s",
                         "notes": f"flash refused: {str(exc).splitlines()[0][:160]}"})
    for label, shape in SCAN_SHAPES.items():
        if tiny:
            shape = (2, 8, 4, min(shape[3], 16))
        inputs = scan_inputs(shape, device)
        ref_y = scan_step(inputs, "torch")
        t_torch = timed(lambda x=inputs: scan_step(x, "torch"), device, max(1, steps // 2), 1)
        if "cuda" not in backends:
            rows.append(make_row(f"selective scan fwd+bwd {label} {shape} fp32, torch backend", t_torch, t_torch,
                                 "s", "info", None, notes="mamba_ssm CUDA kernels not importable"))
            continue
        y = scan_step(inputs, "cuda")
        diff = (y - ref_y).abs().max().item()
        t_cuda = timed(lambda x=inputs: scan_step(x, "cuda"), device, max(1, steps // 2), 1)
        rows.append(make_row(f"selective scan fwd+bwd {label} {shape} fp32: cuda kernels vs torch backend", t_torch,
                             t_cuda, "s", "info", None, notes=f"max |y_cuda - y_torch| {diff:.1e}"))
    return rows


def run(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run_all.py: the full-size rows on CUDA, or one row saying why nothing was measured."""
    if not torch.cuda.is_available():
        return [{"name": "GPU train steps and scan (target 5)", "baseline": float("nan"), "ours": float("nan"),
                 "ratio": float("nan"), "target": "info", "passed": None, "unit": "clips/s",
                 "notes": "skipped: no CUDA device on this machine (run benchmarks/bench_gpu.py on a GPU)"}]
    return measure(torch.device("cuda"), False, 3 if quick else 10, 1 if quick else 3, 4, 32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny models and scan shapes (smoke test of this script)")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (target 5 needs a GPU)")
        return
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"mamba_ssm kernels: {cuda_scan_available()}", flush=True)
    rows = measure(device, args.tiny, args.steps, args.warmup, args.frames, args.batch)
    print(format_table(rows, markdown=args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
