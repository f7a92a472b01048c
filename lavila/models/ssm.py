"""Selective scan (the S6 recurrence of Mamba): compiled CPU kernel, pure-PyTorch fallback, CUDA kernels when present.

Shapes follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``:
``u, delta, z: (b, d, l)``, ``A: (d, n)`` (real), ``B, C: (b, n, l)``, ``D, delta_bias: (d,)``; returns ``(b, d, l)``::

    dt_t = softplus(delta_t + delta_bias)            (softplus only when delta_softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t    (h: (b, d, n), h_{-1} = 0)
    y_t  = <C_t, h_t> + D * u_t ;  y_t *= silu(z_t)

Backends (:func:`selective_scan`, ``backend=`` or ``$LAVILA_SCAN_BACKEND``; 'auto' picks the first that applies):

* ``cuda``  -- mamba_ssm's ``selective_scan_fn`` for CUDA tensors, when importable (imported lazily);
* ``cpu``   -- a small C kernel (:mod:`lavila.models.ssm_cpu`) compiled on first use when a C compiler exists:
  one pass per direction with the (n,) state in registers; this is what the models use on CPU and what
  ``benchmarks/bench_selective_scan.py`` measures;
* ``torch`` -- pure PyTorch, any device: a custom autograd function with a hand-written backward (the adjoint is
  the same recurrence run backwards). On CPU the work is tiled into blocks of (time chunk x batch rows) small enough
  to stay in cache; inside a block the recurrence is one in-place ``addcmul_`` per step on a contiguous slice, and
  the reductions over ``n``/``d`` are batched matmuls. Only the states at chunk starts are kept for the backward.
  On accelerators, where every operation is a kernel launch, it is the chunked scan of
  :mod:`lavila.models.ssm_chunked`: a number of operations per call that does not grow with the length.

Every backend keeps the state in float32 (float64 for float64 inputs) whatever autocast says, and returns u's dtype.
:func:`selective_scan_reference` is the plain step-by-step recurrence (the test oracle).
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from lavila.models.ssm_chunked import chunked_backward, chunked_forward
from lavila.models.ssm_cpu import kernel_error, load_kernel, scan_backward, scan_forward

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
    "selective_scan_cpu",
    "cpu_kernel_available",
    "cuda_scan_available",
    "resolve_backend",
    "BACKEND_ENV",
]

BACKEND_ENV = "LAVILA_SCAN_BACKEND"
_BACKENDS = ("auto", "torch", "cpu", "cuda")

# Elements of one (time chunk x rows x d x n) block: ~2 MB of float32 on CPU, so a block's working set stays in cache.
_BLOCK_ELEMS = 1 << 19
# On an accelerator the cost is kernel launches, not cache: the chunked scan (ssm_chunked.py), a bounded number of
# operations per call, with blocks of ~256 MB of float32 states.
_ACCEL_BLOCK_ELEMS = 1 << 26
_MAX_CHUNK = 64


# --------------------------------------------------------------------------------------------------------------------
# Reference: the straightforward step-by-step recurrence (test oracle; the algorithm of mamba_ssm's selective_scan_ref)
# --------------------------------------------------------------------------------------------------------------------
def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Step-by-step selective scan; slow, obviously correct, differentiable by autograd."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d, length = u.shape
    h = u.new_zeros(batch, d, A.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)
        dBu = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        h = dA * h + dBu
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype_in)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d, length), got shape {tuple(u.shape)}")
    batch, d, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(f"selective_scan: A must be real (d={d}, n), got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, n, length):
            raise ValueError(
                f"selective_scan: {name} must be (batch, n, length) = {(batch, n, length)}, got {tuple(t.shape)} "
                "(only input-dependent, ungrouped B/C are supported)"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"selective_scan: {name} must be ({d},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z shape {tuple(z.shape)} must equal u shape {tuple(u.shape)}")


# --------------------------------------------------------------------------------------------------------------------
# Pure-PyTorch blocked scan with a hand-written backward
# --------------------------------------------------------------------------------------------------------------------
def _tiling(batch: int, d: int, n: int, length: int, block: int | None = None) -> tuple[int, int]:
    """(time chunk, batch rows per block) so that chunk * rows * d * n is about ``block`` (_BLOCK_ELEMS) elements."""
    block = _BLOCK_ELEMS if block is None else block
    per_step = batch * d * n
    if length * per_step <= block:
        return length, batch
    if min(length, _MAX_CHUNK) * per_step <= block:
        chunk = max(1, min(length, _MAX_CHUNK, block // per_step))
        return chunk, batch
    chunk = min(length, _MAX_CHUNK)
    rows = max(1, block // (chunk * d * n))
    if rows >= batch:
        return chunk, batch
    if rows == 1:  # a single row is still too big: shorten the chunk instead
        chunk = max(1, min(chunk, block // (d * n)))
    return chunk, rows


def _use_chunked(device: torch.device) -> bool:
    """The chunked scan on accelerators (launch-bound: few large operations); the cache-sized step loop on CPU."""
    return device.type != "cpu"


def _scan_inplace(h: Tensor, dA: Tensor, h0: Tensor | None) -> None:
    """h[t] = dA[t] * h[t-1] + h[t] in place along dim 0 (h[-1] = h0 or 0)."""
    if h0 is not None:
        h[0].addcmul_(dA[0], h0)
    for t in range(1, h.shape[0]):
        h[t].addcmul_(dA[t], h[t - 1])


def _scan_reverse_inplace(g: Tensor, dA: Tensor, carry: Tensor | None) -> None:
    """g[t] = dA[t+1] * g[t+1] + g[t] in place, backwards along dim 0 (the adjoint of _scan_inplace)."""
    last = g.shape[0] - 1
    if carry is not None:
        g[last].add_(carry)
    for t in range(last - 1, -1, -1):
        g[t].addcmul_(dA[t + 1], g[t + 1])


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
        out_dtype = u.dtype
        work = torch.float64 if u.dtype == torch.float64 else torch.float32
        # Time-major working layout: (l, b, d) and (l, b, n) so one step is a contiguous slice.
        ut = u.to(work).permute(2, 0, 1).contiguous()
        dt = delta.to(work).permute(2, 0, 1)
        if delta_bias is not None:
            dt = dt + delta_bias.to(work)
        if delta_softplus:
            dt = F.softplus(dt)
        dt = dt.contiguous()
        Bt = B.to(work).permute(2, 0, 1).contiguous()
        Ct = C.to(work).permute(2, 0, 1).contiguous()
        Aw = A.to(work)
        dtu = dt * ut
        if _use_chunked(ut.device):
            y = chunked_forward(dt, dtu, Bt, Ct, Aw, _ACCEL_BLOCK_ELEMS)
            states, tiling = None, None  # the chunked backward recomputes from the inputs
        else:
            y, states, tiling = _step_loop_forward(dt, dtu, Bt, Ct, Aw)
        if D is not None:
            y = y + ut * D.to(work)
        out = y
        if z is not None:
            out = y * F.silu(z.to(work).permute(2, 0, 1))
        ctx.delta_softplus = delta_softplus
        ctx.tiling = tiling
        ctx.work = work
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, y if z is not None else None)
        return out.permute(1, 2, 0).to(out_dtype)

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, states, y = ctx.saved_tensors
        work = ctx.work
        ut = u.to(work).permute(2, 0, 1).contiguous()
        pre = delta.to(work).permute(2, 0, 1)
        if delta_bias is not None:
            pre = pre + delta_bias.to(work)
        dt = F.softplus(pre) if ctx.delta_softplus else pre
        dt = dt.contiguous()
        Bt = B.to(work).permute(2, 0, 1).contiguous()
        Ct = C.to(work).permute(2, 0, 1).contiguous()
        Aw = A.to(work)
        gy = gout.to(work).permute(2, 0, 1)
        gz = None
        if z is not None:
            zt = z.to(work).permute(2, 0, 1)
            sz = torch.sigmoid(zt)
            silu_z = zt * sz
            gz = gy * y * (sz * (1 + zt * (1 - sz)))
            gy = gy * silu_z
        gy = gy.contiguous()
        dtu = dt * ut
        if ctx.tiling is None:
            gu, gdt, gB, gC, gA = chunked_backward(dt, dtu, ut, Bt, Ct, Aw, gy, _ACCEL_BLOCK_ELEMS)
            if D is not None:
                gu.addcmul_(gy, D.to(work))
        else:
            gu, gdt, gB, gC, gA = _step_loop_backward(dt, dtu, ut, Bt, Ct, Aw, gy, states, ctx.tiling,
                                                      None if D is None else gy * D.to(work))
        gdelta = gdt
        if ctx.delta_softplus:
            gdelta = gdt * torch.sigmoid(pre)
        g_bias = gdelta.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else None
        gD = (gy * ut).sum((0, 1)).to(D.dtype) if D is not None else None

        def back(t: Tensor, like: Tensor) -> Tensor:
            return t.permute(1, 2, 0).to(like.dtype)

        return (
            back(gu, u),
            back(gdelta, delta),
            gA.to(A.dtype),
            back(gB, B),
            back(gC, C),
            gD,
            back(gz, z) if gz is not None else None,
            g_bias,
            None,
        )


def _step_loop_forward(dt: Tensor, dtu: Tensor, Bt: Tensor, Ct: Tensor, A: Tensor):
    """The CPU step loop: y (l, b, d), the states entering each time chunk, and the tiling (time chunk, rows)."""
    length, batch, d = dt.shape
    n = A.shape[1]
    chunk, rows = _tiling(batch, d, n, length)
    starts = list(range(0, length, chunk))
    y = torch.empty_like(dt)
    # States entering each time chunk (chunk 0 starts from zero), kept for the backward's recomputation.
    states = dt.new_empty(max(len(starts) - 1, 0), batch, d, n)
    for r0 in range(0, batch, rows):
        r1 = min(batch, r0 + rows)
        h_prev = None
        for ci, t0 in enumerate(starts):
            t1 = min(length, t0 + chunk)
            if ci > 0:
                states[ci - 1, r0:r1] = h_prev
            h = _chunk_states(dt[t0:t1, r0:r1], dtu[t0:t1, r0:r1], Bt[t0:t1, r0:r1], A, h_prev)[1]
            # y[t, r] = h[t, r] (d, n) @ C[t, r] (n,)
            torch.matmul(h, Ct[t0:t1, r0:r1, :, None], out=y[t0:t1, r0:r1, :, None])
            h_prev = h[-1]
    return y, states, (chunk, rows)


def _step_loop_backward(dt, dtu, ut, Bt, Ct, Aw, gy, states, tiling, gu_D):
    """Gradients (u through dt*u*B, plus gu_D when given; dt, B, C, A) of :func:`_step_loop_forward`."""
    chunk, rows = tiling
    length, batch, _ = ut.shape
    gdt = torch.empty_like(ut)
    gu = torch.empty_like(ut) if gu_D is None else gu_D
    gB = torch.empty_like(Bt)
    gC = torch.empty_like(Ct)
    gA = torch.zeros_like(Aw)
    starts = list(range(0, length, chunk))
    for r0 in range(0, batch, rows):
        r1 = min(batch, r0 + rows)
        carry = None  # dA[t0 of next chunk] * g[t0 of next chunk]
        for ci in range(len(starts) - 1, -1, -1):
            t0 = starts[ci]
            t1 = min(length, t0 + chunk)
            sl = (slice(t0, t1), slice(r0, r1))
            h0 = states[ci - 1, r0:r1] if ci > 0 else None
            dA, h = _chunk_states(dt[sl], dtu[sl], Bt[sl], Aw, h0)
            # adjoint state: g[t] = C[t] * gy[t] + dA[t+1] * g[t+1]
            g = gy[sl][..., None] * Ct[sl][:, :, None, :]
            _scan_reverse_inplace(g, dA, carry)
            carry = dA[0] * g[0]
            gC[sl] = torch.matmul(h.transpose(-1, -2), gy[sl][..., None])[..., 0]
            gdBu = torch.matmul(g, Bt[sl][..., None])[..., 0]  # sum_n g * B  -> (t, r, d)
            gB[sl] = torch.matmul(g.transpose(-1, -2), dtu[sl][..., None])[..., 0]
            if gu_D is None:
                gu[sl] = gdBu * dt[sl]
            else:
                gu[sl].addcmul_(gdBu, dt[sl])
            # w = g * dA * h[t-1]: gradient w.r.t. (dt * A) through exp
            w = g.mul_(dA)
            w[1:].mul_(h[:-1])
            if h0 is not None:
                w[0].mul_(h0)
            else:
                w[0].zero_()
            gdt[sl] = (w * Aw).sum(-1) + gdBu * ut[sl]
            gA += torch.einsum("trdn,trd->dn", w, dt[sl])
    return gu, gdt, gB, gC, gA


def _chunk_states(dt: Tensor, dtu: Tensor, Bt: Tensor, A: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """dA = exp(dt*A) and states h for one block; dt, dtu: (t, r, d), Bt: (t, r, n), h0: (r, d, n) or None."""
    dA = torch.exp(dt[..., None] * A)
    h = dtu[..., None] * Bt[:, :, None, :]
    _scan_inplace(h, dA, h0)
    return dA, h


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Pure-PyTorch selective scan (any device, fp32 state under autocast, hand-written backward)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    device_type = u.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))


# --------------------------------------------------------------------------------------------------------------------
# Compiled CPU kernel (lavila.models.ssm_cpu), used by default on CPU when a C compiler is available
# --------------------------------------------------------------------------------------------------------------------
class _SelectiveScanCpuFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
        work = torch.float64 if u.dtype == torch.float64 else torch.float32

        def prep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().to(work).contiguous()

        uw, dw, Aw, Dw, zw, bw = (prep(t) for t in (u, delta, A, D, z, delta_bias))
        Bt, Ct = prep(B.transpose(1, 2)), prep(C.transpose(1, 2))
        out = scan_forward(lib, uw, dw, Aw, Bt, Ct, Dw, zw, bw, delta_softplus)
        ctx.lib = lib
        ctx.delta_softplus = delta_softplus
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.save_for_backward(uw, dw, Aw, Bt, Ct, Dw, zw, bw)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, gout):
        uw, dw, Aw, Bt, Ct, Dw, zw, bw = ctx.saved_tensors
        grads = scan_backward(ctx.lib, uw, dw, Aw, Bt, Ct, Dw, zw, bw, ctx.delta_softplus,
                              gout.to(uw.dtype).contiguous())
        gu, gdelta, gA, gBt, gCt, gD, gz, gbias = grads
        gB, gC = gBt.transpose(1, 2), gCt.transpose(1, 2)
        out = [None]
        for g, dtype in zip((gu, gdelta, gA, gB, gC, gD, gz, gbias), ctx.dtypes):
            out.append(None if g is None else g.to(dtype))
        return (*out, None)


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Selective scan with the compiled CPU kernel (fp32 state, or fp64 for fp64 inputs); CPU tensors only."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    lib = load_kernel()
    if lib is None:
        raise RuntimeError(f"selective-scan backend 'cpu' unavailable: {kernel_error()}; use backend='torch' "
                           f"(or unset ${BACKEND_ENV})")
    if u.device.type != "cpu":
        raise RuntimeError(f"selective-scan backend 'cpu' needs CPU tensors, got a tensor on {u.device}")
    with torch.autocast(device_type="cpu", enabled=False):
        return _SelectiveScanCpuFn.apply(lib, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))


def cpu_kernel_available() -> bool:
    """True when the compiled CPU kernel is (or can be) built on this machine."""
    return load_kernel() is not None


# --------------------------------------------------------------------------------------------------------------------
# CUDA kernels (mamba_ssm) and backend selection
# --------------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _cuda_selective_scan_fn():
    """mamba_ssm's selective_scan_fn, or None when it cannot be imported (imported lazily, once)."""
    if not torch.cuda.is_available():
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or the compiled extension missing / built for another torch
        return None
    return selective_scan_fn


