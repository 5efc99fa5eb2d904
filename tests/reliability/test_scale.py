"""Cosine similarity does not depend on the features' scale (issue 24: float32 features of 1e20 overflowed the
norm, every score tied and Rank-1 came out as the gallery order's).

Scaling a row by a power of two is exact in binary floating point, so those scales must give bit-identical
metrics; any other finite scale (1e20, 1e-20, ...) gives the same cosine scores up to float rounding, hence the
same metrics whenever no two scores of a query are within rounding of each other.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cmemd.errors import EvaluationError
from cmemd.evaluation import evaluate, re_ranking_features
from cmemd.evaluation.metrics import top_k
from cmemd.evaluation.modality import modality_gap
from cmemd.numerics import l2_normalize, l2_normalize_np

POW2 = {np.float32: (-66, 66, -100, 100, 120), np.float64: (-66, 66, -700, 700, 1000)}
DECIMAL = {np.float32: (1e20, 1e-20, 1e30, 1e-30), np.float64: (1e20, 1e-20, 1e200, 1e-200)}


def _problem(seed: int, nq: int, ng: int, d: int, dtype):
    rng = np.random.default_rng(seed)
    gp = rng.integers(0, 4, ng)
    return (rng.normal(size=(nq, d)).astype(dtype), rng.choice(gp, nq), rng.integers(1, 3, nq),  # every query has a match
            rng.normal(size=(ng, d)).astype(dtype), gp, rng.integers(3, 5, ng))


def _assert_same(a, b):
    np.testing.assert_array_equal(a.cmc, b.cmc)
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.inp, b.inp)
    assert (a.mAP, a.mINP, a.num_valid) == (b.mAP, b.mINP, b.num_valid)


problems = st.tuples(st.integers(0, 2**31), st.integers(1, 8), st.integers(2, 12), st.integers(3, 6),
                     st.sampled_from([np.float32, np.float64]))


@settings(max_examples=60, deadline=None)
@given(problems, st.data())
def test_power_of_two_row_scales_give_identical_metrics(problem, data):
    seed, nq, ng, d, dtype = problem
    qf, qp, qc, gf, gp, gc = _problem(seed, nq, ng, d, dtype)
    # every row its own scale, up to the edge of the dtype's range
    exps = st.sampled_from((0,) + POW2[dtype])
    qs = np.array([data.draw(exps) for _ in range(nq)], np.float64)
    gs = np.array([data.draw(exps) for _ in range(ng)], np.float64)
    qf2 = (qf * np.exp2(qs)[:, None].astype(dtype))
    gf2 = (gf * np.exp2(gs)[:, None].astype(dtype))
    assert np.isfinite(qf2).all() and np.isfinite(gf2).all()
    base = evaluate(qf, qp, qc, gf, gp, gc, max_rank=ng)
    _assert_same(evaluate(qf2, qp, qc, gf2, gp, gc, max_rank=ng), base)
    i1, s1 = top_k(qf, gf, ng)
    i2, s2 = top_k(qf2, gf2, ng)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(re_ranking_features(qf, gf, k1=3, k2=2), re_ranking_features(qf2, gf2, k1=3, k2=2))


@settings(max_examples=60, deadline=None)
@given(problems, st.data())
def test_decimal_scales_give_the_same_scores_and_metrics(problem, data):
    seed, nq, ng, d, dtype = problem
    qf, qp, qc, gf, gp, gc = _problem(seed, nq, ng, d, dtype)
    scale = data.draw(st.sampled_from(DECIMAL[dtype]))
    qf2, gf2 = (qf * dtype(scale)), (gf * dtype(scale))
    assert np.isfinite(qf2).all() and np.isfinite(gf2).all() and (qf2 != 0).any(1).all()
    # the reference: cosine in float64 of the unscaled features
    q64 = qf.astype(np.float64) / np.linalg.norm(qf.astype(np.float64), axis=1, keepdims=True)
    g64 = gf.astype(np.float64) / np.linalg.norm(gf.astype(np.float64), axis=1, keepdims=True)
    sim = q64 @ g64.T
    idx, scores = top_k(qf2, gf2, ng)
    np.testing.assert_allclose(scores, np.take_along_axis(sim, idx, 1), atol=1e-5)
    gaps = np.diff(np.sort(sim, axis=1), axis=1)
    assume(gaps.size == 0 or gaps.min() > 1e-4)  # no near-tie that rounding may legitimately flip
    _assert_same(evaluate(qf2, qp, qc, gf2, gp, gc, max_rank=ng), evaluate(qf, qp, qc, gf, gp, gc, max_rank=ng))


@pytest.mark.parametrize("scale", [1e20, 1e-20, 1.0])
def test_closed_example_at_huge_and_tiny_scale(scale):
    # query 0 = (1, 0) matches gallery 1 = (1, 0) exactly and is orthogonal to gallery 0 (another id);
    # query 1 = (3, 4) scores 0.8 with its own id (gallery 0 = (0, 1)) and 0.6 with gallery 1.
    # Correct: both queries hit at rank 1, AP 1 each. With overflowing norms every score is 0, the tie keeps
    # gallery order and query 0 ranks its match second (Rank-1 0.5, mAP 0.75).
    q = np.array([[1, 0], [3, 4]], np.float32) * np.float32(scale)
    g = np.array([[0, 1], [1, 0]], np.float32) * np.float32(scale)
    r = evaluate(q, [0, 1], [1, 1], g, [1, 0], [2, 2], max_rank=2)
    assert r.cmc.tolist() == [1.0, 1.0] and r.mAP == 1.0
    idx, scores = top_k(q, g, 2)
    assert idx.tolist() == [[1, 0], [0, 1]]
    np.testing.assert_allclose(scores, [[1.0, 0.0], [0.8, 0.6]], atol=1e-6)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 6), st.integers(1, 40), st.sampled_from([np.float32, np.float64]))
def test_l2_normalize_matches_float64_reference_at_any_scale(seed, n, d, dtype):
    rng = np.random.default_rng(seed)
    lo, hi = (-35, 35) if dtype == np.float32 else (-300, 300)
    x = rng.normal(size=(n, d)) * 10.0 ** rng.integers(lo, hi, size=(n, 1))
    x[rng.random(n) < 0.2] = 0.0  # all-zero rows stay zero
    x = x.astype(dtype)
    mx = np.abs(x.astype(np.float64)).max(1, keepdims=True)
    xs = x.astype(np.float64) / np.where(mx > 0, mx, 1.0)  # entries in [-1, 1]: the float64 norm is exact enough
    ref = xs / np.where(mx > 0, np.linalg.norm(xs, axis=1, keepdims=True), 1.0)
    got = l2_normalize_np(x, axis=1)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, atol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(l2_normalize(torch.from_numpy(x), dim=1).numpy(), got)


def test_modality_gap_is_the_same_at_the_ends_of_float64():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(size=(24, 6)), rng.normal(size=(24, 6)) + 2.0])
    pids = np.tile(np.repeat(np.arange(6), 4), 2)
    mods = np.repeat([0, 1], 24)
    cams = 1 + 2 * mods + np.arange(48) % 2  # two cameras per modality: Rank-1 within a modality is defined
    base = modality_gap(f, pids, mods, cams)
    assert not np.isnan(base.r1_v2v)
    for k in (-700, 700):  # squares under/overflow float64: the old norm gave 0 or inf
        other = modality_gap(f * 2.0**k, pids, mods, cams)
        for key in ("centre_ratio", "probe_accuracy", "r1_v2v", "r1_t2t", "r1_t2v", "mixing"):
            assert getattr(other, key) == getattr(base, key), key


@pytest.mark.parametrize("scale", [1e20, 1e-21])
def test_euclidean_metric_refuses_features_whose_distances_overflow(scale):
    f = np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.float64) * scale
    with pytest.raises(EvaluationError, match=r"query_feats: entries up to .* squared Euclidean .*same factor"):
        evaluate(f.astype(np.float32), [0, 1], [1, 1], f.astype(np.float32), [0, 1], [2, 2], metric="euclidean")
    # float64 holds their squares: no error, and each query finds its own row first
    assert evaluate(f, [0, 1], [1, 1], f, [0, 1], [2, 2], metric="euclidean").cmc[0] == 1.0
