"""Selective scan: every backend equals the step-by-step recurrence (values and gradients)."""
from __future__ import annotations

import pytest
import torch

from lavila.models import ssm, ssm_cpu
from lavila.models.ssm import (
    cpu_kernel_available,
    resolve_backend,
    selective_scan,
    selective_scan_cpu,
    selective_scan_reference,
    selective_scan_torch,
)

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="no C compiler: compiled CPU scan unavailable")

BACKENDS = [
    pytest.param(selective_scan_torch, id="torch"),
    pytest.param(selective_scan_cpu, id="cpu", marks=needs_kernel),
]


def make_inputs(b=2, d=5, n=4, length=9, dtype=torch.float64, seed=0, A_scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "u": r(b, d, length),
        "delta": 0.5 * r(b, d, length) - 1.0,
        "A": -torch.rand(d, n, generator=g, dtype=dtype) * A_scale - 0.1,
        "B": r(b, n, length),
        "C": r(b, n, length),
        "D": r(d),
        "z": r(b, d, length),
        "delta_bias": 0.3 * r(d),
    }


OPTIONS = [
    pytest.param(dict(D=True, z=True, delta_bias=True, delta_softplus=True), id="all"),
    pytest.param(dict(D=False, z=False, delta_bias=False, delta_softplus=False), id="bare"),
    pytest.param(dict(D=True, z=False, delta_bias=True, delta_softplus=True), id="no-z"),
    pytest.param(dict(D=False, z=True, delta_bias=False, delta_softplus=True), id="z-only"),
]


def call(fn, inputs, opts):
    kwargs = {k: (inputs[k] if opts[k] else None) for k in ("D", "z", "delta_bias")}
    return fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], **kwargs,
              delta_softplus=opts["delta_softplus"])


def values_and_grads(fn, inputs, opts, gout_seed=1):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = call(fn, leaves, opts)
    gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(gout_seed), dtype=torch.float64)
    gout = gout.to(device=y.device, dtype=y.dtype)  # on y's device: the CUDA backend's grads too
    used = [k for k in leaves if k in ("u", "delta", "A", "B", "C") or opts.get(k)]
    grads = torch.autograd.grad(y, [leaves[k] for k in used], gout)
    return y.detach(), dict(zip(used, grads))


def assert_matches_reference(fn, inputs, opts, atol):
    y, grads = values_and_grads(fn, inputs, opts)
    y_ref, grads_ref = values_and_grads(selective_scan_reference, inputs, opts)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=0)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], atol=atol, rtol=0, msg=lambda m, k=k: f"grad {k}: {m}")


