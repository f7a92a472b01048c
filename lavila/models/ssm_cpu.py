"""Compiled CPU kernel for the selective scan: a small C file built on first use with the system C compiler.

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

from lavila.utils.ckernel import CACHE_ENV, CompiledKernel, thread_pool

__all__ = ["CACHE_ENV", "load_kernel", "kernel_error", "scan_forward", "scan_backward"]

# Vectorisable float helpers: a branch-free expf (Cephes polynomial, ~1 ulp; arguments clamped to [-87, 88], so
# underflow gives ~1e-38 instead of 0 and nothing overflows), log1p on [0, 1] through 2*atanh(y / (2 + y)) (no
# cancellation for tiny y), softplus = max(x, 0) + log1p(exp(-|x|)) and sigmoid. Double uses libm (tests only).
_C_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
static inline float vexpf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float m = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - m * 0.693359375f + m * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)m + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}
static inline float vlog1p01f(float y) {  /* log(1 + y) for y in [0, 1] */
    const float s = y / (2.0f + y), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}
static inline float softplus_f32(float x) { return (x > 0.0f ? x : 0.0f) + vlog1p01f(vexpf(-fabsf(x))); }
static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + vexpf(-x)); }
static inline double softplus_f64(double x) { return x > 20.0 ? x : log1p(exp(x)); }
static inline double sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }
"""

