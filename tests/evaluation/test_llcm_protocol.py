"""LLCM protocol against a brute-force reference written from the rules (docs/protocols.md), ties included."""
from __future__ import annotations

import random

import numpy as np
import pytest

from cmemd.errors import EvaluationError
from cmemd.benchmarks.llcm import DIRECTIONS as LLCM_DIRECTIONS
from cmemd.benchmarks.llcm import evaluate_llcm
from cmemd.evaluation import format_results
from tests.evaluation.eval_reference import reference_from_similarity

VIS_CAMS = tuple(range(1, 10))
NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)


def _pool(rng, pids, cams, prefix, dim):
    """A test set: a few images per (id, camera) present, features from a small set of vectors (many exact ties)."""
    P, C, paths = [], [], []
    for p in pids:
        for c in cams:
            if rng.random() < 0.6:
                for k in range(int(rng.integers(1, 4))):
                    P.append(p)
                    C.append(c)
                    paths.append(f"/data/cam9/{prefix}/cam{c}/{p:04d}/{k:03d}.jpg")
    # 0/1 vectors with one or two ones: cosines 0, 1/2, 1/sqrt(2), 1 are exact ties in float32 and float64 alike
    protos = np.array([v for v in np.ndindex(*(2,) * dim) if 1 <= sum(v) <= 2], np.float64)
    feats = protos[rng.integers(0, len(protos), size=len(P))]
    order = rng.permutation(len(P))  # pool order must not matter to the draws
    return (feats[order].astype(np.float32), np.array(P)[order], np.array(C)[order], [paths[i] for i in order])


def _draw(pids, cams, paths, trial):
    """One image per (id, camera): random.seed(trial), ids ascending, cameras ascending, choice over sorted paths."""
    random.seed(trial)
    out = []
    for p in sorted(set(pids.tolist())):
        for c in range(1, 10):
            members = sorted((paths[i], i) for i in range(len(pids)) if pids[i] == p and cams[i] == c)
            if members:
                out.append(random.choice([m[0] for m in members]))
    index = {path: i for i, path in enumerate(paths)}
    return np.array([index[x] for x in out])


def _cos(a, b):
    a = a.astype(np.float64) / np.linalg.norm(a, axis=1, keepdims=True)
    b = b.astype(np.float64) / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _reference(direction, vis, nir, trial):
    vf, vp, vc, vpaths = vis
    tf, tp, tc, tpaths = nir
    if direction == "t2v":
        g = _draw(vp, vc, vpaths, trial)
        return reference_from_similarity(_cos(tf, vf[g]), tp, tc, vp[g], vc[g], "same-pid-same-cam", "identity-dedup")
    g = _draw(tp, tc, tpaths, trial)
    if direction == "v2t":
        return reference_from_similarity(_cos(vf, tf[g]), vp, vc, tp[g], tc[g], "same-pid-same-cam", "identity-dedup")
    # the authors' transposed VIS->IR: sampled NIR images query every VIS image
    return reference_from_similarity(_cos(tf[g], vf), tp[g], tc[g], vp, vc, "same-pid-same-cam", "identity-dedup")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("memory_budget", [512 * 2**20, 64])  # one shared matrix / per-trial fallback
def test_matches_brute_force_reference(seed, memory_budget):
    rng = np.random.default_rng(seed)
    pids = rng.choice(np.arange(1, 60), size=7, replace=False)
    vis = _pool(rng, pids, VIS_CAMS, "test_vis", 4)
    nir = _pool(rng, pids, NIR_CAMS, "test_nir", 4)
    res = evaluate_llcm(*vis, *nir, directions=LLCM_DIRECTIONS, trials=10, memory_budget=memory_budget)
    assert set(res) == set(LLCM_DIRECTIONS)
    for d in LLCM_DIRECTIONS:
        assert res[d].trial_ids == list(range(10))
        for t, r in zip(res[d].trial_ids, res[d].trials):
            ref = _reference(d, vis, nir, t)
            np.testing.assert_allclose(r.cmc, ref["cmc"], atol=1e-12, err_msg=f"{d} trial {t}")
            np.testing.assert_allclose(r.ap, ref["ap"], atol=1e-9)
            np.testing.assert_allclose(r.inp, ref["inp"], atol=1e-9)
            np.testing.assert_array_equal(r.first_hit, ref["first_hit"])
            np.testing.assert_array_equal(r.valid_mask, ref["valid_mask"])


def test_same_id_same_camera_removal_and_directions_differ():
    # id 1 seen by cam1 in both modalities only: after removal its NIR query has no true match
    vf = np.array([[1.0, 0], [0, 1], [0, 1]], np.float32)
    vp, vc = np.array([1, 2, 2]), np.array([1, 1, 2])
    tf = np.array([[1.0, 0], [0, 1]], np.float32)
    tp, tc = np.array([1, 2]), np.array([1, 1])
    res = evaluate_llcm(vf, vp, vc, ["a", "b", "c"], tf, tp, tc, ["x", "y"], directions=["t2v"], trials=1)
    r = res["t2v"].trials[0]
    # query (id 1, cam1) loses its only match (same id, same camera); query (id 2, cam1) keeps the cam2 image
    assert r.num_valid == 1 and r.num_excluded == 1
    assert r.first_hit.tolist() == [1]
    text = format_results(res["t2v"])
    assert "LLCM t2v" in text and "IR->VIS" in text and "same-pid-same-cam" in text


def test_directions_named_and_checked():
    vf = np.eye(3, dtype=np.float32)
    args = (vf, [1, 2, 3], [1, 2, 3], ["a", "b", "c"], vf, [1, 2, 3], [2, 3, 4], ["x", "y", "z"])
    with pytest.raises(EvaluationError, match="direction"):
        evaluate_llcm(*args, directions=["i2v"])
    with pytest.raises(EvaluationError, match="not LLCM cameras"):
        evaluate_llcm(*args[:2], [0, 1, 2], *args[3:])
    res = evaluate_llcm(*args, directions=["v2t", "v2t-authors"], trials=2)
    assert "authors" in res["v2t-authors"].describe() and "transposed" in res["v2t-authors"].describe()
    assert res["v2t"].settings["direction"] == "v2t"
