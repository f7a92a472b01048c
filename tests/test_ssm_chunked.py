"""Chunked selective scan (the torch backend on accelerators): exact, and a bounded number of aten operations.

The accelerator path is forced on CPU (``ssm._use_chunked``), so every check here runs without a GPU.
"""
from __future__ import annotations

import pytest
import torch
from test_ssm import assert_matches_reference, call, make_inputs, values_and_grads

from lavila.models import ssm, ssm_chunked
from lavila.models.ssm import selective_scan, selective_scan_reference, selective_scan_torch
from lavila.models.ssm_chunked import CHUNK, chunk_plan, count_aten_ops, op_bound

K = CHUNK
ALL = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
OPTIONS = [
    pytest.param(ALL, id="all"),
    pytest.param(dict(D=False, z=False, delta_bias=False, delta_softplus=False), id="bare"),
    pytest.param(dict(D=True, z=False, delta_bias=True, delta_softplus=True), id="no-z"),
    pytest.param(dict(D=False, z=True, delta_bias=False, delta_softplus=True), id="z-only"),
]


@pytest.fixture
def chunked(monkeypatch):
    """The accelerator path on CPU tensors (the tiling a GPU gets)."""
    monkeypatch.setattr(ssm, "_use_chunked", lambda device: True)


def inputs_for(opts: dict, **kwargs) -> dict:
    inputs = make_inputs(**kwargs)
    if not opts["delta_softplus"]:  # dt used as given: keep it positive (a negative dt grows the state without bound)
        inputs["delta"] = 0.5 * inputs["delta"].abs()
    return inputs


def reverse(fn):
    """The backward direction as the Mamba mixer runs it: the scan over the flipped sequence, flipped back."""
    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        def flip(t):
            return None if t is None else t.flip(-1)
        return fn(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias, delta_softplus).flip(-1)
    return scan


@pytest.mark.parametrize("length", [1, 2, K - 1, K, K + 1])
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_matches_reference_float64(chunked, length, opts, direction):
    fn = selective_scan_torch if direction == "forward" else reverse(selective_scan_torch)
    ref = selective_scan_reference if direction == "forward" else reverse(selective_scan_reference)
    inputs = inputs_for(opts, b=2, d=3, n=4, length=length, seed=length)
    y, grads = values_and_grads(fn, inputs, opts)
    y_ref, grads_ref = values_and_grads(ref, inputs, opts)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    for k in grads_ref:
        torch.testing.assert_close(grads[k], grads_ref[k], atol=1e-10, rtol=0, msg=lambda m, k=k: f"grad {k}: {m}")


