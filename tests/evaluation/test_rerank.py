"""k-reciprocal re-ranking against the brute-force reference (tests/evaluation/rerank_reference.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmemd.errors import EvaluationError
from cmemd.evaluation import ReRanking, evaluate_similarity, re_ranking, re_ranking_features
from cmemd.evaluation.rerank import as_reranking

from .eval_reference import reference_from_similarity
from .rerank_reference import euclidean, normalised_distance, re_ranking_brute, reciprocal

# float32 arithmetic on both sides of the comparison (exp and sums differ in the last bits)
ATOL = 2e-6


def split(d: np.ndarray, Q: int):
    return d[:Q, Q:], d[:Q, :Q], d[Q:, Q:]


def features(rng, n, dim=3, ties=False):
    f = rng.normal(size=(n, dim))
    if ties:
        f = np.round(f)  # integer coordinates: many exactly equal distances, and duplicated points
    return f


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    Q=st.integers(1, 6),
    G=st.integers(1, 12),
    k1=st.integers(1, 25),
    k2=st.integers(1, 8),
    lam=st.floats(0.0, 1.0),
    ties=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_matches_brute_force(seed, Q, G, k1, k2, lam, ties, dtype):
    """Random small cases, k1 and k2 often larger than the whole set, exact ties when ``ties``."""
    rng = np.random.default_rng(seed)
    d = euclidean(*(2 * [features(rng, Q + G, ties=ties)])).astype(dtype)
    if float(d.max()) == 0:
        return  # every point identical: rejected (see test_all_zero_column_is_an_error)
    qg, qq, gg = split(d, Q)
    expected = re_ranking_brute(qg, qq, gg, k1, k2, lam)
    got = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (Q, G) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_ties_are_broken_by_index_like_a_stable_sort():
    """Equidistant neighbours: the lower index ranks first. Gallery 0 and 1 are both at distance 1 from the
    query, k1 = 1 keeps one of them in N(q, 2): the reciprocal set must take index 0, never 1."""
    # points on a line: q at 0, g0 at -1, g1 at +1, g2 far away
    x = np.array([[0.0], [-1.0], [1.0], [5.0]])
    d = euclidean(x, x)
    qg, qq, gg = split(d, 1)
    dn = normalised_distance(qg, qq, gg)
    assert dn[0, 1] == dn[0, 2]  # an exact tie in the query's row
    got = re_ranking(qg, qq, gg, k1=1, k2=1, lambda_value=0.0)
    np.testing.assert_allclose(got, re_ranking_brute(qg, qq, gg, 1, 1, 0.0), atol=ATOL)
    assert reciprocal(dn, 0, 2) == [0, 1]  # the query itself, then g0 (index 1), not g1
    assert got[0, 0] < got[0, 1]  # so g0 shares the query's k-reciprocal set and g1 does not


def test_duplicates_and_an_empty_reciprocal_set():
    """Three identical points at distance 0 from each other with k1 = 1: the last one is in nobody's
    top-2 list (ties by index), so its V row is empty and its Jaccard distance to everything is 1."""
    x = np.array([[0.0], [0.0], [0.0], [3.0], [4.0]])
    d = euclidean(x, x)
    for Q in (1, 3):
        qg, qq, gg = split(d, Q)
        got = re_ranking(qg, qq, gg, k1=1, k2=1, lambda_value=0.0)
        np.testing.assert_allclose(got, re_ranking_brute(qg, qq, gg, 1, 1, 0.0), atol=ATOL)
    dn = normalised_distance(*split(d, 3))
    assert reciprocal(dn, 2, 2) == []
    qg, qq, gg = split(d, 3)
    assert np.all(re_ranking(qg, qq, gg, k1=1, k2=1, lambda_value=0.0)[2] == 1.0)


def test_k1_and_k2_larger_than_everything():
    rng = np.random.default_rng(3)
    d = euclidean(*(2 * [features(rng, 7)]))
    qg, qq, gg = split(d, 2)
    for k1, k2 in ((50, 6), (6, 50), (100, 100)):
        got = re_ranking(qg, qq, gg, k1=k1, k2=k2)
        np.testing.assert_allclose(got, re_ranking_brute(qg, qq, gg, k1, k2, 0.3), atol=ATOL)


def test_default_parameters_on_a_clustered_set():
    """The paper's k1 = 20, k2 = 6 on 40 items with identity structure (the sets actually expand)."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(5, 8))
    f = centres[np.arange(40) % 5] + 0.6 * rng.normal(size=(40, 8))
    d = euclidean(f, f).astype(np.float32)
    qg, qq, gg = split(d, 12)
    got = re_ranking(qg, qq, gg)
    np.testing.assert_allclose(got, re_ranking_brute(qg, qq, gg), atol=ATOL)