@pytest.mark.parametrize("fn", BACKENDS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_matches_reference_float64(fn, opts):
    assert_matches_reference(fn, make_inputs(), opts, atol=1e-10)


@pytest.mark.parametrize("fn", BACKENDS)
def test_long_sequence_matches_reference(fn, monkeypatch):
    # Small blocks force the torch path through many time chunks and batch-row blocks (carries between them).
    monkeypatch.setattr(ssm, "_BLOCK_ELEMS", 256)
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    inputs = make_inputs(b=3, d=4, n=3, length=1000, seed=3)
    assert ssm._tiling(3, 4, 3, 1000)[0] < 1000
    assert_matches_reference(fn, inputs, opts, atol=1e-9)


@pytest.mark.parametrize("rows_blocked", [False, True])
def test_torch_tiling_over_batch_rows(rows_blocked, monkeypatch):
    if rows_blocked:
        monkeypatch.setattr(ssm, "_BLOCK_ELEMS", 48)
    chunk, rows = ssm._tiling(5, 3, 4, 20)
    assert (rows < 5) == rows_blocked
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    assert_matches_reference(selective_scan_torch, make_inputs(b=5, d=3, n=4, length=20, seed=4), opts, atol=1e-10)


@pytest.mark.parametrize("fn", BACKENDS)
def test_gradcheck(fn):
    inputs = make_inputs(b=1, d=2, n=3, length=5, seed=5)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def f(u, delta, A, B, C, D, z, delta_bias):
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", BACKENDS)
def test_float32_error_vs_float64_reference(fn):
    """fp32 inputs with realistic Mamba values (A = -(1..16), softplus dt): max abs error well under 1e-4."""
    b, d, n, length = 2, 16, 16, 400
    inputs = make_inputs(b=b, d=d, n=n, length=length, seed=6)
    inputs["A"] = -torch.arange(1, n + 1, dtype=torch.float64).repeat(d, 1)
    inputs["delta_bias"] = torch.log(torch.expm1(torch.full((d,), 0.01, dtype=torch.float64)))
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    y_ref, g_ref = values_and_grads(selective_scan_reference, inputs, opts)
    y32, g32 = values_and_grads(fn, {k: v.float() for k, v in inputs.items()}, opts)
    assert y32.dtype == torch.float32
    assert (y32.double() - y_ref).abs().max().item() <= 1e-4
    for k in g32:
        scale = g_ref[k].abs().max().item()
        assert (g32[k].double() - g_ref[k]).abs().max().item() <= 1e-4 * max(1.0, scale), k


@pytest.mark.parametrize("fn", BACKENDS)
def test_autocast_bf16_keeps_fp32_state(fn):
    inputs = {k: v.float() for k, v in make_inputs(b=2, d=8, n=4, length=64, seed=7).items()}
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    y32 = call(fn, inputs, opts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ac = call(fn, inputs, opts)
    # fp32 inputs under autocast: computed exactly as without autocast (no bf16 state anywhere)
    assert y_ac.dtype == torch.float32 and torch.isfinite(y_ac).all()
    torch.testing.assert_close(y_ac, y32, atol=1e-6, rtol=1e-6)
    # bf16 inputs: fp32 state inside, output in the input dtype, equal to the fp64 recurrence on the same values
    bf = {k: v.bfloat16() for k, v in inputs.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in bf.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf = call(fn, leaves, opts)
    y_bf.float().sum().backward()
    assert y_bf.dtype == torch.bfloat16 and torch.isfinite(y_bf.float()).all()
    assert all(v.grad is not None and v.grad.dtype == torch.bfloat16 for v in leaves.values())
    y_ref = call(selective_scan_reference, {k: v.double() for k, v in bf.items()}, opts)
    err = (y_bf.double() - y_ref).abs().max().item()
    assert err <= 2 ** -8 * y_ref.abs().max().item()  # one bf16 rounding of the output, nothing more


def test_zero_length_state_and_shapes_validated():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_torch(inputs["u"], inputs["delta"], inputs["A"], inputs["B"][:, :2], inputs["C"])
    with pytest.raises(ValueError, match="delta shape"):
        selective_scan_torch(inputs["u"], inputs["delta"][..., :3], inputs["A"], inputs["B"], inputs["C"])
    with pytest.raises(ValueError, match="D must be"):
        selective_scan_torch(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], D=torch.ones(3))


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(ssm.BACKEND_ENV, raising=False)
    assert resolve_backend("auto", cpu) == ("cpu" if cpu_kernel_available() else "torch")
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setenv(ssm.BACKEND_ENV, "torch")
    assert resolve_backend("auto", cpu) == "torch"
    monkeypatch.setenv(ssm.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="LAVILA_SCAN_BACKEND"):
        resolve_backend("auto", cpu)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_backend("cuda", cpu)
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        selective_scan(*make_inputs(length=3).values(), backend="fast")


def test_forced_torch_backend_is_used(monkeypatch):
    calls = []
    real = ssm._SelectiveScanFn.apply
    monkeypatch.setattr(ssm._SelectiveScanFn, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv(ssm.BACKEND_ENV, "torch")
    inputs = make_inputs(length=4)
    y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    assert calls and y.shape == inputs["u"].shape


def test_falls_back_to_torch_without_compiler(monkeypatch, tmp_path):
    saved = dict(ssm_cpu._state)
    try:
        ssm_cpu._state.clear()
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        monkeypatch.setenv(ssm_cpu.CACHE_ENV, str(tmp_path / "cache"))
        monkeypatch.delenv(ssm.BACKEND_ENV, raising=False)
        assert ssm_cpu.load_kernel() is None
        assert "no-such-compiler" in ssm_cpu.kernel_error()
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
        with pytest.raises(RuntimeError, match="backend 'cpu' unavailable"):
            selective_scan(*make_inputs(length=3).values(), backend="cpu")
        inputs = make_inputs(length=6)
        y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
        torch.testing.assert_close(y, selective_scan_reference(inputs["u"], inputs["delta"], inputs["A"],
                                                               inputs["B"], inputs["C"]))
    finally:
        ssm_cpu._state.clear()
        ssm_cpu._state.update(saved)


@needs_kernel
def test_loading_the_kernel_keeps_denormals(tmp_path):
    """Loading the compiled kernel must not switch the process to flush-to-zero (what -ffast-math builds do)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from lavila.models import ssm_cpu\n"
        "assert ssm_cpu.load_kernel() is not None, ssm_cpu.kernel_error()\n"
        "tiny = np.float32(1e-40)\n"
        "assert tiny * np.float32(1.0) != 0, 'numpy denormal flushed'\n"
        "assert (torch.tensor([1e-40]) * 1.0).item() != 0, 'torch denormal flushed'\n"
    )
    env = {**__import__("os").environ, ssm_cpu.CACHE_ENV: str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr


@needs_kernel
def test_cpu_kernel_threads_agree(monkeypatch):
    """The threaded split over channels gives the same numbers as one thread."""
    inputs = {k: v.float() for k, v in make_inputs(b=2, d=64, n=16, length=300, seed=8).items()}
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    prev = torch.get_num_threads()
    monkeypatch.setattr(ssm_cpu, "_PARALLEL_MIN_WORK", 0)
    try:
        torch.set_num_threads(1)
        y1, g1 = values_and_grads(selective_scan_cpu, inputs, opts)
        torch.set_num_threads(2)
        assert len(ssm_cpu._ranges(64, 2 * 64 * 300 * 16)) == 8
        y2, g2 = values_and_grads(selective_scan_cpu, inputs, opts)
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_matches_torch():
    if not torch.cuda.is_available() or not ssm.cuda_scan_available():
        pytest.skip("needs CUDA and mamba_ssm's kernels")
    inputs = {k: v.float().cuda() for k, v in make_inputs(b=2, d=32, n=16, length=256, seed=9).items()}
    inputs["A"] = -torch.arange(1, 17, device="cuda", dtype=torch.float32).repeat(32, 1)
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    y_cuda, g_cuda = values_and_grads(lambda *a, **k: selective_scan(*a, **k, backend="cuda"), inputs, opts)
    y_torch, g_torch = values_and_grads(lambda *a, **k: selective_scan(*a, **k, backend="torch"), inputs, opts)
    torch.testing.assert_close(y_cuda, y_torch, atol=1e-4, rtol=1e-4)
    for k in g_cuda:
        torch.testing.assert_close(g_cuda[k], g_torch[k], atol=1e-3, rtol=1e-3)
