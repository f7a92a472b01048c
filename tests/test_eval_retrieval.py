"""EK100 MIR mAP / nDCG: hand-computed cases, ties, empty queries, and agreement with a per-row reference."""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from lavila.evaluation import retrieval, retrieval_kernel
from lavila.evaluation.retrieval import mean_average_precision, mir_metrics, ndcg, retrieval_scores

needs_kernel = pytest.mark.skipif(retrieval_kernel.load_kernel() is None,
                                  reason="no C compiler: compiled MIR kernel unavailable")


@pytest.fixture(autouse=True, params=[pytest.param("kernel", marks=needs_kernel), "numpy"])
def backend(request, monkeypatch):
    """Every test runs on the compiled kernel and on the NumPy path (what a machine without a C compiler uses)."""
    if request.param == "numpy":
        monkeypatch.setattr(retrieval_kernel, "load_kernel", lambda: None)
    return request.param


def reference_row(sim: np.ndarray, rel: np.ndarray) -> tuple[float, float]:
    """AP and nDCG of one query, straight from the definitions (stable descending order)."""
    order = np.argsort(-sim, kind="stable")
    ranked = rel[order]
    positives = np.nonzero(ranked == 1)[0]
    ap = float(np.mean([ranked[: p + 1].sum() / (p + 1) for p in positives])) if len(positives) else math.nan
    k = int((rel > 0).sum())
    dcg = sum(ranked[i] / math.log2(i + 2) for i in range(k))
    idcg = sum(v / math.log2(i + 2) for i, v in enumerate(sorted(rel, reverse=True)[:k]))
    return ap, (dcg / idcg if k else math.nan)


def _assert_matches_reference(sim: np.ndarray, rel: np.ndarray, num_threads: int) -> None:
    """Per-row AP / nDCG of both directions equal the straightforward per-row reference."""
    n, m = rel.shape
    scores = retrieval_scores(sim, rel, num_threads=num_threads)
    ref_v = np.array([reference_row(sim[i], rel[i]) for i in range(n)])
    ref_t = np.array([reference_row(sim[:, j], rel[:, j]) for j in range(m)])
    np.testing.assert_allclose(scores["vis_ap"], ref_v[:, 0], atol=1e-12)
    np.testing.assert_allclose(scores["vis_ndcg"], ref_v[:, 1], atol=1e-12)
    np.testing.assert_allclose(scores["txt_ap"], ref_t[:, 0], atol=1e-12)
    np.testing.assert_allclose(scores["txt_ndcg"], ref_t[:, 1], atol=1e-12)


def test_perfect_ranking_scores_one():
    rel = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.25], [0.5, 0.0, 1.0]])
    sim = rel + 0.01 * np.arange(3)[::-1]  # relevancy order, no ties between different relevancies
    out = mir_metrics(sim.astype(np.float32), rel)
    assert out == pytest.approx({k: 1.0 for k in out})


def test_graded_precision_differs_from_binary():
    # Ranked items: rel 0.5, 1, 0. The only positive is at rank 2: graded P(2) = (0.5 + 1) / 2 = 0.75
    # (binary precision would give 1/2). nDCG with k = 2 non-zero items:
    # DCG = 0.5/log2(2) + 1/log2(3) = 1.130930, IDCG = 1/log2(2) + 0.5/log2(3) = 1.315465 -> 0.859719.
    sim = np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    rel = np.array([[0.5, 1.0, 0.0]])
    assert mean_average_precision(sim, rel) == pytest.approx(0.75, abs=1e-12)
    assert ndcg(sim, rel) == pytest.approx((0.5 + 1 / math.log2(3)) / (1 + 0.5 / math.log2(3)), abs=1e-12)
    assert ndcg(sim, rel) == pytest.approx(0.859719, abs=1e-6)


