"""Modality-gap measures and plan purity against closed forms and brute-force references."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmemd.errors import EvaluationError
from cmemd.evaluation.modality import (
    feature_health,
    modality_gap,
    plan_purity,
    sample_identity_groups,
)


def test_feature_health_closed_form():
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1e-6]])
    h = feature_health(x)
    assert h.norm == pytest.approx((5.0 + 1e-6) / 2)
    assert h.zero_entries == pytest.approx(6 / 8)  # row 1: two zeros; row 2: three zeros and GeM's 1e-6 floor
    assert h.dead_units == pytest.approx(2 / 4)  # columns 3 and 4 are zero in every row
    # a stack of stripe features: every stripe's units count
    stack = torch.zeros(3, 2, 5)
    stack[:, 0, :] = 1.0
    stack[0, 1, 0] = 2.0
    assert feature_health(stack).dead_units == pytest.approx(4 / 10)
    # one shared layer over the stripes: a unit is dead only if silent for every stripe too
    assert feature_health(stack, shared_units=True).dead_units == pytest.approx(0.0)
    stack[0, 1, 0] = 0.0
    stack[:, 0, 1] = 0.0
    assert feature_health(stack, shared_units=True).dead_units == pytest.approx(1 / 5)


def _two_modality_set(gap: float, n_ids=8, k=5, d=16, seed=0):
    """Identity centres + per-image noise; thermal images shifted by one common modality vector."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d)) * 3
    shift = np.zeros(d)
    shift[0] = gap
    feats, pids, mods, cams = [], [], [], []
    for i in range(n_ids):
        for m in (0, 1):
            for j in range(k):
                feats.append(centres[i] + 0.3 * rng.normal(size=d) + (shift if m else 0))
                pids.append(i)
                mods.append(m)
                cams.append(1 + 2 * m + j % 2)  # two cameras per modality
    return np.array(feats), np.array(pids), np.array(mods), np.array(cams)


def test_gap_measures_separate_aligned_from_split_modalities():
    aligned = modality_gap(*_two_modality_set(0.0))
    split = modality_gap(*_two_modality_set(10.0, n_ids=20))
    assert aligned.centre_ratio < 0.3 and split.centre_ratio > 2.0
    # the probe is tested on identities it was not trained on, so it stays below 1 on this small set
    assert split.probe_accuracy > 0.75
    assert 0.35 < aligned.probe_accuracy < 0.65  # no modality signal: chance
    assert aligned.r1_t2v > 0.9 and split.r1_t2v <= aligned.r1_t2v
    assert aligned.num_ids == 8 and aligned.num_images == 80


def test_gap_is_scale_invariant():
    f, p, m, c = _two_modality_set(5.0)
    a, b = modality_gap(f, p, m, c), modality_gap(f * 37.0, p, m, c)
    for key in ("centre_ratio", "probe_accuracy", "r1_v2v", "r1_t2t", "r1_t2v"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-9)


def _brute_rank1(f, p, c, q_idx, g_idx):
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    hits = []
    for q in q_idx:
        cands = [g for g in g_idx if g != q and not (p[g] == p[q] and c[g] == c[q])]
        if not any(p[g] == p[q] for g in cands):
            continue
        best = max(cands, key=lambda g: f[q] @ f[g])
        hits.append(p[best] == p[q])
    return float(np.mean(hits))


def test_rank1_triple_matches_brute_force():
    f, p, m, c = _two_modality_set(2.0, n_ids=5, k=3, seed=4)
    r = modality_gap(f, p, m, c)
    v, t = np.flatnonzero(m == 0), np.flatnonzero(m == 1)
    assert r.r1_v2v == pytest.approx(_brute_rank1(f, p, c, v, v))
    assert r.r1_t2t == pytest.approx(_brute_rank1(f, p, c, t, t))
    assert r.r1_t2v == pytest.approx(_brute_rank1(f, p, c, t, v))


def test_centre_ratio_closed_form():
    # one identity: visible at (0,0),(2,0); thermal at (0,4),(2,4): sample centres 4 apart, per-modality
    # variance (ddof=1) 2, so the unbiased squared distance is 16 - 2/2 - 2/2 = 14 and the spread sqrt(2)
    f = np.array([[0, 0], [2, 0], [0, 4], [2, 4]], float)
    r = modality_gap(f, [1, 1, 1, 1], [0, 0, 1, 1], normalize=False)
    assert r.centre_distance == pytest.approx(np.sqrt(14.0))
    assert r.spread == pytest.approx(np.sqrt(2.0))
    assert r.centre_ratio == pytest.approx(np.sqrt(7.0))