def test_non_symmetric_query_query_matrix_is_read_by_columns():
    """The reference normalises columns and transposes: row i ranks by d(j, i). A non-symmetric q_q (or g_g)
    must be read that way, not by rows."""
    rng = np.random.default_rng(11)
    Q, G = 4, 7
    qg = rng.uniform(0.1, 2.0, size=(Q, G))
    qq = rng.uniform(0.1, 2.0, size=(Q, Q))
    gg = rng.uniform(0.1, 2.0, size=(G, G))
    np.fill_diagonal(qq, 0.0)
    np.fill_diagonal(gg, 0.0)
    for k1, k2 in ((3, 2), (5, 1)):
        got = re_ranking(qg, qq, gg, k1=k1, k2=k2)
        np.testing.assert_allclose(got, re_ranking_brute(qg, qq, gg, k1, k2, 0.3), atol=ATOL)
        swapped = re_ranking(qg, qq.T, gg.T, k1=k1, k2=k2)
        np.testing.assert_allclose(swapped, re_ranking_brute(qg, qq.T, gg.T, k1, k2, 0.3), atol=ATOL)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), Q=st.integers(1, 8), G=st.integers(2, 15))
def test_symmetric_inputs_gallery_permutation_equivariance(seed, Q, G):
    """Symmetric (feature-derived, tie-free) inputs: permuting the gallery permutes the result's columns."""
    rng = np.random.default_rng(seed)
    d = euclidean(*(2 * [rng.normal(size=(Q + G, 4))])).astype(np.float32)
    qg, qq, gg = split(d, Q)
    perm = rng.permutation(G)
    a = re_ranking(qg, qq, gg, k1=4, k2=3)
    b = re_ranking(qg[:, perm], qq, gg[np.ix_(perm, perm)], k1=4, k2=3)
    np.testing.assert_allclose(b, a[:, perm], atol=ATOL)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(5)
    d = euclidean(*(2 * [features(rng, 30, dim=5)])).astype(np.float32)
    qg, qq, gg = split(d, 10)
    a = re_ranking(qg, qq, gg, k1=6, k2=3)
    b = re_ranking(torch.from_numpy(qg), torch.from_numpy(qq), torch.from_numpy(gg), k1=6, k2=3)
    assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor) and b.dtype == torch.float32
    assert np.array_equal(a, b.numpy())
    c = re_ranking(torch.from_numpy(qg), qq, gg, k1=6, k2=3)  # mixed inputs: the q_g type decides the output
    assert isinstance(c, torch.Tensor) and np.array_equal(a, c.numpy())


