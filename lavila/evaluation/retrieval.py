"""EPIC-KITCHENS-100 multi-instance retrieval metrics: mAP and nDCG, exactly as the official definitions.

Rows of ``similarity`` / ``relevancy`` are queries, columns are items; the video-to-text direction uses the
(clips x sentences) matrix, text-to-video its transpose.

mAP (official EPIC-KITCHENS definition): rank the items of a query by similarity, descending. The positives are the
items with relevancy exactly 1. The precision at rank k is the sum of the *graded* relevancies of the top k items
divided by k (partial relevancies count towards precision; binary precision gives ~15x lower values). AP is the mean
of the precision at the ranks of the positives; mAP the mean over queries.

nDCG: with k = the number of items of non-zero relevancy for the query, DCG = sum over the first k ranks of
relevancy / log2(rank + 1) (rank starting at 1), IDCG = the same for the items sorted by relevancy; nDCG = DCG / IDCG,
averaged over queries.

Conventions (documented choices):

* Ties in similarity are ordered by item index, lower first, i.e. the order of a *stable* sort of ``-similarity``.
  The official NumPy code sorts with NumPy's default (unstable) sort, so its result on ties is implementation-defined;
  on continuous similarities there are no ties and the two agree exactly.
* A query without any positive (no relevancy == 1; for nDCG no non-zero relevancy) has AP (nDCG) 0/0 = NaN, as in the
  official code, so the mean is NaN and a warning names the number of such queries. ``skip_empty=True`` leaves them
  out of the mean instead. On the real EK100 test relevancy every row and every column has a positive.
* Relevancy must be finite and non-negative and similarity finite; anything else raises ``ValueError``.

Algorithm: only items of non-zero relevancy (about 11 % of the real EK100 test matrix) contribute to either metric.
The compiled kernel (:mod:`lavila.evaluation.retrieval_kernel`, built with the system C compiler on first use) ranks
just those items of each query with equal-width similarity buckets and one counting pass over the query (no sort
of the whole query), in both directions, on ``num_threads`` threads. Without a C compiler the NumPy path below is
used; both give the same numbers (to rounding of the sums, ~1e-16).

NumPy path: the non-zero relevancies take few distinct levels (17 on EK100), so each is stored as a small integer
code. One pass over the matrix (in L2-sized chunks) validates it and builds 32-bit sort keys: the top 31 bits of the
order-preserving integer of the float32 similarity and a "non-zero relevancy" flag bit; the text-to-video direction
reads the same keys through a blocked transpose of each chunk of columns. Each query row is sorted once; the flagged
positions of a sorted row are the ranks of the items that matter, paired with their codes by one sort per direction
of packed 64-bit (query, key, item, code) values of the non-zero items alone, so the relevancy in rank order comes
out of the sort itself (no gather from the relevancy matrix). An item whose 31-bit key is shared by a neighbour (an
exact tie, or floats one unit apart) gets its exact rank by direct comparison with its row; a chunk with very many
of them (e.g. constant scores) sorts 64-bit keys (value, item index, code) instead, which is exact by construction.
AP, DCG and the ideal DCG (from the per-query histogram of relevancy levels) are per-chunk cumsums and
``bincount``s. With two or more threads all chunks of both directions share one thread pool (NumPy releases the GIL
while sorting). Similarities that float32 cannot hold exactly (float64 data) use a stable ``argsort`` per chunk
instead (same results, slower). No Python loop over rows, no dense (N x M) index or divisor matrices.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lavila.evaluation import retrieval_kernel

__all__ = ["mir_metrics", "mean_average_precision", "ndcg", "retrieval_scores"]

_CHUNK_ELEMENTS = 1 << 18  # similarity entries per chunk of queries (1 MiB of int32 keys: about L2)
_MAX_FIXUPS_PER_ROW = 2  # more exact-rank fix-ups per row than this: the chunk takes the 64-bit sort instead


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {arr.shape}")
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _check_inputs(similarity: Any, relevancy: Any) -> tuple[np.ndarray, np.ndarray]:
    sim = _as_numpy(similarity, "similarity")
    rel = _as_numpy(relevancy, "relevancy")
    if sim.shape != rel.shape:
        raise ValueError(f"similarity {sim.shape} and relevancy {rel.shape} must have the same shape "
                         "(queries x items; the video-to-text matrix is clips x unique sentences)")
    if sim.size == 0:
        raise ValueError("empty similarity matrix")
    return np.ascontiguousarray(sim), np.ascontiguousarray(rel)  # (finiteness: checked by the scoring passes)


@dataclass
class _Prepared:
    """The validated problem: sort keys and the non-zero-relevancy items with their relevancy codes."""

    sim: np.ndarray  # (N, M) float32 or float64
    keys: np.ndarray | None  # (N, M) int32 descending 31-bit keys | non-zero flag (float32 similarities only)
    nz_rows: np.ndarray  # int64 (nnz,) row of each non-zero-relevancy item, row-major order
    nz_cols: np.ndarray  # int64 (nnz,)
    nz_keys: np.ndarray  # int64 (nnz,) their 31-bit keys (0 without ``keys``)
    nz_codes: np.ndarray  # int64 (nnz,) index into ``levels`` (1-based)
    levels: np.ndarray  # float64 (L + 1,): 0, then the distinct non-zero relevancies ascending
    code_bits: int


def _descending_keys(sim: np.ndarray, flags: np.ndarray, out: np.ndarray) -> None:
    """int32 keys whose ascending order is the descending order of the float32 ``sim`` in their top 31 bits, bit 0
    set where ``flags``; -0.0 and 0.0 get the same key. Written into ``out`` (an L2-sized chunk)."""
    bits = sim.view(np.int32)
    np.right_shift(bits, 31, out=out)
    out &= 0x7FFFFFFF
    out ^= bits  # order-preserving integer of the float (-0.0 -> -1, 0.0 -> 0)
    np.negative(out, out=out)  # descending; cannot overflow for finite floats
    out &= -2  # also drops the bit that tells -0.0 from 0.0
    np.bitwise_or(out, flags, out=out)


def _level_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, 1-based code of each value); cheap when the values take few distinct levels."""
    if values.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    levels = np.unique(values[:: max(1, values.size // 65536)])
    codes = np.minimum(np.searchsorted(levels, values), len(levels) - 1)
    missing = np.flatnonzero(levels[codes] != values)
    if len(missing):  # levels the sample did not contain: add them and re-code
        found = levels
        levels = np.union1d(found, values[missing])
        codes = np.searchsorted(levels, found).take(codes)
        codes[missing] = np.searchsorted(levels, values[missing])
    return levels, codes + 1


def _map(pool: ThreadPoolExecutor | None, fn: Any, args: Any) -> list:
    return list(pool.map(fn, args)) if pool is not None else [fn(a) for a in args]


def _prepare(sim: np.ndarray, rel: np.ndarray, pool: ThreadPoolExecutor | None) -> _Prepared:
    """Validate chunk by chunk, build the sort keys, list the non-zero items and code their relevancy levels."""
    n, m = sim.shape
    keys = np.empty((n, m), dtype=np.int32) if sim.dtype == np.float32 else None
    step = max(1, _CHUNK_ELEMENTS // m)

    def run(lo: int) -> tuple[np.ndarray, ...]:
        s, r = sim[lo:lo + step], rel[lo:lo + step]
        if not (-np.inf < s.min() and s.max() < np.inf):  # NaN fails the comparisons too (two SIMD reductions)
            raise ValueError("similarity contains NaN or infinite values")
        if not (r.min() >= 0 and r.max() < np.inf):
            raise ValueError("relevancy must be finite and non-negative")
        mask = r != 0
        nz = np.flatnonzero(mask)
        rows = nz // m
        cols = nz - rows * m
        rows += lo
        if keys is None:
            nz_keys = np.zeros_like(nz)
        else:
            _descending_keys(s, mask, keys[lo:lo + step])
            nz_keys = (keys[lo:lo + step].reshape(-1)[nz] >> 1).astype(np.int64)
            nz_keys += 2**30
        return rows, cols, r.reshape(-1)[nz], nz_keys

    parts = list(zip(*_map(pool, run, range(0, n, step))))
    rows, cols, values, nz_keys = (np.concatenate(part) for part in parts)
    levels, codes = _level_codes(values.astype(np.float64, copy=False))
    return _Prepared(sim, keys, rows, cols, nz_keys, codes, np.concatenate(([0.0], levels)),
                     max(1, len(levels).bit_length()))


def _query_chunk(x: np.ndarray, lo: int, hi: int, transpose: bool) -> np.ndarray:
    """Contiguous copy of queries lo..hi (rows of ``x``, or its columns when ``transpose``)."""
    if not transpose:
        return x[lo:hi].copy()
    out = np.empty((hi - lo, x.shape[0]), dtype=x.dtype)
    for r in range(0, x.shape[0], 512):  # blocked: ~2.5x faster than one strided copy
        out[:, r:r + 512] = x[r:r + 512, lo:hi].T
    return out


def _exact_ranks(sim_rows: np.ndarray, values_cols: np.ndarray) -> np.ndarray:
    """Exact 0-based rank of item ``values_cols[i]`` in row ``sim_rows[i]`` (ties: lower item index first)."""
    n, m = sim_rows.shape
    value = sim_rows[np.arange(n), values_cols][:, None]
    ahead = (sim_rows > value).sum(1)
    ahead += ((sim_rows == value) & (np.arange(m)[None, :] < values_cols[:, None])).sum(1)
    return ahead


def _rank_chunk_exact(sim: np.ndarray, codes: np.ndarray, code_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ranked (flat position, code) of the non-zero items of a chunk given its dense code matrix."""
    n, m = sim.shape
    index_bits = max(1, int(m - 1).bit_length())
    if sim.dtype == np.float32 and index_bits + code_bits <= 32:  # packed 64-bit keys (value, item index, code)
        bits = (sim + np.float32(0)).view(np.int32)  # + 0 turns -0.0 into 0.0
        keys = -(((bits >> 31) & 0x7FFFFFFF) ^ bits).astype(np.int64)
        keys <<= 32
        keys |= np.arange(m, dtype=np.int64) << code_bits
        keys |= codes
        keys.sort(axis=1)
        ranked = keys & ((1 << code_bits) - 1)
    else:
        order = np.argsort(-sim, axis=1, kind="stable")  # ties: lower item index first
        ranked = np.take_along_axis(codes, order, axis=1)
    flat = np.flatnonzero(ranked)
    return flat, ranked.reshape(-1)[flat].astype(np.int64, copy=False)


def _chunk_scores(levels: np.ndarray, one_code: int, discount: np.ndarray, cum_discount: np.ndarray,
                  counts: np.ndarray, ranks: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (AP, nDCG) from the ranks and codes of the non-zero items, grouped by query in rank order."""
    n = len(counts)
    rows = np.repeat(np.arange(n), counts)
    values = levels.take(codes)
    starts = np.cumsum(counts) - counts
    # Graded relevancy of the top (rank + 1) items = cumulative sum within the query (items are in rank order).
    cumulative = np.cumsum(values)
    has = counts > 0
    offset = np.zeros(n)
    offset[has] = cumulative[starts[has]] - values[starts[has]]
    cumulative -= np.repeat(offset, counts)
    positive = codes == one_code
    pos_rows = rows[positive]
    precision = cumulative[positive] / (ranks[positive] + 1)
    gain = values * discount.take(ranks)
    gain[ranks >= np.repeat(counts, counts)] = 0.0  # only the first k ranks count, k = the query's non-zero items
    # Ideal DCG from the per-query histogram of relevancy levels: the largest level fills the first ranks, etc.
    n_levels = len(levels)
    hist = np.bincount(rows * n_levels + codes, minlength=n * n_levels).reshape(n, n_levels)[:, :0:-1]
    ends = np.cumsum(hist, axis=1)
    idcg = ((cum_discount.take(ends) - cum_discount.take(ends - hist)) * levels[:0:-1]).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(pos_rows, weights=precision, minlength=n) / np.bincount(pos_rows, minlength=n)
        nd = np.bincount(rows, weights=gain, minlength=n) / idcg
    return ap, nd


def _plan(p: _Prepared, transpose: bool) -> tuple[Any, range]:
    """The chunk function and chunk starts of one direction (queries = columns when ``transpose``)."""
    n, m = p.sim.shape[::-1] if transpose else p.sim.shape
    queries, items = (p.nz_cols, p.nz_rows) if transpose else (p.nz_rows, p.nz_cols)
    counts = np.bincount(queries, minlength=n)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    cb = p.code_bits
    code_mask = (1 << cb) - 1
    item_bits = max(1, int(m - 1).bit_length())
    query_bits = max(1, int(n - 1).bit_length())
    if query_bits + 31 + item_bits > 63:
        raise ValueError(f"similarity matrix {p.sim.shape} is too large for 64-bit sort keys")
    # The non-zero items grouped by query in key order (ties: item index), the order of the flagged sorted positions.
    if query_bits + 31 + item_bits + cb <= 63:
        packed = queries << (31 + item_bits + cb)
        part = p.nz_keys << (item_bits + cb)
        packed |= part
        np.left_shift(items, cb, out=part)
        packed |= part
        packed |= p.nz_codes
        packed.sort()
        sorted_codes = packed & code_mask
        packed >>= cb
        packed &= (1 << item_bits) - 1
        sorted_items = packed
    else:  # very many relevancy levels
        order = np.argsort((queries << (31 + item_bits)) | (p.nz_keys << item_bits) | items)
        sorted_codes, sorted_items = p.nz_codes[order], items[order]
    one = np.flatnonzero(p.levels == 1.0)
    one_code = int(one[0]) if len(one) else -1
    step = max(1, _CHUNK_ELEMENTS // m)
    discount = 1.0 / np.log2(np.arange(m) + 2.0)
    cum_discount = np.concatenate(([0.0], np.cumsum(discount)))

    def run(lo: int) -> tuple[np.ndarray, np.ndarray]:
        hi = min(lo + step, n)
        cnt = counts[lo:hi]
        codes = sorted_codes[offsets[lo]:offsets[hi]]
        cols = sorted_items[offsets[lo]:offsets[hi]]
        rows = np.repeat(np.arange(hi - lo), cnt)
        ranks = None
        if p.keys is not None:
            keys = _query_chunk(p.keys, lo, hi, transpose)
            keys.sort(axis=1)
            flags = np.empty(keys.shape, dtype=np.int8)
            np.bitwise_and(keys, 1, out=flags, casting="unsafe")
            flat = np.flatnonzero(flags.view(np.bool_))
            ranks = flat - rows * m
            # Items sharing their 31-bit key with a neighbour in the sorted row need an exact rank.
            sorted_keys = keys.reshape(-1)
            own = sorted_keys.take(flat)
            shared = (((sorted_keys.take(np.maximum(flat - 1, 0)) ^ own) >> 1) == 0) & (ranks > 0)
            shared |= (((sorted_keys.take(np.minimum(flat + 1, len(sorted_keys) - 1)) ^ own) >> 1) == 0) & (
                ranks < m - 1)
            fix = np.flatnonzero(shared)
            if len(fix) > _MAX_FIXUPS_PER_ROW * (hi - lo):  # each fix-up scans a row: the 64-bit sort is cheaper
                ranks = None
            elif len(fix):
                for a in range(0, len(fix), step):  # bounded-memory chunks of the affected items
                    idx = fix[a:a + step]
                    q = lo + rows[idx]
                    sim_rows = p.sim[:, q].T if transpose else p.sim[q]
                    ranks[idx] = _exact_ranks(sim_rows, cols[idx])
                # Only the affected items change order, among themselves (their ranks stay within their groups).
                fix_rows = rows[fix] * m
                order = np.sort(((fix_rows + ranks[fix]) << cb) | codes[fix])
                ranks[fix] = (order >> cb) - fix_rows
                codes = codes.copy()
                codes[fix] = order & code_mask
        if ranks is None:  # exact path: dense codes of the chunk, exact sort
            dense = np.zeros((hi - lo, m), dtype=np.int64 if cb > 15 else np.int16)
            dense[rows, cols] = codes
            flat, codes = _rank_chunk_exact(_query_chunk(p.sim, lo, hi, transpose), dense, cb)
            ranks = flat - rows * m
        return _chunk_scores(p.levels, one_code, discount, cum_discount, cnt, ranks, codes)

    return run, range(0, n, step)


def _directions(similarity: Any, relevancy: Any, num_threads: int | None, transposes: tuple[bool, ...]
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-query (AP, nDCG) of each direction: the compiled kernel when it builds here, else NumPy."""
    threads = _threads(num_threads)
    sim, rel = _check_inputs(similarity, relevancy)
    # the kernel takes float32 / float64 (not long double) and 32-bit item indices
    fits = sim.dtype in (np.float32, np.float64) and max(sim.shape) < 2**31
    lib = retrieval_kernel.load_kernel() if fits else None
    if lib is not None:
        return retrieval_kernel.direction_scores(lib, sim, np.ascontiguousarray(rel, dtype=np.float64), transposes,
                                                 threads)
    return _numpy_directions(sim, rel, threads, transposes)


def _numpy_directions(sim: np.ndarray, rel: np.ndarray, threads: int, transposes: tuple[bool, ...]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The NumPy path (no C compiler); all chunks of all directions share one pool of threads."""
    if sim.dtype != np.float32:
        with np.errstate(over="ignore"):  # values beyond float32: not equal below, the float64 path is taken
            as32 = sim.astype(np.float32)
        if np.array_equal(as32, sim):  # e.g. float32 scores stored as float64: take the fast path
            sim = as32
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        prepared = _prepare(sim, rel, pool)
        plans = _map(pool, lambda t: _plan(prepared, t), transposes)
        tasks = [(run, lo) for run, starts in plans for lo in starts]
        parts = _map(pool, lambda task: task[0](task[1]), tasks)
    finally:
        if pool is not None:
            pool.shutdown()
    out, at = [], 0
    for _, starts in plans:
        chunk = parts[at:at + len(starts)]
        at += len(starts)
        out.append((np.concatenate([a for a, _ in chunk]), np.concatenate([b for _, b in chunk])))
    return out


def _threads(num_threads: int | None) -> int:
    return max(1, num_threads if num_threads is not None else min(torch.get_num_threads(), os.cpu_count() or 1))


def _row_mean(per_row: np.ndarray, skip_empty: bool, what: str) -> float:
    empty = np.isnan(per_row)
    if empty.any():
        if skip_empty:
            per_row = per_row[~empty]
            if per_row.size == 0:
                return float("nan")
        else:
            warnings.warn(f"{int(empty.sum())} of {len(empty)} queries have no positive item; their {what} is NaN "
                          "(official behaviour), so the mean is NaN; pass skip_empty=True to leave them out",
                          RuntimeWarning, stacklevel=3)
    return float(np.mean(per_row))


def retrieval_scores(similarity: Any, relevancy: Any, num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Per-query AP and nDCG in both directions: ``{"vis_ap", "vis_ndcg", "txt_ap", "txt_ndcg"}`` (NaN = no positive).

    ``num_threads`` (default: ``torch.get_num_threads()``): with 2 or more, chunks run in parallel.
    """
    (vis_ap, vis_ndcg), (txt_ap, txt_ndcg) = _directions(similarity, relevancy, num_threads, (False, True))
    return {"vis_ap": vis_ap, "vis_ndcg": vis_ndcg, "txt_ap": txt_ap, "txt_ndcg": txt_ndcg}


def mean_average_precision(similarity: Any, relevancy: Any, skip_empty: bool = False,
                           num_threads: int | None = None) -> float:
    """Official EK100 MIR mAP with the rows as queries (see the module docstring)."""
    ((ap, _),) = _directions(similarity, relevancy, num_threads, (False,))
    return _row_mean(ap, skip_empty, "AP")


def ndcg(similarity: Any, relevancy: Any, skip_empty: bool = False, num_threads: int | None = None) -> float:
    """Official EK100 MIR nDCG with the rows as queries (see the module docstring)."""
    ((_, nd),) = _directions(similarity, relevancy, num_threads, (False,))
    return _row_mean(nd, skip_empty, "nDCG")


def mir_metrics(similarity: Any, relevancy: Any, skip_empty: bool = False,
                num_threads: int | None = None) -> dict[str, float]:
    """EK100 MIR metrics as fractions: vis_map, txt_map, avg_map, vis_ndcg, txt_ndcg, avg_ndcg.

    ``similarity`` and ``relevancy`` are (clips x unique sentences); ``vis_*`` is video-to-text (rows as queries),
    ``txt_*`` text-to-video (columns as queries); ``avg_*`` the mean of the two.
    """
    scores = retrieval_scores(similarity, relevancy, num_threads)
    out = {
        "vis_map": _row_mean(scores["vis_ap"], skip_empty, "AP"),
        "txt_map": _row_mean(scores["txt_ap"], skip_empty, "AP"),
        "vis_ndcg": _row_mean(scores["vis_ndcg"], skip_empty, "nDCG"),
        "txt_ndcg": _row_mean(scores["txt_ndcg"], skip_empty, "nDCG"),
    }
    out["avg_map"] = (out["vis_map"] + out["txt_map"]) / 2
    out["avg_ndcg"] = (out["vis_ndcg"] + out["txt_ndcg"]) / 2
    return {k: out[k] for k in ("vis_map", "txt_map", "avg_map", "vis_ndcg", "txt_ndcg", "avg_ndcg")}