def test_centre_ratio_is_unbiased_for_aligned_modalities():
    # both modalities drawn from one distribution: the ratio stays near 0 (within its noise, which shrinks with
    # more images) where the uncorrected ratio of sample centres would be about sqrt(2 / (k - 1)): 1.0 and 0.26
    for k, bound in ((3, 0.35), (30, 0.1)):
        f, p, m, c = _two_modality_set(0.0, n_ids=40, k=k, seed=k)
        assert modality_gap(f, p, m, c).centre_ratio < bound


def _brute_mixing(f, p, m):
    """Per identity, image by image: is the nearest other image of its identity of the other modality?"""
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    per_id = []
    for pid in sorted(set(p)):
        idx = [i for i in range(len(p)) if p[i] == pid]
        if sum(m[i] == 0 for i in idx) < 2 or sum(m[i] == 1 for i in idx) < 2:
            continue
        hits, chance = [], []
        for i in idx:
            nearest = min((j for j in idx if j != i), key=lambda j: float(np.sum((f[i] - f[j]) ** 2)))
            hits.append(m[nearest] != m[i])
            chance.append(sum(m[j] != m[i] for j in idx) / (len(idx) - 1))
        per_id.append(np.mean(hits) / np.mean(chance))
    return np.array(per_id)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), gap=st.sampled_from([0.0, 0.5, 2.0]))
def test_mixing_matches_brute_force(seed, gap):
    rng = np.random.default_rng(seed)
    f, p, m, c = _two_modality_set(gap, n_ids=5, k=4, d=6, seed=seed)
    keep = rng.random(len(p)) < 0.8  # unequal modality counts; some identities drop out (< 2 per modality)
    f, p, m, c = f[keep], p[keep], m[keep], c[keep]
    per_id = _brute_mixing(f, p, m)
    r = modality_gap(f, p, m, c)
    assert r.num_ids == len(per_id)
    if len(per_id):
        assert r.mixing == pytest.approx(per_id.mean())
        assert r.overlap_share == pytest.approx(np.mean(per_id >= 0.5))
    # the same measure whichever modality is called visible, and in any row order
    order = rng.permutation(len(p))
    s = modality_gap(f[order], p[order], 1 - m[order], c[order])
    assert s.mixing == pytest.approx(r.mixing, nan_ok=True) and s.overlap_share == pytest.approx(r.overlap_share, nan_ok=True)


def test_mixing_closed_forms():
    # split modalities: every image's nearest same-identity image is of its own modality
    split = modality_gap(*_two_modality_set(10.0, n_ids=6, k=4))
    assert split.mixing == 0.0 and split.overlap_share == 0.0
    # twins: each thermal image sits next to one visible image, the pairs far apart: every nearest is
    # cross-modal, against a random labelling's k / (2k - 1)
    rng = np.random.default_rng(3)
    k, feats, pids, mods = 4, [], [], []
    for pid in range(3):
        for j in range(k):
            base = rng.normal(size=8) * 5 + 20 * np.eye(8)[j]
            for mod in (0, 1):
                feats.append(base + 1e-3 * rng.normal(size=8))
                pids.append(pid)
                mods.append(mod)
    twins = modality_gap(np.array(feats), pids, mods, normalize=False)
    assert twins.mixing == pytest.approx((2 * k - 1) / k) and twins.overlap_share == 1.0
    # one distribution for both modalities: the labels are exchangeable, so the expected mixing is 1
    rng = np.random.default_rng(5)
    n = 400
    same = modality_gap(rng.normal(size=(8 * n, 8)), np.repeat(np.arange(n), 8), np.tile([0, 0, 0, 0, 1, 1, 1, 1], n))
    assert same.mixing == pytest.approx(1.0, abs=0.08)  # about 4 standard errors