def cuda_scan_available() -> bool:
    """True when mamba_ssm's CUDA selective scan can be used on this machine."""
    return _cuda_selective_scan_fn() is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ('torch', 'cpu' or 'cuda') for a tensor on ``device``; ``$LAVILA_SCAN_BACKEND`` overrides 'auto'.

    'auto' picks mamba_ssm's kernels for CUDA tensors when importable, the compiled kernel for CPU tensors when a
    C compiler is available, and the pure-PyTorch scan otherwise.
    """
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r} (from argument or ${BACKEND_ENV}); "
                         f"use one of {_BACKENDS}")
    if backend == "auto":
        if device.type == "cuda":
            return "cuda" if cuda_scan_available() else "torch"
        if device.type == "cpu":
            return "cpu" if cpu_kernel_available() else "torch"
        return "torch"
    if backend == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"selective-scan backend 'cuda' needs CUDA tensors, got a tensor on {device}; "
                               f"use backend='torch' (or unset ${BACKEND_ENV})")
        if not cuda_scan_available():
            raise RuntimeError("selective-scan backend 'cuda' requested but mamba_ssm's CUDA kernels cannot be "
                               "imported; install the `cuda` extra (pip install --no-build-isolation -e .[cuda]) "
                               f"or use backend='torch' (or unset ${BACKEND_ENV})")
    return backend


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Selective scan with mamba_ssm's signature.

    ``backend``: 'auto' (default), 'torch' (pure PyTorch, any device), 'cpu' (compiled C kernel) or 'cuda'
    (mamba_ssm's kernels). See :func:`resolve_backend`.
    """
    chosen = resolve_backend(backend, u.device)
    if chosen == "cuda":
        fn = _cuda_selective_scan_fn()
        return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if chosen == "cpu":
        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