@pytest.mark.parametrize("ties", [False, True])
def test_chunked_equals_unchunked(ties):
    """Results do not depend on the block size (including one row at a time and a tiny memory budget)."""
    rng = np.random.default_rng(2)
    d = euclidean(*(2 * [features(rng, 45, dim=3, ties=ties)])).astype(np.float32)
    qg, qq, gg = split(d, 15)
    full = re_ranking(qg, qq, gg, k1=8, k2=4, chunk_size=10_000)
    for kw in (dict(chunk_size=1), dict(chunk_size=7), dict(memory_budget=4096), dict()):
        assert np.array_equal(re_ranking(qg, qq, gg, k1=8, k2=4, **kw), full), kw


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_tiles_and_pair_blocks_match_brute_force(monkeypatch, ties, dtype):
    """The transposing copies in 3 x 3 tiles (edge tiles included), the Jaccard sums in blocks of a few
    (query entry, gallery entry) pairs (often one query row, whose pairs exceed the block), one row buffer reused
    by every block of rows (the last one shorter): the same numbers as the default blocks, and the brute force."""
    from cmemd.evaluation import rerank

    rng = np.random.default_rng(7)
    d = euclidean(*(2 * [features(rng, 31, dim=3, ties=ties)])).astype(dtype)
    qg, qq, gg = split(d, 13)
    qq = qq + np.triu(np.full_like(qq, 0.25), 1)  # non-symmetric: the tiles must read columns, not rows
    default = re_ranking(qg, qq, gg, k1=6, k2=3, lambda_value=0.4)
    monkeypatch.setattr(rerank, "_TILE", 3)
    monkeypatch.setattr(rerank, "_PAIR_BLOCK", 5)
    for kw in (dict(chunk_size=4), dict(chunk_size=1), dict()):
        got = re_ranking(qg, qq, gg, k1=6, k2=3, lambda_value=0.4, **kw)
        assert np.array_equal(got, default), kw
    np.testing.assert_allclose(default, re_ranking_brute(qg, qq, gg, 6, 3, 0.4), rtol=0, atol=ATOL)


def test_query_without_a_true_match_is_excluded_after_re_ranking():
    """Re-ranking needs no labels; the metrics on re-ranked distances exclude a query whose id is not in the
    gallery and agree with the per-query reference on the others."""
    rng = np.random.default_rng(9)
    centres = rng.normal(size=(4, 6))
    qp = np.array([0, 1, 2, 3, 0, 1])
    gp = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2])  # id 3 has no gallery image
    qf = centres[qp] + 0.5 * rng.normal(size=(6, 6))
    gf = centres[gp] + 0.5 * rng.normal(size=(9, 6))
    f = np.concatenate([qf, gf])
    d = euclidean(f, f).astype(np.float32)
    qg, qq, gg = split(d, 6)
    dist = re_ranking(qg, qq, gg, k1=4, k2=2)
    np.testing.assert_allclose(dist, re_ranking_brute(qg, qq, gg, 4, 2, 0.3), atol=ATOL)
    qc, gc = np.zeros(6, int), np.ones(9, int)
    r = evaluate_similarity(-dist, qp, qc, gp, gc)
    ref = reference_from_similarity(-dist, qp, qc, gp, gc, "none", "standard")
    assert r.num_excluded == 1 and not r.valid_mask[3]
    assert r.mAP == pytest.approx(ref["mAP"]) and np.allclose(r.cmc, ref["cmc"])


def test_float64_inputs_are_squared_before_the_float32_cast():
    """The reference squares in the input's precision and then casts; a value whose float32 square differs
    from the float32 of its float64 square shows the order."""
    rng = np.random.default_rng(4)
    d = euclidean(*(2 * [features(rng, 12)]))  # float64
    qg, qq, gg = split(d, 4)
    got = re_ranking(qg, qq, gg, k1=3, k2=2)
    np.testing.assert_allclose(got, re_ranking_brute(qg, qq, gg, 3, 2, 0.3), atol=ATOL)


def test_lambda_one_is_the_normalised_original_distance():
    """lambda = 1 keeps only the original term: d(q, g)^2 / max over the query's column."""
    rng = np.random.default_rng(6)
    d = euclidean(*(2 * [features(rng, 10)])).astype(np.float32)
    qg, qq, gg = split(d, 3)
    got = re_ranking(qg, qq, gg, lambda_value=1.0)
    col_max = np.maximum((qq.astype(np.float32) ** 2).max(0), (qg.astype(np.float32) ** 2).max(1))
    np.testing.assert_allclose(got, qg.astype(np.float32) ** 2 / col_max[:, None], rtol=1e-6)


