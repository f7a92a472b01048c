"""GPU benchmark (issue 9 target 5, issue 21 part 2): full-size train steps in bf16 and the selective scan on CUDA.

Needs a CUDA device; without one it prints why and exits 0, and ``run_all.py`` shows one row saying so.

* Train step of the full CLIP model (video tower + CLIP text tower), 224 px, batch 32, bf16 autocast, ClipLoss,
  backward, AdamW (the engines' parameter groups): clips/s and peak GPU memory. TimeSformer-B and TimeMamba-B at
  4 frames, each with and without gradient checkpointing, TimeMamba-B once per available scan backend (pure
  PyTorch ``torch``, which is the chunked scan on a GPU, and mamba_ssm's ``cuda`` kernels when importable); ViViM-T
  at 16 frames (L = 3,152 tokens) per scan backend. Baseline column: TimeSformer-B without checkpointing.
* Every Mamba row checks, inside the timed process, that the scan really ran on the backend it is labelled with:
  ``resolve_backend`` gives it, and counted calls show that backend only (on a GPU the torch backend must be the
  chunked scan). A mismatch is a FAIL row with the counts, not a figure.
* Selective scan alone, fwd+bwd in fp32, at the TimeMamba-B (6,272 sequences of 4 steps, d_inner 768) and ViViM-T
  (batch 32, d_inner 384, L = 3,152) shapes of the train steps: chunked torch scan vs the CUDA kernels.
* Issue-21 targets, as rows with a ratio target: TimeMamba-B with kernels >= 0.8x TimeSformer-B clips/s; the torch
  scan >= 0.5x the kernels at TimeMamba-B shape (scan alone); ViViM-T training with the torch scan >= 0.25x with
  kernels.
* SDPA: one TimeSformer-B bf16 train step with attention restricted to the flash backend, to show every attention
  call of the tower can take it (an error would say which cannot).

Usage: ``python benchmarks/bench_gpu.py [--json FILE] [--markdown]``; ``--tiny --device cpu`` runs the script on
small models without a GPU (a smoke test of the script itself).
"""
from __future__ import annotations

import argparse
import collections
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

from lavila.models import create_model, ssm  # noqa: E402
from lavila.models.mamba import BiMambaMixer  # noqa: E402
from lavila.models.ssm import cuda_scan_available, resolve_backend, selective_scan  # noqa: E402
from lavila.train.losses import ClipLoss  # noqa: E402
from lavila.train.optim import param_groups  # noqa: E402

TOWERS = {"TimeSformer-B": "CLIP_TimeSformerB16", "TimeMamba-B": "CLIP_TimeMamba_like_timesformer",
          "ViViM-T": "CLIP_ViViM_tiny"}
VIVIM_FRAMES = 16
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 16, "text_width": 64,
        "text_layers": 1, "text_heads": 2, "project_embed_dim": 32}
SCAN_SHAPES = {  # label: (batch, d_inner, d_state, length), the scans of the batch-32 train steps
    "TimeMamba-B f4": (32 * 196, 768, 16, 4),
    "ViViM-T f16": (32, 384, 16, 197 * 16),
}