def test_two_positives_hand_computed_in_both_directions():
    # Video -> text row 0: order items 2, 0, 1 with rel 0.5, 1, 1: P(2) = 1.5/2, P(3) = 2.5/3.
    sim = np.array([[0.6, 0.1, 0.9], [0.2, 0.8, 0.4]], dtype=np.float32)
    rel = np.array([[1.0, 1.0, 0.5], [0.0, 1.0, 0.0]])
    ap_row0 = (1.5 / 2 + 2.5 / 3) / 2
    scores = retrieval_scores(sim, rel)
    assert scores["vis_ap"] == pytest.approx([ap_row0, 1.0])
    # Text -> video: column 0 ranks clips 0 (rel 1), 1 (0) -> 1; column 1 ranks 1 (1), 0 (1) -> 1;
    # column 2 ranks 0 (0.5), 1 (0): no positive -> NaN (official behaviour).
    assert scores["txt_ap"][:2] == pytest.approx([1.0, 1.0])
    assert math.isnan(scores["txt_ap"][2])
    # nDCG column 2: k = 1, top item has rel 0.5 = ideal -> 1.
    assert scores["txt_ndcg"] == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_are_broken_by_lower_index_first(dtype):
    # float64 values that float32 cannot hold exactly take the argsort path; both must agree.
    base = 0.5 + (1e-12 if dtype == np.float64 else 0.0)
    sim = np.full((2, 3), base, dtype=dtype)
    rel = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    ap = retrieval_scores(sim, rel)["vis_ap"]
    assert ap == pytest.approx([0.5, 1.0])  # the positive behind one tied item: P(2) = 1/2


def test_negative_zero_ties_with_zero():
    sim = np.array([[0.0, -0.0, -1.0]], dtype=np.float32)
    rel = np.array([[0.0, 1.0, 0.0]])
    assert mean_average_precision(sim, rel) == pytest.approx(0.5)


def test_query_without_positive_is_nan_and_warns():
    sim = np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32)
    rel = np.array([[1.0, 0.0], [0.0, 0.0]])
    with pytest.warns(RuntimeWarning, match="1 of 2 queries have no positive"):
        assert math.isnan(mean_average_precision(sim, rel))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mean_average_precision(sim, rel, skip_empty=True) == pytest.approx(1.0)
        assert ndcg(sim, rel, skip_empty=True) == pytest.approx(1.0)