def test_bad_inputs_name_the_argument():
    d = euclidean(*(2 * [np.random.default_rng(0).normal(size=(6, 2))]))
    qg, qq, gg = split(d, 2)
    with pytest.raises(EvaluationError, match="q_q_dist: shape"):
        re_ranking(qg, qq[:, :1], gg)
    with pytest.raises(EvaluationError, match="g_g_dist: shape"):
        re_ranking(qg, qq, gg[:3, :3])
    with pytest.raises(EvaluationError, match="q_g_dist: expected a non-empty 2-D"):
        re_ranking(qg[0], qq, gg)
    bad = qg.copy()
    bad[0, 0] = np.nan
    with pytest.raises(EvaluationError, match="q_g_dist: contains NaN"):
        re_ranking(bad, qq, gg)
    with pytest.raises(EvaluationError, match="not similarities"):
        re_ranking(qg - 1.0, qq, gg)
    with pytest.raises(EvaluationError, match="k1=0"):
        re_ranking(qg, qq, gg, k1=0)
    with pytest.raises(EvaluationError, match="k2=2.5"):
        re_ranking(qg, qq, gg, k2=2.5)
    with pytest.raises(EvaluationError, match="lambda_value=1.5"):
        re_ranking(qg, qq, gg, lambda_value=1.5)
    with pytest.raises(EvaluationError, match="chunk_size=0"):
        re_ranking(qg, qq, gg, chunk_size=0)


def test_all_zero_column_is_an_error():
    z = np.zeros((2, 2))
    with pytest.raises(EvaluationError, match="all zero"):
        re_ranking(np.zeros((2, 3)), z, np.zeros((3, 3)))


def test_parameters_object():
    assert as_reranking(None) is None and as_reranking(False) is None
    assert as_reranking(True) == ReRanking(20, 6, 0.3)
    assert as_reranking({"k1": 10, "k2": 3, "lambda": 0.5}) == ReRanking(10, 3, 0.5)
    assert ReRanking().label() == "re-ranked (k-reciprocal, k1=20, k2=6, λ=0.3)"
    assert ReRanking(5, 1, 0.1).to_dict() == {"method": "k-reciprocal", "k1": 5, "k2": 1, "lambda": 0.1}
    with pytest.raises(EvaluationError, match="unknown key"):
        as_reranking({"k3": 1})
    with pytest.raises(EvaluationError, match="k1="):
        ReRanking(k1=-1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_from_features_equals_the_distance_matrix_route(metric):
    """re_ranking_features (rows computed on the fly, nothing (Q+G)^2) = re_ranking of the Euclidean distances of
    the ranked features (normalised for cosine) = the brute-force reference, up to float rounding of the distances."""
    rng = np.random.default_rng(12)
    centres = rng.normal(size=(6, 8))
    f = (centres[np.arange(48) % 6] + 0.7 * rng.normal(size=(48, 8))).astype(np.float32)
    Q = 14
    x = f / np.linalg.norm(f, axis=1, keepdims=True) if metric == "cosine" else f
    d = euclidean(x, x)
    expected = re_ranking_brute(*split(d, Q), 7, 3, 0.3)
    got = re_ranking_features(f[:Q], f[Q:], k1=7, k2=3, metric=metric)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got, re_ranking(*split(d, Q), k1=7, k2=3), atol=1e-5)
    small = re_ranking_features(torch.from_numpy(f[:Q]), f[Q:], k1=7, k2=3, metric=metric, chunk_size=5)
    assert isinstance(small, torch.Tensor)
    np.testing.assert_allclose(small.numpy(), got, atol=1e-6)
    with pytest.raises(EvaluationError, match="dimension"):
        re_ranking_features(f[:Q, :4], f[Q:])
