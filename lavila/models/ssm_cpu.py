"""Compiled CPU kernel for the selective scan: ``ssm_cpu.c`` (beside this module) built on first use with the system C
compiler.

The pure-PyTorch scan in :mod:`lavila.models.ssm` has to stream (b, d, l, n)-sized tensors through memory a few
dozen times; this kernel keeps the (n,) state of one (batch, channel) row in registers, so forward + backward is
a couple of passes over the inputs. No torch headers are needed: the C code works on raw pointers, is compiled
with ``cc -O3`` on first use, cached and loaded with ctypes by :mod:`lavila.utils.ckernel` (cache folder
``$LAVILA_KERNEL_CACHE``, default ``~/.cache/lavila/kernels``), and, for large problems, run on
``torch.get_num_threads()`` Python threads (ctypes releases the GIL) over disjoint channel ranges. When no
compiler is available, or the build fails, :func:`load_kernel` returns None and the caller uses the pure-PyTorch path.
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from lavila.utils.ckernel import CACHE_ENV, CompiledKernel, SourceFile, thread_pool

__all__ = ["CACHE_ENV", "load_kernel", "kernel_error", "scan_forward", "scan_backward"]

# Not -ffast-math (see lavila.utils.ckernel): these flags allow the same vectorisation of the sums without touching
# global floating-point state.
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
          "-fassociative-math", "-freciprocal-math", "-fPIC", "-shared", "-std=c99"]


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suf in ("f32", "f64"):
        fwd = getattr(lib, f"fwd_{suf}")
        fwd.argtypes = [ptr] * 8 + [i32, ptr] + [i64] * 6
        fwd.restype = i32
        bwd = getattr(lib, f"bwd_{suf}")
        bwd.argtypes = [ptr] * 8 + [i32] + [ptr] * 9 + [i64] * 6
        bwd.restype = i32


_kernel = CompiledKernel("selective_scan", SourceFile(__package__, "ssm_cpu.c"), _FLAGS, _declare,
                         "the pure-PyTorch scan")
_state = _kernel.state  # lib / error once tried (tests clear it to force a rebuild)


def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None when it cannot be built here."""
    return _kernel.load()


def kernel_error() -> str | None:
    """Why the kernel could not be built (None when it was built or not tried yet)."""
    return _kernel.error()


# Below this many state updates (b*d*l*n) one thread is faster than handing work to the pool.
_PARALLEL_MIN_WORK = 1 << 22


def _ranges(d: int, work: int) -> list[tuple[int, int]]:
    """Channel ranges: one for small problems, else 4 per thread (the pool balances them when cores are busy)."""
    threads = torch.get_num_threads()
    parts = 1 if work < _PARALLEL_MIN_WORK or threads < 2 else min(d, 4 * threads)
    step = -(-d // parts)
    return [(s, min(d, s + step)) for s in range(0, d, step)]


def _p(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _run(jobs) -> None:
    if len(jobs) == 1:
        codes = [jobs[0]()]
    else:
        codes = list(thread_pool(torch.get_num_threads()).map(lambda job: job(), jobs))
    if any(codes):
        raise MemoryError("selective scan CPU kernel could not allocate its scratch buffers")


def scan_forward(lib, u: Tensor, delta: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Tensor | None,
                 z: Tensor | None, bias: Tensor | None, softplus: bool) -> Tensor:
    """All tensors contiguous, one dtype (float32/float64), on CPU; Bt, Ct are (b, l, n). Returns (b, d, l)."""
    b, d, l = u.shape
    n = A.shape[1]
    out = torch.empty_like(u)
    fn = lib.fwd_f32 if u.dtype == torch.float32 else lib.fwd_f64
    args = [_p(u), _p(delta), _p(A), _p(Bt), _p(Ct), _p(D), _p(z), _p(bias), int(softplus), _p(out), b, d, n, l]
    _run([lambda s=s, e=e: fn(*args, s, e) for s, e in _ranges(d, b * d * l * n)])
    return out


def scan_backward(lib, u: Tensor, delta: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Tensor | None,
                  z: Tensor | None, bias: Tensor | None, softplus: bool, gout: Tensor):
    """Gradients (gu, gdelta, gA, gBt, gCt, gD, gz, gbias) in the kernel's layouts (gBt, gCt: (b, l, n))."""
    b, d, l = u.shape
    n = A.shape[1]
    gu, gdelta = torch.empty_like(u), torch.empty_like(u)
    gz = torch.empty_like(u) if z is not None else None
    gA = torch.zeros_like(A)
    gD = torch.zeros_like(D) if D is not None else None
    gbias = torch.zeros_like(bias) if bias is not None else None
    ranges = _ranges(d, b * d * l * n)
    gBs = Bt.new_zeros((len(ranges),) + tuple(Bt.shape))
    gCs = Ct.new_zeros((len(ranges),) + tuple(Ct.shape))
    fn = lib.bwd_f32 if u.dtype == torch.float32 else lib.bwd_f64
    head = [_p(u), _p(delta), _p(A), _p(Bt), _p(Ct), _p(D), _p(z), _p(bias), int(softplus), _p(gout), _p(gu),
            _p(gdelta), _p(gA)]
    jobs = [lambda i=i, s=s, e=e: fn(*head, _p(gBs[i]), _p(gCs[i]), _p(gD), _p(gz), _p(gbias), b, d, n, l, s, e)
            for i, (s, e) in enumerate(ranges)]
    _run(jobs)
    return gu, gdelta, gA, gBs.sum(0), gCs.sum(0), gD, gz, gbias