def scaled_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |a - ref| over max(1, max |ref|): absolute for values up to 1, relative to the largest value beyond."""
    return (a.double() - ref).abs().max().item() / max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("opts,direction", [
    pytest.param(ALL, "forward", id="all-forward"),
    pytest.param(dict(D=False, z=False, delta_bias=False, delta_softplus=False), "backward", id="bare-backward"),
])
def test_vivim_length_float64_and_float32(chunked, opts, direction):
    """L = 3,152 (ViViM-T at 16 frames): 50 chunks carried; fp64 to 1e-10, fp32 to 1e-5 (scaled), gradients too."""
    fn = selective_scan_torch if direction == "forward" else reverse(selective_scan_torch)
    ref = selective_scan_reference if direction == "forward" else reverse(selective_scan_reference)
    inputs = inputs_for(opts, b=1, d=2, n=3, length=3152, seed=11)
    y_ref, g_ref = values_and_grads(ref, inputs, opts)
    y, g = values_and_grads(fn, inputs, opts)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], atol=1e-10, rtol=0, msg=lambda m, k=k: f"grad {k}: {m}")
    y32, g32 = values_and_grads(fn, {k: v.float() for k, v in inputs.items()}, opts)
    assert y32.dtype == torch.float32
    assert scaled_error(y32, y_ref) <= 1e-5
    for k in g_ref:
        assert scaled_error(g32[k], g_ref[k]) <= 1e-5, k


def test_float32_matches_float32_reference(chunked):
    """Against the reference run in fp32 on the same inputs (two chunk boundaries and a padded tail)."""
    inputs = {k: v.float() for k, v in make_inputs(b=2, d=4, n=4, length=2 * K + 7, seed=12).items()}
    y, g = values_and_grads(selective_scan_torch, inputs, ALL)
    y_ref, g_ref = values_and_grads(selective_scan_reference, inputs, ALL)
    assert scaled_error(y, y_ref.double()) <= 1e-5
    for k in g_ref:
        assert scaled_error(g[k], g_ref[k].double()) <= 1e-5, k


@pytest.mark.parametrize("chunk,length", [(2, 5), (3, 3)])
def test_gradcheck(chunked, monkeypatch, chunk, length):
    """fp64 gradcheck with small chunks: three chunks with a padded tail, and one exactly full chunk."""
    monkeypatch.setattr(ssm_chunked, "CHUNK", chunk)
    inputs = make_inputs(b=1, d=1, n=2, length=length, seed=13)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def f(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("budget", [400, 1600])
def test_blocks_over_rows_and_channels(chunked, monkeypatch, budget):
    """Small budgets split the call over channels (400) or batch rows (1600); gradients summed across blocks."""
    monkeypatch.setattr(ssm, "_ACCEL_BLOCK_ELEMS", budget)
    b, d, n, length = 3, 5, 4, 40
    monkeypatch.setattr(ssm_chunked, "CHUNK", 8)
    k, rows, channels = chunk_plan(b, d, n, length, budget)
    assert (rows < b and channels == d) if budget == 1600 else (channels < d)
    assert_matches_reference(selective_scan_torch, make_inputs(b=b, d=d, n=n, length=length, seed=14), ALL, atol=1e-10)


def test_accelerator_blocks_stay_within_todays_budget():
    """TimeMamba-B at batch 32 (6,272 sequences of 4 steps, d_inner 768) and ViViM-T at 16 frames: few blocks, each
    within the ~256 MB budget the step loop's accelerator blocks had."""
    budget = ssm._ACCEL_BLOCK_ELEMS
    for batch, d, n, length, max_blocks in [(32 * 196, 768, 16, 4, 8), (2, 384, 16, 3152, 1), (32, 384, 16, 3152, 16)]:
        k, rows, channels = chunk_plan(batch, d, n, length, budget)
        nc = -(-length // k)
        assert k == min(length, K)
        assert rows * channels * n * max(nc * k, nc * nc) <= budget
        assert -(-batch // rows) * -(-d // channels) <= max_blocks


def scan_fwd_bwd(length, b=1, d=4, n=2):
    inputs = {k: v.float() for k, v in make_inputs(b=b, d=d, n=n, length=length, seed=15).items()}
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    gout = torch.randn(b, d, length)

    def run():
        call(selective_scan_torch, leaves, ALL).backward(gout)
    return run


def test_op_count_bounded_and_flat_in_length(chunked):
    """aten ops of one fwd+bwd call (torch.profiler, views included): the same at L = 2K+1 .. 3,152, within the
    stated bound; the step loop's count grows with L."""
    scan_fwd_bwd(2 * K + 1)()  # warm-up: first-call initialisation outside the counts
    counts = {}
    for length in (2 * K + 1, 1000, 3152):
        counts[length] = count_aten_ops(scan_fwd_bwd(length))
        assert counts[length] <= op_bound(1, 4, 2, length, ssm._ACCEL_BLOCK_ELEMS), (length, counts[length])
    assert len(set(counts.values())) == 1, counts
    for length in (1, K - 1):  # shorter than a chunk: fewer steps, same bound
        assert count_aten_ops(scan_fwd_bwd(length)) <= op_bound(1, 4, 2, length, ssm._ACCEL_BLOCK_ELEMS)


def test_op_count_bound_holds_per_block(chunked, monkeypatch):
    """A budget that splits the call into 2 batch rows x 2 channel halves: the bound counts each block (and is
    not loose: within 1,000 ops of the count)."""
    monkeypatch.setattr(ssm, "_ACCEL_BLOCK_ELEMS", 2 * 3 * K * 2)  # 2 channels of one row per block
    k, rows, channels = chunk_plan(2, 4, 2, 2 * K + 1, ssm._ACCEL_BLOCK_ELEMS)
    assert (rows, channels) == (1, 2)
    count = count_aten_ops(scan_fwd_bwd(2 * K + 1, b=2))
    assert op_bound(2, 4, 2, 2 * K + 1, ssm._ACCEL_BLOCK_ELEMS) - 1000 < count
    assert count <= op_bound(2, 4, 2, 2 * K + 1, ssm._ACCEL_BLOCK_ELEMS)


def test_step_loop_count_grows_with_length(monkeypatch):
    """What the chunked form replaces: the step loop issues operations per time step (here on CPU tiling)."""
    monkeypatch.setattr(ssm, "_use_chunked", lambda device: False)
    assert count_aten_ops(scan_fwd_bwd(600)) > 5 * op_bound(1, 4, 2, 600, ssm._ACCEL_BLOCK_ELEMS)


def test_cpu_keeps_the_compiled_kernel_and_the_step_loop(monkeypatch):
    """On CPU: 'auto' is the compiled kernel when a compiler exists, and the torch backend is the step loop."""
    def fail(*args, **kwargs):
        raise AssertionError("chunked scan used on CPU")

    monkeypatch.setattr(ssm, "chunked_forward", fail)
    monkeypatch.setattr(ssm, "chunked_backward", fail)
    monkeypatch.delenv(ssm.BACKEND_ENV, raising=False)
    assert not ssm._use_chunked(torch.device("cpu")) and ssm._use_chunked(torch.device("cuda"))
    inputs = make_inputs(length=2 * K + 3, seed=16)
    y, _ = values_and_grads(selective_scan_torch, inputs, ALL)
    y_auto = call(lambda *a, **k: selective_scan(*a, **k, backend="auto"), inputs, ALL)
    torch.testing.assert_close(y_auto, y, atol=1e-10, rtol=0)


@pytest.mark.gpu
def test_chunked_on_cuda_matches_reference():
    """On a GPU the torch backend is the chunked scan; at L = 3,152 it matches the fp64 recurrence on CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert ssm._use_chunked(torch.device("cuda"))
    inputs = make_inputs(b=2, d=8, n=4, length=3152, seed=17)
    y_ref, g_ref = values_and_grads(selective_scan_reference, inputs, ALL)
    cuda32 = {k: v.float().cuda() for k, v in inputs.items()}
    y, g = values_and_grads(lambda *a, **k: selective_scan(*a, **k, backend="torch"), cuda32, ALL)
    assert scaled_error(y.cpu(), y_ref) <= 1e-5
    for k in g_ref:
        assert scaled_error(g[k].cpu(), g_ref[k]) <= 1e-5, k