def test_bad_inputs_raise_clear_errors():
    sim = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="same shape"):
        mir_metrics(sim, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        mir_metrics(np.full((2, 3), np.nan), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        mir_metrics(sim, -np.ones((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        mir_metrics(np.zeros(3), np.zeros(3))


def test_torch_inputs_are_accepted():
    rel = np.eye(3)
    out = mir_metrics(torch.eye(3, dtype=torch.float16), torch.from_numpy(rel))
    assert out["avg_map"] == pytest.approx(1.0)


@pytest.mark.parametrize("dtype,levels", [(np.float32, None), (np.float32, 7), (np.float64, None), (np.float64, 5)])
def test_matches_per_row_reference_on_random_matrices(dtype, levels):
    rng = np.random.default_rng(1)
    n, m = 37, 53
    sim = rng.standard_normal((n, m))
    if levels:  # many ties
        sim = np.round(sim * levels) / levels
    sim = sim.astype(dtype)
    rel = np.where(rng.random((n, m)) < 0.3, rng.choice([0.25, 0.5, 1.0, 1 / 3], size=(n, m)), 0.0)
    rel[np.arange(n), rng.integers(0, m, n)] = 1.0
    rel[rng.integers(0, n, m), np.arange(m)] = 1.0
    _assert_matches_reference(sim, rel, num_threads=2)


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(2)
    sim = rng.standard_normal((300, 200)).astype(np.float32)
    rel = np.where(rng.random((300, 200)) < 0.1, 1.0, 0.0)
    rel[:, 0] = 1.0
    rel[0, :] = 1.0
    a = retrieval_scores(sim, rel, num_threads=1)
    b = retrieval_scores(sim, rel, num_threads=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture(scope="module")
def ek100_test_relevancy(ek100_annotations) -> np.ndarray:
    from lavila.data.relevancy import build_relevancy

    ret = ek100_annotations / "retrieval_annotations"
    return build_relevancy(pd.read_csv(ret / "EPIC_100_retrieval_test.csv"),
                           pd.read_csv(ret / "EPIC_100_retrieval_test_sentence.csv"))


def test_real_ek100_full_size(ek100_test_relevancy, monkeypatch, backend):
    """The full 9,668 x 3,842 problem on the rebuilt real relevancy: the path under test does it (the compiled kernel
    is not silently replaced by NumPy), in a bounded time, and a row/column subset matches the reference.

    The 2 s target is measured by benchmarks/bench_mir_metrics.py (0.77 s in RESULTS.md); the bound here is 5x the
    target (10x for the NumPy path, 1.7-2.2 s there), slack for a loaded shared 2-core machine, not a claim.
    """
    calls = []
    original = retrieval_kernel.direction_scores
    monkeypatch.setattr(retrieval_kernel, "direction_scores", lambda *a, **k: calls.append(1) or original(*a, **k))
    rel = ek100_test_relevancy
    rng = np.random.default_rng(0)
    sim = rng.random(rel.shape, dtype=np.float32)  # float32 in [0, 1): plenty of exact ties
    tic = time.perf_counter()
    scores = retrieval_scores(sim, rel)
    elapsed = time.perf_counter() - tic
    compiled = backend == "kernel"
    assert bool(calls) == compiled, f"the {backend} path was not the one taken"
    bound = 10.0 if compiled else 20.0
    assert elapsed < bound, f"full MIR metrics took {elapsed:.1f}s (target 2 s; benchmarks/bench_mir_metrics.py)"
    rows = rng.choice(rel.shape[0], 40, replace=False)
    cols = rng.choice(rel.shape[1], 40, replace=False)
    ref_v = np.array([reference_row(sim[i], rel[i]) for i in rows])
    ref_t = np.array([reference_row(sim[:, j], rel[:, j]) for j in cols])
    assert np.abs(scores["vis_ap"][rows] - ref_v[:, 0]).max() <= 1e-6
    assert np.abs(scores["vis_ndcg"][rows] - ref_v[:, 1]).max() <= 1e-6
    assert np.abs(scores["txt_ap"][cols] - ref_t[:, 0]).max() <= 1e-6
    assert np.abs(scores["txt_ndcg"][cols] - ref_t[:, 1]).max() <= 1e-6
    # Random scores on the real relevancy: ~0.057 mAP with graded precision (the reference notes' figure).
    assert np.nanmean(scores["vis_ap"]) == pytest.approx(0.0569, abs=0.002)
    assert not np.isnan(scores["vis_ap"]).any() and not np.isnan(scores["txt_ap"]).any()


def test_neighbouring_floats_keep_their_exact_order():
    hi = np.nextafter(np.float32(0.5), np.float32(1))
    sim = np.array([[0.5, hi, 0.1], [hi, 0.5, 0.1], [0.1, 0.5, hi]], dtype=np.float32)
    rel = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 1.0]])
    # the positive is behind its neighbouring float in rows 0 and 1: P(2) = 1/2; row 2: positive first
    assert retrieval_scores(sim, rel)["vis_ap"] == pytest.approx([0.5, 0.5, 1.0])


@pytest.mark.parametrize("budget", [0, 10**9])
def test_tie_fixups_and_exact_fallback_agree_with_reference(monkeypatch, budget):
    monkeypatch.setattr(retrieval, "_MAX_FIXUPS_PER_ROW", budget)
    rng = np.random.default_rng(5)
    n, m = 40, 60
    sim = (np.round(rng.standard_normal((n, m)) * 3) / 3).astype(np.float32)
    sim[:5] = 0.25  # rows that are all ties
    rel = np.where(rng.random((n, m)) < 0.4, rng.choice([0.5, 1.0], size=(n, m)), 0.0)
    rel[:, 0] = 1.0
    rel[0, :] = 1.0
    _assert_matches_reference(sim, rel, num_threads=1)


def test_many_distinct_relevancy_levels_match_reference():
    """Continuous graded relevancies (one level per item: the wide-code fallbacks) with ties and neighbouring floats."""
    rng = np.random.default_rng(7)
    n, m = 30, 45
    sim = (np.round(rng.standard_normal((n, m)) * 4) / 4).astype(np.float32)
    sim[3, :10] = np.nextafter(np.float32(0.5), np.float32(1))
    rel = np.where(rng.random((n, m)) < 0.5, rng.random((n, m)), 0.0)
    rel[np.arange(n), rng.integers(0, m, n)] = 1.0
    rel[rng.integers(0, n, m), np.arange(m)] = 1.0
    _assert_matches_reference(sim, rel, num_threads=1)


def test_rare_relevancy_level_is_coded_exactly():
    """A level that only a handful of items take (missed by the level sampling) still scores exactly."""
    rng = np.random.default_rng(8)
    n, m = 400, 300
    sim = rng.standard_normal((n, m)).astype(np.float32)
    rel = np.where(rng.random((n, m)) < 0.6, 0.5, 0.0)
    rel[np.arange(n), rng.integers(0, m, n)] = 1.0
    rel[rng.integers(0, n, m), np.arange(m)] = 1.0
    rel[5, 7] = rel[300, 11] = 0.123  # rare levels
    scores = retrieval_scores(sim, rel, num_threads=2)
    for i in (5, 300, 17):
        ap, nd = reference_row(sim[i], rel[i])
        assert scores["vis_ap"][i] == pytest.approx(ap, abs=1e-12)
        assert scores["vis_ndcg"][i] == pytest.approx(nd, abs=1e-12)
    for j in (7, 11, 40):
        ap, nd = reference_row(sim[:, j], rel[:, j])
        assert scores["txt_ap"][j] == pytest.approx(ap, abs=1e-12)
        assert scores["txt_ndcg"][j] == pytest.approx(nd, abs=1e-12)


def test_level_codes_add_levels_the_sample_missed():
    values = np.array([0.5] * 100_000 + [0.25] + [1.0] * 100_000 + [0.75])  # sampled every 3rd: 0.25, 0.75 missed
    levels, codes = retrieval._level_codes(values)
    np.testing.assert_array_equal(levels, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(levels[codes - 1], values)


def _random_problem(rng: np.random.Generator, n: int, m: int, density: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rel = np.where(rng.random((n, m)) < density, rng.choice([0.25, 0.5, 1.0, 1 / 3], size=(n, m)), 0.0)
    rel[np.arange(n), rng.integers(0, m, n)] = 1.0
    rel[rng.integers(0, n, m), np.arange(m)] = 1.0
    return rng.standard_normal((n, m)), rel


@pytest.mark.parametrize("case", ["float64 extremes", "subnormal range", "constant rows", "signed zeros",
                                  "empty queries"])
def test_awkward_similarities_match_reference(case):
    """Ranges that defeat equal-width bucketing (huge, subnormal, none), -0.0 / 0.0 ties, queries without items."""
    rng = np.random.default_rng(11)
    sim, rel = _random_problem(rng, 23, 31)
    if case == "float64 extremes":  # max - min overflows float64
        sim[:, ::3] = 1e308
        sim[:, 1::3] = -1e308
        sim[::4] = np.round(sim[::4])
    elif case == "subnormal range":  # (max - min) / buckets underflows
        sim = np.where(sim > 0, 5e-324, 0.0)
        sim[:, ::5] = 1e-323
    elif case == "constant rows":
        sim = np.round(sim).astype(np.float32)
        sim[:7] = 0.25
        sim[:, :4] = -3.0
    elif case == "signed zeros":
        sim = np.where(rng.random(sim.shape) < 0.5, -0.0, 0.0).astype(np.float32)
        sim[:, ::6] = np.float32(1e-30)
    else:  # a row and a column with no non-zero relevancy: NaN, as the reference
        rel[4] = 0.0
        rel[:, 9] = 0.0
        sim = sim.astype(np.float32)
    _assert_matches_reference(sim, rel, num_threads=2)


def test_more_distinct_levels_than_the_code_tables_hold():
    """> 255 distinct relevancies among the rows of one thread (the kernel's one-byte codes overflow: the columns
    then read those rows' float64 relevancy) and > 128 in a query (its ideal DCG sorts the values)."""
    rng = np.random.default_rng(12)
    n, m = 60, 300
    sim = np.round(rng.standard_normal((n, m)), 1).astype(np.float32)  # ties too
    rel = np.where(rng.random((n, m)) < 0.6, rng.random((n, m)), 0.0)
    rel[np.arange(n), rng.integers(0, m, n)] = 1.0
    rel[rng.integers(0, n, m), np.arange(m)] = 1.0
    rel[5:] = np.round(rel[5:] * 8) / 8  # rows 0-4 hold ~900 distinct levels (~180 each), the rest 9
    _assert_matches_reference(sim, rel, num_threads=1)


@needs_kernel
def test_kernel_and_numpy_paths_agree(monkeypatch, backend):
    if backend != "kernel":
        pytest.skip("compares the two paths once")
    rng = np.random.default_rng(13)
    sim, rel = _random_problem(rng, 150, 170, density=0.15)
    sim = (np.round(sim * 6) / 6).astype(np.float32)  # many ties
    sim[3, 7], sim[3, 8] = -0.0, 0.0
    rel[10] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kernel = retrieval_scores(sim, rel, num_threads=2)
        monkeypatch.setattr(retrieval_kernel, "load_kernel", lambda: None)
        numpy_path = retrieval_scores(sim, rel, num_threads=2)
    for key in kernel:
        np.testing.assert_allclose(kernel[key], numpy_path[key], rtol=0, atol=1e-13, equal_nan=True)


def test_falls_back_to_numpy_without_compiler(monkeypatch, tmp_path, backend):
    """No compiler: load_kernel() is None (with the reason), and the metrics come from the NumPy path."""
    if backend != "numpy":
        pytest.skip("runs once")
    monkeypatch.undo()  # the real load_kernel, with a compiler that does not exist
    saved = dict(retrieval_kernel._kernel.state)
    try:
        retrieval_kernel._kernel.state.clear()
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        monkeypatch.setenv("LAVILA_KERNEL_CACHE", str(tmp_path / "cache"))
        assert retrieval_kernel.load_kernel() is None
        assert "no-such-compiler" in retrieval_kernel.kernel_error()
        assert mir_metrics(np.eye(3, dtype=np.float32), np.eye(3))["avg_map"] == pytest.approx(1.0)
    finally:
        retrieval_kernel._kernel.state.clear()
        retrieval_kernel._kernel.state.update(saved)


@needs_kernel
def test_loading_the_kernel_keeps_denormals(tmp_path, backend):
    """Loading the compiled MIR kernel must not switch the process to flush-to-zero (what -ffast-math builds do)."""
    import os
    import subprocess
    import sys

    if backend != "kernel":
        pytest.skip("runs once")
    code = ("import numpy as np\n"
            "from lavila.evaluation import retrieval_kernel\n"
            "assert retrieval_kernel.load_kernel() is not None, retrieval_kernel.kernel_error()\n"
            "assert np.float32(1e-40) * np.float32(1.0) != 0, 'denormal flushed'\n")
    env = {**os.environ, "LAVILA_KERNEL_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
