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
Each query row is sorted once, as 32-bit integer keys: the top 31 bits of the order-preserving integer of the float32
similarity and a "non-zero relevancy" flag bit. The flagged positions of a sorted row are the ranks of the items that
matter; they are paired with those items by a small sort of the flagged items alone. An item whose 31-bit key is
shared by a neighbour (an exact tie, or floats one unit apart) gets its exact rank by direct comparison with its row;
a chunk with very many of them (e.g. constant scores) sorts 64-bit keys (value, item index, flag) instead, which is
exact by construction. The graded cumulative relevancy is a segmented cumsum over the flagged items only, and every
per-query sum is a ``bincount``. Rows are processed in chunks (bounded memory: a few hundred MB at 9,668 x 3,842);
with two or more threads the two directions run in parallel (NumPy releases the GIL while sorting). Similarities
that float32 cannot hold exactly (float64 data) use a stable ``argsort`` per chunk instead (same results, slower).
No Python loop over rows, no dense (N x M) index or divisor matrices.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["mir_metrics", "mean_average_precision", "ndcg", "retrieval_scores"]

_CHUNK_ELEMENTS = 1 << 21  # similarity entries per chunk (8 MiB of int32 keys)
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
    if not np.isfinite(sim).all():
        raise ValueError("similarity contains NaN or infinite values")
    if not np.isfinite(rel).all() or rel.min() < 0:
        raise ValueError("relevancy must be finite and non-negative")
    if sim.dtype != np.float32:
        as32 = sim.astype(np.float32)
        if np.array_equal(as32, sim):  # e.g. float32 scores stored as float64: take the fast path
            sim = as32
    return np.ascontiguousarray(sim), np.ascontiguousarray(rel)


@dataclass
class _Ranked:
    """Items of non-zero relevancy of one direction, grouped by query row and in rank order within a row."""

    rows: np.ndarray  # int64 (nnz,) query index
    ranks: np.ndarray  # int64 (nnz,) 0-based rank of the item in its row
    cols: np.ndarray  # int64 (nnz,) item index


def _descending_ints(sim: np.ndarray) -> np.ndarray:
    """int32 keys whose ascending order is the descending order of the float32 ``sim`` (-0.0 and 0.0 equal)."""
    bits = sim.view(np.int32)
    magnitude = bits & 0x7FFFFFFF
    sign = bits >> 31  # -1 for negative numbers (including -0.0), else 0
    magnitude ^= sign
    np.subtract(sign, magnitude, out=magnitude)  # = -(order-preserving integer of the float)
    return magnitude