class ScanCalls:
    """Counts the selective-scan calls per backend in this process (the timed one), to assert which one ran."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self._saved: dict = {}

    def __enter__(self) -> ScanCalls:
        def counted(name: str, fn):
            def wrapper(*args, **kwargs):
                self.counts[name] += 1
                return fn(*args, **kwargs)
            return wrapper

        cuda_fn = ssm._cuda_selective_scan_fn
        self._saved = {k: getattr(ssm, k) for k in ("selective_scan_torch", "selective_scan_cpu",
                                                    "_cuda_selective_scan_fn", "chunked_forward")}
        ssm.selective_scan_torch = counted("torch", ssm.selective_scan_torch)
        ssm.selective_scan_cpu = counted("cpu", ssm.selective_scan_cpu)
        ssm.chunked_forward = counted("torch-chunked", ssm.chunked_forward)
        ssm._cuda_selective_scan_fn = lambda: None if cuda_fn() is None else counted("cuda", cuda_fn())
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self._saved.items():
            setattr(ssm, k, v)

    def check(self, backend: str, device: torch.device) -> None:
        """Raise unless every scan call of the block went through ``backend`` (the chunked form for torch on a GPU)."""
        resolved = resolve_backend(backend, device)
        calls = {k: v for k, v in self.counts.items() if v}
        others = {k: v for k, v in calls.items() if k not in (backend, "torch-chunked")}
        ok = resolved == backend and calls.get(backend, 0) > 0 and not others
        if backend == "torch" and device.type != "cpu":
            ok = ok and calls.get("torch-chunked", 0) == calls.get("torch", 0)
        if not ok:
            raise RuntimeError(f"scan backend check failed: asked {backend!r}, resolved {resolved!r}, calls {calls}")


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
    """(clips/s, peak memory in GiB) of full CLIP train steps in bf16 autocast (fp32 on CPU); with ``backend``, the
    scan calls of the timed steps are checked to have run on it (RuntimeError otherwise)."""
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
    with ScanCalls() as calls:
        seconds = timed(step, device, steps, warmup)
    if backend is not None:
        calls.check(backend, device)
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


def timed_scan(inputs: dict[str, torch.Tensor], backend: str, device: torch.device, steps: int) -> float:
    """Median seconds of a fwd+bwd scan, the backend checked inside this (the timed) process."""
    with ScanCalls() as calls:
        seconds = timed(lambda: scan_step(inputs, backend), device, max(1, steps // 2), 1)
    calls.check(backend, device)
    return seconds


class _Rows(list):
    """Result rows, each also printed when it is added (a run cut short by a time limit keeps what it measured)."""

    def append(self, row: dict) -> None:
        super().append(row)
        print(f"  {row['name']}: {row['ours']:.4g} {row['unit']} (baseline {row['baseline']:.4g}); "
              f"{row.get('notes', '')}", flush=True)


def _failed(name: str, unit: str, exc: Exception) -> dict:
    """A FAIL row for a measurement that raised (backend mismatch, out of memory): the reason, not a figure."""
    return {"name": name, "baseline": float("nan"), "ours": float("nan"), "ratio": float("nan"), "target": "runs",
            "passed": False, "unit": unit, "notes": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


def measure(device: torch.device, tiny: bool, steps: int, warmup: int, frames: int, batch: int) -> list[dict]:
    rows: list[dict] = _Rows()
    backends = ["torch"] + (["cuda"] if device.type == "cuda" and cuda_scan_available() else [])
    prec = "bf16" if device.type == "cuda" else "fp32"
    cfg = f"{frames}f {'tiny' if tiny else '224px'} batch {batch} {prec}"
    base, base_mem = train_step(TOWERS["TimeSformer-B"], device, frames, batch, False, None, steps, warmup, tiny)
    cps_of: dict[tuple[str, str | None, bool], float] = {("TimeSformer-B", None, False): base}
    plan = [("TimeSformer-B", frames, None, True)]
    plan += [("TimeMamba-B", frames, b, ckpt) for b in backends for ckpt in (False, True)]
    plan += [("ViViM-T", VIVIM_FRAMES, b, False) for b in backends]
    for label, n_frames, backend, ckpt in plan:
        what = f"train step {label} {cfg.replace(f'{frames}f', f'{n_frames}f')}, grad ckpt {'on' if ckpt else 'off'}"
        what += f", scan {backend}" if backend else ""
        try:
            cps, mem = train_step(TOWERS[label], device, n_frames, batch, ckpt, backend, steps, warmup, tiny)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            rows.append(_failed(what, "clips/s", exc))
            continue
        cps_of[(label, backend, ckpt)] = cps
        notes = f"peak {mem:.1f} GiB (baseline {base_mem:.1f})"
        notes += f"; scan backend checked in this process: {backend}" if backend else ""
        rows.append(make_row(what + " (vs TimeSformer-B, no ckpt)", base, cps, "clips/s", "info", None,
                             higher_is_better=True, notes=notes))
    if ("TimeMamba-B", "cuda", False) in cps_of:
        rows.append(make_row(f"issue 21: TimeMamba-B with kernels vs TimeSformer-B, {cfg}", base,
                             cps_of[("TimeMamba-B", "cuda", False)], "clips/s", 0.8, higher_is_better=True))
    if ("ViViM-T", "cuda", False) in cps_of and ("ViViM-T", "torch", False) in cps_of:
        rows.append(make_row(f"issue 21: ViViM-T {VIVIM_FRAMES}f training, torch scan vs kernels",
                             cps_of[("ViViM-T", "cuda", False)], cps_of[("ViViM-T", "torch", False)], "clips/s",
                             0.25, higher_is_better=True))
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
        name = f"selective scan fwd+bwd {label} {shape} fp32"
        try:
            inputs = scan_inputs(shape, device)
            ref_y = scan_step(inputs, "torch")
            t_torch = timed_scan(inputs, "torch", device, steps)
            if "cuda" not in backends:
                rows.append(make_row(f"{name}, torch backend", t_torch, t_torch, "s", "info", None,
                                     notes="mamba_ssm CUDA kernels not importable"))
                continue
            diff = (scan_step(inputs, "cuda") - ref_y).abs().max().item()
            t_cuda = timed_scan(inputs, "cuda", device, steps)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            rows.append(_failed(name, "s", exc))
            continue
        target = 0.5 if label.startswith("TimeMamba") else "info"
        tag = " (issue 21)" if target != "info" else ""
        rows.append(make_row(f"{name}: chunked torch scan vs cuda kernels{tag}", t_cuda, t_torch, "s", target,
                             notes=f"max |y_cuda - y_torch| {diff:.1e}; backends checked in this process"))
        del inputs
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
