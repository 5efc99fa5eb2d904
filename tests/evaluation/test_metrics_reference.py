"""Vectorised metrics == the plain per-query reference (tests/evaluation/eval_reference.py)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmemd.errors import EvaluationError
from cmemd.benchmarks.sysu import SAME_LOCATION
from cmemd.evaluation import SameLocation, evaluate, evaluate_similarity
from tests.evaluation.eval_reference import reference, reference_from_similarity

# SYSU-MM01's one-pair rule and a made-up rule of several pairs (one query camera in two of them): each pair is
# filled by index on its own grid, the reference masks query by query.
SEVERAL = SameLocation("several-rooms", ((3, 2), (6, 1), (3, 5)))
REMOVALS = ["none", SAME_LOCATION, SEVERAL, "same-pid-same-cam"]
CMCS = ["standard", "identity-dedup"]

# Vectors whose L2-normalisation and dot products are exact in any float format and summation
# order (entries 0, ±1/2, ±1; products multiples of 1/4), so that cosine ties are real ties in
# both implementations and the stable tie rule is what gets tested.
_SIGNS = [-1.0, 1.0]
EXACT_VECTORS = [np.eye(4)[i] * s for i in range(4) for s in _SIGNS] + [
    np.array(v) for v in itertools.product(_SIGNS, repeat=4)
]


@st.composite
def problems(draw):
    metric = draw(st.sampled_from(["cosine", "euclidean"]))
    nq = draw(st.integers(1, 9))
    ng = draw(st.integers(1, 24))
    n_ids = draw(st.integers(1, 5))
    if metric == "cosine":
        pick = st.integers(0, len(EXACT_VECTORS) - 1)
        scale = st.sampled_from([1.0, 2.0, 4.0])
        qf = np.stack([EXACT_VECTORS[draw(pick)] * draw(scale) for _ in range(nq)])
        gf = np.stack([EXACT_VECTORS[draw(pick)] * draw(scale) for _ in range(ng)])
    else:
        d = draw(st.integers(1, 3))
        ints = st.integers(-2, 2)
        qf = np.array([[draw(ints) for _ in range(d)] for _ in range(nq)], dtype=np.float64)
        gf = np.array([[draw(ints) for _ in range(d)] for _ in range(ng)], dtype=np.float64)
    ids = st.integers(0, n_ids - 1)
    cams = st.integers(1, 6)
    qp = np.array([draw(ids) for _ in range(nq)])
    gp = np.array([draw(ids) for _ in range(ng)])
    qc = np.array([draw(cams) for _ in range(nq)])
    gc = np.array([draw(cams) for _ in range(ng)])
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return metric, qf.astype(dtype), qp, qc, gf.astype(dtype), gp, gc


def _assert_same(res, ref):
    np.testing.assert_array_equal(res.valid_mask, ref["valid_mask"])
    np.testing.assert_array_equal(res.first_hit, ref["first_hit"])
    np.testing.assert_allclose(res.cmc, ref["cmc"], atol=1e-6)
    np.testing.assert_allclose(res.ap, ref["ap"], atol=1e-6)
    np.testing.assert_allclose(res.inp, ref["inp"], atol=1e-6)
    assert res.mAP == pytest.approx(ref["mAP"], abs=1e-6)
    assert res.mINP == pytest.approx(ref["mINP"], abs=1e-6)
    assert res.num_valid == int(ref["valid_mask"].sum())
    assert res.num_excluded == int((~ref["valid_mask"]).sum())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prob=problems(),
    removal=st.sampled_from(REMOVALS),
    cmc=st.sampled_from(CMCS),
    chunk=st.one_of(st.none(), st.integers(1, 4)),
    max_rank=st.integers(1, 6),
)
def test_evaluate_matches_reference(prob, removal, cmc, chunk, max_rank):
    metric, qf, qp, qc, gf, gp, gc = prob
    ref = reference(qf, qp, qc, gf, gp, gc, removal, cmc, metric, max_rank)
    if ref is None:
        with pytest.raises(EvaluationError, match="no query has a true match"):
            evaluate(qf, qp, qc, gf, gp, gc, removal=removal, cmc=cmc, metric=metric, max_rank=max_rank, chunk_size=chunk)
        return
    res = evaluate(qf, qp, qc, gf, gp, gc, removal=removal, cmc=cmc, metric=metric, max_rank=max_rank, chunk_size=chunk)
    _assert_same(res, ref)


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    removal=st.sampled_from(REMOVALS),
    cmc=st.sampled_from(CMCS),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_evaluate_similarity_matches_reference_with_heavy_ties(data, removal, cmc, dtype):
    nq = data.draw(st.integers(1, 6))
    ng = data.draw(st.integers(1, 30))
    vals = st.integers(-3, 3)  # few distinct values: most pairs tie
    sim = np.array([[data.draw(vals) for _ in range(ng)] for _ in range(nq)], dtype=dtype)
    qp = np.array([data.draw(st.integers(0, 3)) for _ in range(nq)])
    gp = np.array([data.draw(st.integers(0, 3)) for _ in range(ng)])
    qc = np.array([data.draw(st.integers(1, 6)) for _ in range(nq)])
    gc = np.array([data.draw(st.integers(1, 6)) for _ in range(ng)])
    chunk = data.draw(st.one_of(st.none(), st.integers(1, 3)))
    ref = reference_from_similarity(sim, qp, qc, gp, gc, removal, cmc, 20)
    if ref is None:
        with pytest.raises(EvaluationError):
            evaluate_similarity(sim, qp, qc, gp, gc, removal=removal, cmc=cmc, chunk_size=chunk)
        return
    _assert_same(evaluate_similarity(sim, qp, qc, gp, gc, removal=removal, cmc=cmc, chunk_size=chunk), ref)


def test_float64_similarities_closer_than_float32_resolution_are_ranked_exactly():
    # 1 + 1e-12 and 1 are one float32 value but two float64 values: the float64 path keeps them apart.
    sim = np.array([[1.0, 1.0 + 1e-12, 1.0 - 1e-12, 1.0]])
    gp = np.array([0, 1, 0, 1])
    ref = reference_from_similarity(sim, [1], [3], gp, [1, 1, 1, 1], "none", "standard")
    res = evaluate_similarity(sim, [1], [3], gp, [1, 1, 1, 1])
    assert res.first_hit[0] == 1 and ref["first_hit"][0] == 1
    _assert_same(res, ref)


def test_continuous_features_match_reference_on_a_larger_problem():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 30, 400)
    proto = rng.normal(size=(30, 16))
    gf = proto[ids] + 0.8 * rng.normal(size=(400, 16))
    qids = rng.integers(0, 30, 90)
    qf = proto[qids] + 0.8 * rng.normal(size=(90, 16))
    qc = rng.choice([3, 6], 90)
    gc = rng.choice([1, 2, 4, 5], 400)
    for removal, cmc in itertools.product(REMOVALS, CMCS):
        ref = reference(qf, qids, qc, gf, ids, gc, removal, cmc, "cosine")
        res = evaluate(qf, qids, qc, gf, ids, gc, removal=removal, cmc=cmc, chunk_size=17)
        _assert_same(res, ref)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=2, max_size=40))
def test_ordered_bits_order_equals_float_order(values):
    """The int32 codes used for ranking compare exactly as the float32 values do (-0.0 == +0.0 included)."""
    import torch

    from cmemd.evaluation.metrics import ordered_bits

    x = torch.tensor(values + [0.0, -0.0, 1e-45, -1e-45], dtype=torch.float32)
    codes = ordered_bits(x)
    assert torch.equal(torch.sign(codes[:, None].long() - codes[None, :].long()),
                       torch.sign(x[:, None].double() - x[None, :].double()).long())


@pytest.mark.parametrize("compare_max_p, compare_block", [(0, 1 << 17), (10**6, 1 << 17), (10**6, 200)])
def test_both_ways_of_counting_items_ahead_of_each_true_match_match_reference(monkeypatch, compare_max_p,
                                                                              compare_block):
    """Non-matches ranked before each true match are counted by comparison passes (over blocks of rows) when an
    id has few gallery images, by a binary search per item otherwise; each route alone must equal the reference
    (ties included), whatever the block of rows (200 keys: 3 rows of 60, the chunk's last block shorter)."""
    from cmemd.evaluation import metrics

    monkeypatch.setattr(metrics, "_COMPARE_MAX_P", compare_max_p)
    monkeypatch.setattr(metrics, "_COMPARE_BLOCK", compare_block)
    rng = np.random.default_rng(11)
    for trial in range(6):
        nq, ng, n_ids = 12, 60, (2, 4, 25)[trial % 3]
        sim = rng.integers(-3, 4, size=(nq, ng)).astype(np.float32)  # heavy ties
        qp, gp = rng.integers(0, n_ids + 1, nq), rng.integers(0, n_ids, ng)  # id n_ids: no true match
        qc, gc = rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)
        for removal, cmc in itertools.product(REMOVALS, CMCS):
            ref = reference_from_similarity(sim, qp, qc, gp, gc, removal, cmc, 20)
            if ref is not None:
                _assert_same(evaluate_similarity(sim, qp, qc, gp, gc, removal=removal, cmc=cmc, chunk_size=5), ref)
