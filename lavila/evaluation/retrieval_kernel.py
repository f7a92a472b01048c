"""Compiled kernel for the EK100 MIR metrics (:mod:`lavila.evaluation.retrieval`): exact AP and nDCG per query.

Only the items of non-zero relevancy of a query (about 11 % on EK100; call them its k "splitters") contribute to
either metric, so the kernel never sorts a whole query. Per query (a row of the (clips x sentences) matrices for
video-to-text, a column for text-to-video):

1. check that the similarities are finite and the relevancy finite and non-negative; list the splitters (item index,
   relevancy) in item order; note the smallest and largest similarity;
2. cut [lowest, highest] similarity into equal-width buckets (8 per splitter), bucket 0 the highest. The bucket is a
   monotone function of the similarity, so bucket order never contradicts rank order, and equal similarities (-0.0
   and 0.0 too) share a bucket. The splitters are sorted into rank order (counting sort by bucket, then an insertion
   sort that only moves them within their bucket; ties: lower item index first);
3. one pass over all items: p = the number of splitters in earlier buckets, plus one if the first splitter of the
   item's own bucket is ahead of it (the convention: higher similarity first, ties by lower item index); a histogram
   counts the items per p. The few items whose bucket holds two or more splitters are then placed among those by a
   binary search and moved to the right histogram bin;
4. the rank of the t-th splitter = (items with p <= t) - 1; walking the splitters in rank order gives the graded
   precision at each positive (relevancy exactly 1; partial relevancies count towards it) and the DCG over the first
   k ranks; the ideal DCG comes from the query's distinct relevancy levels (counted in a small hash table, sorted).

Text-to-video queries are columns: 64 of them at a time are read row by row (with software prefetch: the rows are
far apart) into per-column buffers, so there is no dense transpose. Reading the float64 relevancy that way would cost
more than everything else, so the video-to-text pass also writes a one-byte code per relevancy entry (0 = zero; a
code table per range of rows, at most 255 levels; a row past that reads the float64 value instead), and the columns
read the codes. Float64 similarities are handled the same way (the comparisons are exact in either type).

Queries run on Python threads (ctypes releases the GIL) over ranges of rows, then of column blocks. The C code is
``retrieval_kernel.c`` beside this module, built with :mod:`lavila.utils.ckernel` (``cc -O3``, no fast-math: plain
IEEE arithmetic, sequential float64 sums); when no compiler is available :func:`load_kernel` returns None and the
caller uses its NumPy path.
"""
from __future__ import annotations

import ctypes

import numpy as np

from lavila.utils.ckernel import CompiledKernel, SourceFile, thread_pool

__all__ = ["load_kernel", "kernel_error", "direction_scores"]

COL_BLOCK = 64  # text-to-video queries per block (at most 64): 4 cache lines of float32 similarities per row
BUCKETS_PER_SPLITTER = 8
LEVEL_TABLE = 256  # relevancy codes per range of rows (code 0 = zero relevancy)

_TYPES = {"f32": "float", "f64": "double"}  # symbol suffix -> C type

# Plain IEEE arithmetic (no fast-math, no reassociation): the sums are the sequential float64 sums.
# The block and table sizes above reach the C code as -D flags.
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c99", f"-DCOL_BLOCK={COL_BLOCK}",
          f"-DBUCKETS_PER_SPLITTER={BUCKETS_PER_SPLITTER}", f"-DLEVEL_TABLE={LEVEL_TABLE}"]


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    for suf in _TYPES:
        rows = getattr(lib, f"rows_{suf}")
        rows.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, i32]
        rows.restype = ctypes.c_int
        cols = getattr(lib, f"cols_{suf}")
        cols.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
        cols.restype = ctypes.c_int


_kernel = CompiledKernel("mir_metrics", SourceFile(__package__, "retrieval_kernel.c"), _FLAGS, _declare,
                         "the NumPy MIR metrics")


def load_kernel() -> ctypes.CDLL | None:
    """The compiled MIR kernel, building it on first use; None when it cannot be built here."""
    return _kernel.load()


def kernel_error() -> str | None:
    """Why the kernel could not be built (None when it was built or not tried yet)."""
    return _kernel.error()


def _ranges(count: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    step = max(align, -(-count // parts))
    step = -(-step // align) * align
    return [(lo, min(count, lo + step)) for lo in range(0, count, step)]


def _run(jobs: list, threads: int) -> None:
    if threads < 2 or len(jobs) == 1:
        status = [job() for job in jobs]
    else:
        status = list(thread_pool(threads).map(lambda job: job(), jobs))
    if 1 in status:
        raise ValueError("similarity contains NaN or infinite values")
    if 2 in status:
        raise ValueError("relevancy must be finite and non-negative")
    if 3 in status:
        raise MemoryError("MIR metrics kernel could not allocate its scratch buffers")


def direction_scores(lib: ctypes.CDLL, sim: np.ndarray, rel: np.ndarray, transposes: tuple[bool, ...],
                     threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-query (AP, nDCG) of each direction (``True``: columns as queries).

    ``sim``: C-contiguous float32 or float64; ``rel``: C-contiguous float64 of the same shape. Raises
    ``ValueError`` for non-finite similarities or negative / non-finite relevancy.
    """
    n, m = sim.shape
    suf = "f32" if sim.dtype == np.float32 else "f64"
    disc = 1.0 / np.log2(np.arange(max(n, m)) + 2.0)
    parts = 1 if threads < 2 else 8 * threads  # several per thread: the pool balances them on a busy machine
    p = ctypes.c_void_p
    head = (p(sim.ctypes.data), p(rel.ctypes.data), n, m)
    results = {t: (np.empty(m if t else n), np.empty(m if t else n)) for t in set(transposes)}
    # Video-to-text first: it validates everything and, when columns follow, writes the relevancy codes.
    row_ranges = _ranges(n, parts)
    want_codes = True in results
    codes = np.empty((n, m), dtype=np.uint8) if want_codes else None
    levels = np.zeros((len(row_ranges), LEVEL_TABLE))
    row_level = np.full(n, -1, dtype=np.int32)
    ap, nd = results[False] if False in results else (np.empty(n), np.empty(n))
    tail = (p(disc.ctypes.data), p(ap.ctypes.data), p(nd.ctypes.data), p(codes.ctypes.data if want_codes else 0),
            p(levels.ctypes.data), p(row_level.ctypes.data))
    rows = getattr(lib, f"rows_{suf}")
    _run([lambda lo=lo, hi=hi, c=c: rows(*head, lo, hi, *tail[:4], p(levels[c].ctypes.data), tail[5],
                                          c * LEVEL_TABLE)
          for c, (lo, hi) in enumerate(row_ranges)], threads)
    if want_codes:
        ap, nd = results[True]
        tail = (p(disc.ctypes.data), p(ap.ctypes.data), p(nd.ctypes.data), p(codes.ctypes.data),
                p(levels.ctypes.data), p(row_level.ctypes.data))
        cols = getattr(lib, f"cols_{suf}")
        _run([lambda lo=lo, hi=hi: cols(*head, lo, hi, *tail) for lo, hi in _ranges(m, parts, COL_BLOCK)], threads)
    return [results[t] for t in transposes]