def _rank_chunk_exact64(sim: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort packed 64-bit keys (value, item index, flag): exact order including ties, no fix-ups needed."""
    n, m = sim.shape
    keys = _descending_ints(sim).astype(np.int64)
    keys <<= 32
    keys |= np.arange(m, dtype=np.int64) << 1  # then the item index (stable tie order), then the flag bit
    keys |= mask
    keys.sort(axis=1)
    flags = np.empty((n, m), dtype=np.int8)
    np.bitwise_and(keys, 1, out=flags, casting="unsafe")
    flat = np.flatnonzero(flags.view(np.bool_))
    return flat, (keys.reshape(-1)[flat] & 0xFFFFFFFF) >> 1


def _rank_chunk_float32(sim: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions (row * m + rank), ascending, of the non-zero-relevancy items and their item indices.

    Rows are sorted as 32-bit keys: the top 31 bits of the order-preserving integer of the similarity, then a flag
    bit for the items of non-zero relevancy. The k-th flagged position of a row belongs to the k-th of the row's
    flagged items sorted by the same key (a small sort). Items whose 31-bit key is shared with another item (an exact
    tie or neighbouring floats) get their exact rank by direct comparison with the row; a chunk with very many of them
    uses the 64-bit path instead.
    """
    n, m = sim.shape
    col_bits = max(1, int(m - 1).bit_length())
    if (n << (32 + col_bits)) >= 2**62:
        return _rank_chunk_exact64(sim, mask)
    keys = _descending_ints(sim)
    keys &= -2
    keys |= mask
    items = np.flatnonzero(mask)
    item_keys = keys.reshape(-1)[items]
    keys.sort(axis=1)
    flags = np.empty((n, m), dtype=np.int8)
    np.bitwise_and(keys, 1, out=flags, casting="unsafe")
    flat = np.flatnonzero(flags.view(np.bool_))

    # Pair the flagged positions with the items: both are in (row, key) order.
    item_rows = items // m
    packed = item_rows << (32 + col_bits)
    packed |= (item_keys.astype(np.int64) + 2**31) << col_bits
    packed |= items - item_rows * m
    packed.sort()
    cols = packed & ((1 << col_bits) - 1)

    # Items sharing their 31-bit key with a neighbour in the sorted row need an exact rank.
    sorted_keys = keys.reshape(-1)
    own = sorted_keys[flat]
    position = flat % m
    before = sorted_keys.take(np.maximum(flat - 1, 0))
    after = sorted_keys.take(np.minimum(flat + 1, len(sorted_keys) - 1))
    shared = (((before ^ own) >> 1) == 0) & (position > 0)
    shared |= (((after ^ own) >> 1) == 0) & (position < m - 1)
    if not shared.any():
        return flat, cols
    fix = np.flatnonzero(shared)
    if len(fix) > _MAX_FIXUPS_PER_ROW * n:  # each fix-up scans a row: beyond this the 64-bit sort is cheaper
        return _rank_chunk_exact64(sim, mask)
    rows = flat // m
    ranks = flat - rows * m
    step = max(1, _CHUNK_ELEMENTS // m)
    for lo in range(0, len(fix), step):  # bounded-memory chunks of the affected items, not a loop over rows
        idx = fix[lo:lo + step]
        row_values = sim[rows[idx]]
        value = row_values[np.arange(len(idx)), cols[idx]][:, None]
        ahead = (row_values > value).sum(1)
        ahead += ((row_values == value) & (np.arange(m)[None, :] < cols[idx][:, None])).sum(1)
        ranks[idx] = ahead
    order = np.sort(((rows * m + ranks) << col_bits) | cols)
    return order >> col_bits, order & ((1 << col_bits) - 1)


def _rank_chunk_generic(sim: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-sim, axis=1, kind="stable")  # ties: lower item index first
    flat = np.flatnonzero(np.take_along_axis(mask, order, axis=1))
    return flat, order.reshape(-1)[flat]


def _transposed(x: np.ndarray) -> np.ndarray:
    """Contiguous transpose (torch's blocked copy is faster than NumPy's)."""
    if x.dtype == np.bool_:
        return torch.from_numpy(x.view(np.uint8)).t().contiguous().numpy().view(np.bool_)
    return torch.from_numpy(x).t().contiguous().numpy()


def _rank_direction(sim: np.ndarray, mask: np.ndarray, transpose: bool, pool: ThreadPoolExecutor | None) -> _Ranked:
    """Rank the non-zero-relevancy items of every query (rows of ``sim``, or its columns when ``transpose``)."""
    if transpose:
        sim, mask = _transposed(sim), _transposed(mask)
    n, m = sim.shape
    step = max(1, _CHUNK_ELEMENTS // m)
    rank_chunk = _rank_chunk_float32 if sim.dtype == np.float32 else _rank_chunk_generic

    def run(lo: int) -> tuple[np.ndarray, np.ndarray]:
        flat, cols = rank_chunk(sim[lo:lo + step], mask[lo:lo + step])
        return flat + lo * m, cols

    starts = range(0, n, step)
    parts = list(pool.map(run, starts)) if pool is not None else [run(lo) for lo in starts]
    flat = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False)
    rows = flat // m
    return _Ranked(rows, flat - rows * m, cols)


def _scores_from_ranked(ranked: _Ranked, values: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (AP, nDCG) from the ranked non-zero items; NaN for a query without positives."""
    rows, ranks = ranked.rows, ranked.ranks
    nnz = len(rows)
    counts = np.bincount(rows, minlength=n)
    starts = np.cumsum(counts) - counts
    row_starts = np.repeat(starts, counts)

    # Graded relevancy of the top (rank + 1) items = cumulative sum within the row (items are in rank order).
    cumulative = np.cumsum(values)
    cumulative -= np.concatenate(([0.0], cumulative))[row_starts]
    positive = values == 1
    pos_rows = rows[positive]
    precision = cumulative[positive] / (ranks[positive] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(pos_rows, weights=precision, minlength=n) / np.bincount(pos_rows, minlength=n)

    # nDCG: only the first k ranks count, k = number of non-zero items of the query.
    discount = 1.0 / np.log2(np.arange(m) + 2.0)
    gain = values * discount.take(ranks)
    gain[ranks >= counts.take(rows)] = 0.0
    dcg = np.bincount(rows, weights=gain, minlength=n)
    kmax = int(counts.max()) if nnz else 0
    ideal = np.zeros((n, kmax), dtype=np.float64)
    ideal.reshape(-1)[rows * kmax + (np.arange(nnz) - row_starts)] = -values
    ideal.sort(axis=1)  # negated: largest relevancy first, padding zeros last
    idcg = -(ideal @ discount[:kmax])
    with np.errstate(invalid="ignore", divide="ignore"):
        nd = dcg / idcg
    return ap, nd


def _threads(num_threads: int | None) -> int:
    return max(1, num_threads if num_threads is not None else min(torch.get_num_threads(), os.cpu_count() or 1))


def _direction(sim: np.ndarray, mask: np.ndarray, rel: np.ndarray, transpose: bool, threads: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (AP, nDCG) of one direction; row chunks are sorted on ``threads`` threads."""
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            ranked = _rank_direction(sim, mask, transpose, pool)
    else:
        ranked = _rank_direction(sim, mask, transpose, None)
    return _scores(ranked, rel, transpose)


def _scores(ranked: _Ranked, rel: np.ndarray, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n_cols = rel.shape
    flat_index = ranked.cols * n_cols + ranked.rows if transpose else ranked.rows * n_cols + ranked.cols
    values = np.take(rel.reshape(-1), flat_index).astype(np.float64, copy=False)
    return _scores_from_ranked(ranked, values, *((n_cols, n_rows) if transpose else (n_rows, n_cols)))


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

    ``num_threads`` (default: ``torch.get_num_threads()``): with 2 or more, the two directions run in parallel.
    """
    sim, rel = _check_inputs(similarity, relevancy)
    mask = rel != 0
    threads = _threads(num_threads)
    if threads > 1:  # one thread per direction (NumPy releases the GIL in sorts and large array operations)
        with ThreadPoolExecutor(2) as pool:
            txt_future = pool.submit(_direction, sim, mask, rel, True, max(1, threads // 2))
            vis_ap, vis_ndcg = _direction(sim, mask, rel, False, max(1, threads - threads // 2))
            txt_ap, txt_ndcg = txt_future.result()
    else:
        vis_ap, vis_ndcg = _direction(sim, mask, rel, False, 1)
        txt_ap, txt_ndcg = _direction(sim, mask, rel, True, 1)
    return {"vis_ap": vis_ap, "vis_ndcg": vis_ndcg, "txt_ap": txt_ap, "txt_ndcg": txt_ndcg}


def mean_average_precision(similarity: Any, relevancy: Any, skip_empty: bool = False,
                           num_threads: int | None = None) -> float:
    """Official EK100 MIR mAP with the rows as queries (see the module docstring)."""
    sim, rel = _check_inputs(similarity, relevancy)
    ap, _ = _direction(sim, rel != 0, rel, False, _threads(num_threads))
    return _row_mean(ap, skip_empty, "AP")


def ndcg(similarity: Any, relevancy: Any, skip_empty: bool = False, num_threads: int | None = None) -> float:
    """Official EK100 MIR nDCG with the rows as queries (see the module docstring)."""
    sim, rel = _check_inputs(similarity, relevancy)
    _, nd = _direction(sim, rel != 0, rel, False, _threads(num_threads))
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