def test_gap_bad_input_names_the_field():
    with pytest.raises(EvaluationError, match="pids"):
        modality_gap(np.zeros((3, 2)), [1, 2], [0, 1, 0])
    with pytest.raises(EvaluationError, match="modalities"):
        modality_gap(np.ones((2, 2)), [1, 1], [0, 2])


def _brute_plan(cost: np.ndarray) -> np.ndarray:
    """Exact EMD with uniform marginals and K_v = K_t: the best permutation / K."""
    k = cost.shape[0]
    best = min(itertools.permutations(range(k)), key=lambda s: sum(cost[i, s[i]] for i in range(k)))
    plan = np.zeros_like(cost)
    plan[np.arange(k), best] = 1.0 / k
    return plan


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 4))
def test_plan_purity_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    n_ids, d = 3, 5
    feats = torch.from_numpy(rng.normal(size=(n_ids * 2 * k, d))).float()
    views = rng.integers(0, 2, size=n_ids * 2 * k)
    phase = rng.uniform(0, 2 * np.pi, size=n_ids * 2 * k)
    groups = [(np.arange(i * 2 * k, i * 2 * k + k), np.arange(i * 2 * k + k, (i + 1) * 2 * k)) for i in range(n_ids)]
    res = plan_purity(feats, groups, views, {"phase": phase})
    f = feats.double().numpy()
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    sv_p, sv_u, sv_m, ph_p, ph_u = [], [], [], [], []
    for iv, it in groups:
        plan = _brute_plan(1 - fn[iv] @ fn[it].T)
        same = (views[iv][:, None] == views[it][None, :]).astype(float)
        # the ceiling: the best permutation for same-view mass (Birkhoff: a vertex is optimal)
        best = max(itertools.permutations(range(k)), key=lambda s: sum(same[i, s[i]] for i in range(k)))
        d = np.abs(phase[iv][:, None] - phase[it][None, :])
        d = np.minimum(d, 2 * np.pi - d) / np.pi
        ph_p.append((plan * d).sum())
        ph_u.append(d.mean())
        if 0 < same.mean() < 1:
            sv_p.append((plan * same).sum())
            sv_u.append(same.mean())
            sv_m.append(sum(same[i, best[i]] for i in range(k)) / k)
    assert res.num_groups == n_ids and res.num_informative == len(sv_p)
    assert res.nuisance_plan["phase"] == pytest.approx(np.mean(ph_p), abs=1e-5)
    assert res.nuisance_uniform["phase"] == pytest.approx(np.mean(ph_u), abs=1e-9)
    if sv_p:
        assert res.same_view_plan == pytest.approx(np.mean(sv_p), abs=1e-5)
        assert res.same_view_uniform == pytest.approx(np.mean(sv_u), abs=1e-9)
        assert res.ratio == pytest.approx(np.mean(sv_p) / np.mean(sv_u), rel=1e-4)
        assert res.same_view_max == pytest.approx(np.mean(sv_m), abs=1e-9)
        assert res.same_view_uniform <= res.same_view_max + 1e-9 and res.same_view_plan <= res.same_view_max + 1e-6
    else:
        assert np.isnan(res.ratio) and np.isnan(res.same_view_max)


def test_plan_picks_same_view_pairs_when_features_encode_view():
    # features = view embedding: same-view pairs cost 0, so the plan puts all its mass on them
    views = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    emb = np.eye(2)[views] + 1e-3
    groups = [(np.arange(0, 4), np.arange(4, 8))]
    res = plan_purity(torch.from_numpy(emb).float(), groups, views)
    assert res.same_view_plan == pytest.approx(1.0)
    assert res.same_view_uniform == pytest.approx(0.5)
    assert res.ratio == pytest.approx(2.0)
    assert res.same_view_max == pytest.approx(1.0) and res.max_ratio == pytest.approx(2.0)


def test_sample_identity_groups_draws_both_modalities():
    pids = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])
    mods = np.array([0, 0, 1, 1, 0, 1, 1, 0, 0])  # id 3 has no thermal image
    groups = sample_identity_groups(pids, mods, k=2, draws=3, seed=1)
    assert len(groups) == 6
    for iv, it in groups:
        assert (mods[iv] == 0).all() and (mods[it] == 1).all()
        assert len({pids[i] for i in np.concatenate([iv, it])}) == 1
    assert len(set(groups[0][0].tolist())) == 2  # enough images: without replacement
