"""Closed-form cases, the SYSU rules on a hand-made gallery, and input errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cmemd.errors import EvaluationError
from cmemd.benchmarks.sysu import SAME_LOCATION
from cmemd.evaluation import evaluate, evaluate_similarity


def test_perfect_features_give_one_everywhere():
    ids = np.repeat(np.arange(5), 3)
    g = np.eye(5)[ids]
    q = np.eye(5)[np.arange(5)]
    r = evaluate(q, np.arange(5), np.full(5, 3), g, ids, np.full(15, 1), removal=SAME_LOCATION, cmc="identity-dedup")
    assert r.cmc[0] == 1.0 and r.mAP == 1.0 and r.mINP == 1.0
    np.testing.assert_array_equal(r.first_hit, np.ones(5))


def test_hand_built_ranking_gives_hand_computed_ap_and_inp():
    # Ranked list: match, miss, match, miss, miss, match -> positions 1, 3, 6.
    sim = np.array([[6.0, 5, 4, 3, 2, 1]])
    gp = np.array([1, 0, 1, 0, 0, 1])
    r = evaluate_similarity(sim, [1], [0], gp, np.ones(6))
    assert r.ap[0] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert r.inp[0] == pytest.approx(3 / 6)
    assert r.first_hit[0] == 1
    # Shuffling the gallery columns must not change anything (no tie here).
    perm = np.array([4, 2, 0, 5, 1, 3])
    r2 = evaluate_similarity(sim[:, perm], [1], [0], gp[perm], np.ones(6))
    assert r2.ap[0] == pytest.approx(r.ap[0]) and r2.inp[0] == pytest.approx(r.inp[0])


def test_ties_rank_by_gallery_index_like_a_stable_sort():
    sim = np.array([[0.5, 0.5, 0.5]])
    assert evaluate_similarity(sim, [1], [0], [0, 1, 0], [1, 1, 1]).first_hit[0] == 2
    assert evaluate_similarity(sim, [1], [0], [1, 0, 0], [1, 1, 1]).first_hit[0] == 1
    # -0.0 and +0.0 are the same similarity: the index decides.
    assert evaluate_similarity(np.array([[-0.0, 0.0]]), [1], [0], [0, 1], [1, 1]).first_hit[0] == 2
    assert evaluate_similarity(np.array([[0.0, -0.0]]), [1], [0], [0, 1], [1, 1]).first_hit[0] == 2


# Tiny SYSU gallery: A(id2, cam2) B(id1, cam2) C(id3, cam1) E(id3, cam4) D(id1, cam1), ranked in that order.
SIM = np.array([[0.9, 0.8, 0.7, 0.65, 0.6]])
GP = np.array([2, 1, 3, 3, 1])
GC = np.array([2, 2, 1, 4, 1])


def test_sysu_same_location_removal_changes_the_answer_for_cam3_only():
    none = evaluate_similarity(SIM, [1], [3], GP, GC, removal="none")
    assert none.first_hit[0] == 2 and none.ap[0] == pytest.approx((1 / 2 + 2 / 5) / 2)
    sysu = evaluate_similarity(SIM, [1], [3], GP, GC, removal=SAME_LOCATION)
    # A and B (cam2) are gone whatever their id: C, E, D -> the only match is 3rd.
    assert sysu.first_hit[0] == 3 and sysu.ap[0] == pytest.approx(1 / 3) and sysu.inp[0] == pytest.approx(1 / 3)
    cam6 = evaluate_similarity(SIM, [1], [6], GP, GC, removal=SAME_LOCATION)
    assert cam6.first_hit[0] == 2 and cam6.ap[0] == pytest.approx(none.ap[0])
    # Market rule differs: it drops only B (same id, same camera) for a cam2 query.
    market = evaluate_similarity(SIM, [1], [2], GP, GC, removal="same-pid-same-cam")
    assert market.first_hit[0] == 4 and market.ap[0] == pytest.approx(1 / 4)


def test_identity_dedup_counts_each_gallery_id_once():
    std = evaluate_similarity(SIM, [1], [3], GP, GC, removal=SAME_LOCATION, cmc="standard")
    dedup = evaluate_similarity(SIM, [1], [3], GP, GC, removal=SAME_LOCATION, cmc="identity-dedup")
    assert std.first_hit[0] == 3  # C, E are both id 3
    assert dedup.first_hit[0] == 2  # ids in order: 3, 1
    assert std.cmc[1] == 0.0 and dedup.cmc[1] == 1.0
    assert dedup.ap[0] == pytest.approx(std.ap[0])  # mAP is never deduplicated


def test_query_without_true_match_is_excluded_and_counted():
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]])
    # Query 1 (id 7) has no match; query 2 (cam3) only matches a cam2 image, removed.
    r = evaluate_similarity(sim, [1, 7, 2], [6, 6, 3], [1, 2], [1, 2], removal=SAME_LOCATION)
    np.testing.assert_array_equal(r.valid_mask, [True, False, False])
    assert r.num_valid == 1 and r.num_excluded == 2 and len(r.ap) == 1


def test_torch_inputs_and_euclidean_metric():
    q = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    g = torch.tensor([[9.0, 9.0], [0.1, 0.0], [1.0, 1.0]])
    # Raw Euclidean: query 0 is nearest to g1, query 1 to g0. Cosine would tie g0 and g2.
    r = evaluate(q, torch.tensor([5, 6]), torch.tensor([1, 1]), g, torch.tensor([6, 5, 5]), torch.tensor([2, 2, 2]), metric="euclidean")
    np.testing.assert_array_equal(r.first_hit, [1, 1])
    assert isinstance(r.cmc, np.ndarray) and r.cmc.shape == (20,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(removal="market"), "removal='market' is unknown"),
        (dict(cmc="dedup"), "cmc='dedup' is unknown"),
        (dict(metric="l1"), "metric='l1' is unknown"),
        (dict(max_rank=0), "max_rank"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_options_raise(kwargs, match):
    q, g = np.eye(3), np.eye(3)
    with pytest.raises(EvaluationError, match=match):
        evaluate(q, [0, 1, 2], [1, 1, 1], g, [0, 1, 2], [2, 2, 2], **kwargs)


def test_bad_arrays_raise_with_names_and_indices():
    q, g = np.eye(3), np.eye(3)
    ids, cams = np.arange(3), np.ones(3)
    with pytest.raises(EvaluationError, match="query_pids: length 2 does not match query_feats"):
        evaluate(q, [0, 1], cams, g, ids, cams)
    with pytest.raises(EvaluationError, match="gallery_cams: length 4"):
        evaluate(q, ids, cams, g, ids, np.ones(4))
    bad = g.copy()
    bad[1, 0] = np.nan
    with pytest.raises(EvaluationError, match=r"gallery_feats: 1 row\(s\) contain NaN or inf \(indices 1\)"):
        evaluate(q, ids, cams, bad, ids, cams)
    zero = q.copy()
    zero[[0, 2]] = 0
    with pytest.raises(EvaluationError, match=r"query_feats: 2 zero-norm row\(s\) \(indices 0, 2\)"):
        evaluate(zero, ids, cams, g, ids, cams)
    evaluate(zero, ids, cams, g, ids, cams, metric="euclidean")  # fine without normalisation
    with pytest.raises(EvaluationError, match="dimension 3 but gallery_feats 2"):
        evaluate(q, ids, cams, g[:, :2], ids, cams)
    with pytest.raises(EvaluationError, match="query_pids: labels must be integers"):
        evaluate(q, [0.5, 1, 2], cams, g, ids, cams)


def test_non_finite_rows_are_found_among_rows_whose_sums_overflow():
    """The finite check sums each row first: finite entries whose sum overflows (3e38 + 3e38 in float32) are not
    an error, and NaN / inf rows among them are still named, each exactly once."""
    big = np.full((6, 2), 3e38, dtype=np.float32)
    big[:, 1] = np.arange(6) + 1  # distinct directions
    ids, cams = np.arange(6), np.ones(6)
    r = evaluate(big, ids, cams, big, ids, cams * 2)  # no error: every entry is finite
    assert r.num_valid == 6
    bad = big.copy()
    bad[1, 1] = np.inf
    bad[4, 0] = np.nan
    bad[5, 0] = -np.inf
    with pytest.raises(EvaluationError, match=r"query_feats: 3 row\(s\) contain NaN or inf \(indices 1, 4, 5\)"):
        evaluate(bad, ids, cams, big, ids, cams)
    with pytest.raises(EvaluationError, match=r"gallery_feats: 1 row\(s\) contain NaN or inf \(indices 2\)"):
        inf_only = np.eye(6)
        inf_only[2, 3] = -np.inf
        evaluate(np.eye(6), ids, cams, inf_only, ids, cams)