# One body per dtype: T is float or double, EXPN the exp used on the state axis, _SUF the symbol suffix.
_C_TEMPLATE = r"""
/* Per-row prologue: dt[t] (softplus'd), du[t] = dt*u, and silu(z) / sigmoid(z) when z is given. */
static inline void row_prep_SUF(const T* restrict u, const T* restrict delta, const T* restrict z, T bias,
                                int softplus, int64_t l, T* restrict dt, T* restrict du, T* restrict sz) {
    if (softplus) { for (int64_t t = 0; t < l; ++t) dt[t] = SOFTPLUS(delta[t] + bias); }
    else { for (int64_t t = 0; t < l; ++t) dt[t] = delta[t] + bias; }
    for (int64_t t = 0; t < l; ++t) du[t] = dt[t] * u[t];
    if (z) { for (int64_t t = 0; t < l; ++t) sz[t] = SIGMOID(z[t]); }
}

/* u, delta, z, out: (b, d, l); Bt, Ct: (b, l, n); A: (d, n); D, bias: (d,) or NULL. Rows d0..d1-1. */
int fwd_SUF(const T* restrict u, const T* restrict delta, const T* restrict A, const T* restrict Bt,
            const T* restrict Ct, const T* restrict D, const T* restrict z, const T* restrict bias,
            int softplus, T* restrict out, int64_t b, int64_t d, int64_t n, int64_t l, int64_t d0, int64_t d1) {
    T* buf = (T*)malloc(sizeof(T) * (2 * n + 3 * l));
    if (!buf) return 1;
    T* restrict h = buf;
    T* restrict a = h + n;
    T* restrict dt = a + n;
    T* restrict du = dt + l;
    T* restrict sz = du + l;
    for (int64_t bi = 0; bi < b; ++bi) {
        for (int64_t di = d0; di < d1; ++di) {
            const int64_t row = (bi * d + di) * l;
            const T* restrict Ad = A + di * n;
            const T dd = D ? D[di] : (T)0;
            row_prep_SUF(u + row, delta + row, z ? z + row : NULL, bias ? bias[di] : (T)0, softplus, l, dt, du, sz);
            for (int64_t k = 0; k < n; ++k) h[k] = 0;
            for (int64_t t = 0; t < l; ++t) {
                const T* restrict Bk = Bt + (bi * l + t) * n;
                const T* restrict Ck = Ct + (bi * l + t) * n;
                const T dtt = dt[t], dut = du[t];
                for (int64_t k = 0; k < n; ++k) a[k] = EXPN(dtt * Ad[k]);
                T y = 0;
                for (int64_t k = 0; k < n; ++k) {
                    h[k] = a[k] * h[k] + dut * Bk[k];
                    y += h[k] * Ck[k];
                }
                y += dd * u[row + t];
                if (z) y *= z[row + t] * sz[t];
                out[row + t] = y;
            }
        }
    }
    free(buf);
    return 0;
}

/* Gradients for rows d0..d1-1. gu, gdelta, gz: (b, d, l) written; gA: (d, n), gD, gbias: (d,) accumulated into
   for the rows; gB, gC: (b, l, n) per-thread partial sums accumulated into. The caller zeroes the accumulators. */
int bwd_SUF(const T* restrict u, const T* restrict delta, const T* restrict A, const T* restrict Bt,
            const T* restrict Ct, const T* restrict D, const T* restrict z, const T* restrict bias,
            int softplus, const T* restrict gout, T* restrict gu, T* restrict gdelta, T* restrict gA,
            T* restrict gB, T* restrict gC, T* restrict gD, T* restrict gz, T* restrict gbias,
            int64_t b, int64_t d, int64_t n, int64_t l, int64_t d0, int64_t d1) {
    /* row scratch: states h_t and decays dA_t, (l, n) each; dt, du, sigmoid(z), y, softplus', (l,) each */
    T* buf = (T*)malloc(sizeof(T) * (2 * l * n + 5 * l + 2 * n));
    if (!buf) return 1;
    T* restrict hs = buf;
    T* restrict as = hs + l * n;
    T* restrict dt = as + l * n;
    T* restrict du = dt + l;
    T* restrict sz = du + l;
    T* restrict ys = sz + l;
    T* restrict sp = ys + l;
    T* restrict g = sp + l;
    T* restrict gAr = g + n;
    /* batch-major like the forward, so the (l, n) slices of B, C, gB, gC stay in cache across channels */
    for (int64_t bi = 0; bi < b; ++bi) {
        for (int64_t di = d0; di < d1; ++di) {
            for (int64_t k = 0; k < n; ++k) gAr[k] = 0;
            T gDr = 0, gbr = 0;
            const T* restrict Ad = A + di * n;
            const T dd = D ? D[di] : (T)0;
            const T bb = bias ? bias[di] : (T)0;
            const int64_t row = (bi * d + di) * l;
            row_prep_SUF(u + row, delta + row, z ? z + row : NULL, bb, softplus, l, dt, du, sz);
            if (softplus) { for (int64_t t = 0; t < l; ++t) sp[t] = SIGMOID(delta[row + t] + bb); }
            /* forward recomputation, keeping h_t and dA_t */
            for (int64_t t = 0; t < l; ++t) {
                const T* restrict Bk = Bt + (bi * l + t) * n;
                const T* restrict Ck = Ct + (bi * l + t) * n;
                T* restrict at = as + t * n;
                T* restrict ht = hs + t * n;
                const T dtt = dt[t], dut = du[t];
                for (int64_t k = 0; k < n; ++k) at[k] = EXPN(dtt * Ad[k]);
                T y = 0;
                if (t) {
                    const T* restrict hp = hs + (t - 1) * n;
                    for (int64_t k = 0; k < n; ++k) { ht[k] = at[k] * hp[k] + dut * Bk[k]; y += ht[k] * Ck[k]; }
                } else {
                    for (int64_t k = 0; k < n; ++k) { ht[k] = dut * Bk[k]; y += ht[k] * Ck[k]; }
                }
                ys[t] = y + dd * u[row + t];
            }
            /* reverse pass: g is the adjoint of h_t */
            for (int64_t k = 0; k < n; ++k) g[k] = 0;
            for (int64_t t = l - 1; t >= 0; --t) {
                T gy = gout[row + t];
                if (z) {
                    const T zt = z[row + t], s = sz[t];
                    gz[row + t] = gy * ys[t] * s * ((T)1 + zt * ((T)1 - s));
                    gy *= zt * s;
                }
                const T ut = u[row + t];
                const T dtt = dt[t], dut = du[t];
                gDr += gy * ut;
                const T* restrict Bk = Bt + (bi * l + t) * n;
                const T* restrict Ck = Ct + (bi * l + t) * n;
                T* restrict gBk = gB + (bi * l + t) * n;
                T* restrict gCk = gC + (bi * l + t) * n;
                const T* restrict at = as + t * n;
                const T* restrict ht = hs + t * n;
                T sB = 0, sA = 0;
                for (int64_t k = 0; k < n; ++k) {
                    const T gk = g[k] + Ck[k] * gy;
                    gCk[k] += gy * ht[k];
                    sB += gk * Bk[k];
                    gBk[k] += gk * dut;
                    g[k] = gk;
                }
                if (t) {
                    const T* restrict hp = hs + (t - 1) * n;
                    for (int64_t k = 0; k < n; ++k) {
                        const T w = g[k] * hp[k] * at[k];
                        sA += w * Ad[k];
                        gAr[k] += w * dtt;
                        g[k] *= at[k];
                    }
                }
                T gdt = sB * ut + sA;
                if (softplus) gdt *= sp[t];
                gdelta[row + t] = gdt;
                gbr += gdt;
                gu[row + t] = dd * gy + sB * dtt;
            }
            for (int64_t k = 0; k < n; ++k) gA[di * n + k] += gAr[k];
            if (gD) gD[di] += gDr;
            if (gbias) gbias[di] += gbr;
        }
    }
    free(buf);
    return 0;
}
"""


def _c_source() -> str:
    parts = [_C_PRELUDE]
    for typ, suf, expn in (("float", "f32", "vexpf"), ("double", "f64", "exp")):
        body = _C_TEMPLATE.replace("_SUF", f"_{suf}").replace("EXPN", expn)
        body = body.replace("SOFTPLUS", f"softplus_{suf}").replace("SIGMOID", f"sigmoid_{suf}")
        parts.append(f"#define T {typ}\n{body}\n#undef T\n")
    return "".join(parts)


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


_kernel = CompiledKernel("selective_scan", _c_source, _FLAGS, _declare, "the pure-PyTorch scan")
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
