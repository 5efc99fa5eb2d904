"""Alignment losses: CM-EMD against POT, closed forms, properties, degenerate inputs."""
from __future__ import annotations

import numpy as np
import ot as pot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmemd.errors import ConfigError, TrainingError
from cmemd.losses import (
    AlignmentOptions,
    AlignmentOutput,
    CMEMDLoss,
    all_pairs_loss,
    cmemd_loss,
    cross_cost,
    hetero_center_loss,
    make_alignment_loss,
    mmd_loss,
)

ALL = ["cmemd", "all-pairs", "hetero-center", "mmd", "none"]


def paper_batch(D=16, ids=4, kv=3, kt=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(ids).repeat_interleave(kv + kt)
    mods = torch.tensor([0] * kv + [1] * kt).repeat(ids)
    feats = torch.randn(ids * (kv + kt), D, generator=g, dtype=dtype)
    return feats, pids, mods


def ref_cost(v: np.ndarray, t: np.ndarray, cost: str) -> np.ndarray:
    # straightforward loops, independent of cross_cost
    C = np.zeros((len(v), len(t)))
    for i in range(len(v)):
        for j in range(len(t)):
            if cost == "euclidean":
                C[i, j] = np.sqrt(((v[i] - t[j]) ** 2).sum())
            elif cost == "sqeuclidean":
                C[i, j] = ((v[i] - t[j]) ** 2).sum()
            else:
                C[i, j] = 1 - v[i] @ t[j] / np.linalg.norm(v[i]) / np.linalg.norm(t[j])
    return C


def ref_cmemd(feats, pids, mods, cost="euclidean", normalize=False):
    """Per identity ot.emd2 on a loop-built cost; mean over identities (skipping one-modality ids)."""
    x = feats.detach().numpy()
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    vals = []
    for p in dict.fromkeys(pids.tolist()):
        v = x[(pids == p).numpy() & (mods == 0).numpy()]
        t = x[(pids == p).numpy() & (mods == 1).numpy()]
        if len(v) == 0 or len(t) == 0:
            continue
        C = ref_cost(v, t, cost)
        vals.append(pot.emd2(np.full(len(v), 1 / len(v)), np.full(len(t), 1 / len(t)), C))
    return float(np.mean(vals))


@pytest.mark.parametrize("cost", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("normalize", [False, True])
def test_cmemd_matches_pot_per_identity(cost, normalize):
    # identities with different (K_v, K_t) shapes, one identity with only visible images
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 4), (3, 2), (4, 4), (1, 5), (2, 0), (7, 3)]
    pids, mods = [], []
    for p, (kv, kt) in enumerate(shapes):
        pids += [p] * (kv + kt)
        mods += [0] * kv + [1] * kt
    pids, mods = torch.tensor(pids), torch.tensor(mods)
    # interleave the samples so grouping cannot rely on order
    perm = torch.randperm(len(pids), generator=g)
    pids, mods = pids[perm], mods[perm]
    feats = torch.randn(len(pids), 8, generator=g, dtype=torch.float64)
    out = cmemd_loss(feats, pids, mods, cost=cost, normalize=normalize)
    assert isinstance(out, AlignmentOutput)
    assert out.num_identities == 5 and out.num_skipped == 1
    assert out.loss.item() == pytest.approx(ref_cmemd(feats, pids, mods, cost, normalize), rel=1e-9)


def test_multi_granularity_mean_and_gradient_is_plan_weighted():
    feats, pids, mods = paper_batch(D=6, ids=3, kv=4, kt=4)
    g2 = torch.randn(len(pids), 3, dtype=torch.float64)
    out = cmemd_loss([feats, g2], pids, mods, normalize=False)
    r1, r2 = ref_cmemd(feats, pids, mods), ref_cmemd(g2, pids, mods)
    torch.testing.assert_close(out.per_granularity, torch.tensor([r1, r2], dtype=torch.float64))
    assert out.loss.item() == pytest.approx((r1 + r2) / 2)
    # gradient vs finite differences (the plan is locally constant for generic inputs)
    f = feats.clone().requires_grad_(True)
    loss = cmemd_loss(f, pids, mods, normalize=False).loss
    (grad,) = torch.autograd.grad(loss, f)
    h = 1e-6
    for idx in [(0, 0), (5, 3), (11, 2)]:
        fp, fm = feats.clone(), feats.clone()
        fp[idx] += h
        fm[idx] -= h
        fd = (ref_cmemd(fp, pids, mods) - ref_cmemd(fm, pids, mods)) / (2 * h)
        assert grad[idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_closed_forms():
    feats, pids, mods = paper_batch(D=5, ids=2, kv=3, kt=3)
    # identical visible and thermal sets (in shuffled order) give 0
    same = feats.clone()
    for p in range(2):
        vis = (pids == p) & (mods == 0)
        th = (pids == p) & (mods == 1)
        same[th] = feats[vis].flip(0)
    assert cmemd_loss(same, pids, mods, normalize=False).loss.item() == 0.0
    # K_v = K_t = 1: the pair distance
    pids1, mods1 = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0])
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    assert cmemd_loss(x, pids1, mods1, normalize=False).loss.item() == pytest.approx((5.0 + 1.0) / 2)
    assert cmemd_loss(x, pids1, mods1, cost="sqeuclidean", normalize=False).loss.item() == pytest.approx((25.0 + 1.0) / 2)
    # hetero-centre: centres (1, 0) and (4, 4) -> distance 5
    hp, hm = torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1])
    hx = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0], [4.0, 5.0]], dtype=torch.float64)
    assert hetero_center_loss(hx, hp, hm, normalize=False).loss.item() == pytest.approx(5.0)
    # all-pairs: mean of the 4 distances
    d = [np.hypot(4, 3), np.hypot(4, 5), np.hypot(2, 3), np.hypot(2, 5)]
    assert all_pairs_loss(hx, hp, hm, normalize=False).loss.item() == pytest.approx(np.mean(d))
    # CM-EMD on the same: best matching of 2 x 2
    best = min(d[0] + d[3], d[1] + d[2]) / 2
    assert cmemd_loss(hx, hp, hm, normalize=False).loss.item() == pytest.approx(best)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**31 - 1),
       st.sampled_from(["euclidean", "sqeuclidean", "cosine"]))
def test_property_cmemd_never_exceeds_all_pairs(kv, kt, ids, seed, cost):
    feats, pids, mods = paper_batch(D=4, ids=ids, kv=kv, kt=kt, seed=seed)
    e = cmemd_loss(feats, pids, mods, cost=cost, normalize=False).per_granularity
    a = all_pairs_loss(feats, pids, mods, cost=cost, normalize=False).per_granularity
    assert (e <= a * (1 + 1e-12) + 1e-12).all()
    # and is at least the hetero-centre distance for the (convex) Euclidean cost (Jensen)
    if cost == "euclidean":
        hc = hetero_center_loss(feats, pids, mods, normalize=False).per_granularity
        assert (e >= hc * (1 - 1e-9) - 1e-12).all()


def test_sinkhorn_solver_close_to_exact_and_above():
    feats, pids, mods = paper_batch(D=8, ids=4, kv=4, kt=4)
    exact = cmemd_loss(feats, pids, mods, normalize=False).loss
    ent = cmemd_loss(feats, pids, mods, solver="sinkhorn", eps=0.01, sinkhorn_iters=2000, normalize=False).loss
    assert ent.item() >= exact.item() - 1e-9
    assert ent.item() == pytest.approx(exact.item(), rel=2e-2)


def test_mmd_zero_for_identical_positive_for_shifted():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    pids = torch.arange(8).repeat(2)
    mods = torch.tensor([0] * 8 + [1] * 8)
    same = mmd_loss(torch.cat([x, x]), pids, mods, normalize=False).loss
    assert abs(same.item()) < 1e-12
    shifted = mmd_loss(torch.cat([x, x + 2.0]), pids, mods, normalize=False).loss
    assert shifted.item() > 0.1
    # reference: V-statistic with the median heuristic, computed with loops
    z = torch.cat([x, x + 2.0]).numpy()
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    off = np.sort(d2[~np.eye(16, dtype=bool)])
    s = off[(len(off) - 1) // 2]  # lower median, as documented
    k = np.mean([np.exp(-d2 / (b * s)) for b in (0.25, 0.5, 1.0, 2.0, 4.0)], axis=0)
    ref = k[:8, :8].mean() + k[8:, 8:].mean() - 2 * k[:8, 8:].mean()
    assert shifted.item() == pytest.approx(ref, rel=1e-9)


DEGENERATE = {
    "identical": lambda n, d: torch.ones(n, d),
    "zeros": lambda n, d: torch.zeros(n, d),
    "huge": lambda n, d: torch.randn(n, d) * 1e4,
    "tiny": lambda n, d: torch.randn(n, d) * 1e-8,
}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("kv,kt", [(4, 4), (1, 1), (2, 3)])
@pytest.mark.parametrize("cost", ["euclidean", "cosine"])
def test_degenerate_inputs_finite_values_and_gradients(name, case, kv, kt, cost):
    torch.manual_seed(0)
    ids = 3
    pids = torch.arange(ids).repeat_interleave(kv + kt)
    mods = torch.tensor([0] * kv + [1] * kt).repeat(ids)
    f = DEGENERATE[case](len(pids), 6).requires_grad_(True)
    g = DEGENERATE[case](len(pids), 3).requires_grad_(True)
    kw = {} if name in ("mmd", "none") else {"cost": cost}
    out = make_alignment_loss(name, **kw)([f, g], pids, mods)
    assert torch.isfinite(out.loss) and torch.isfinite(out.per_granularity).all()
    out.loss.backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(g.grad).all()


def test_no_pairs_returns_connected_zero_and_counts():
    f = torch.randn(4, 3, requires_grad=True)
    out = CMEMDLoss()(f, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert out.loss.item() == 0.0 and out.num_identities == 0 and out.num_skipped == 2
    out.loss.backward()
    assert f.grad is not None


def test_euclidean_gradient_finite_at_identical_features():
    v = torch.ones(1, 2, 3, requires_grad=True)
    c = cross_cost(v, v.detach().clone())
    assert (c == 0).all()
    c.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_bad_inputs():
    f, p, m = paper_batch()
    with pytest.raises(ConfigError, match="unknown alignment loss"):
        make_alignment_loss("emd")
    with pytest.raises(ConfigError, match="unknown cost"):
        make_alignment_loss("cmemd", cost="manhattan")
    with pytest.raises(ConfigError, match="bad option"):
        make_alignment_loss("none", cost="euclidean")
    with pytest.raises(ConfigError, match="solver"):
        CMEMDLoss(solver="auction")
    with pytest.raises(TrainingError, match="modalities"):
        cmemd_loss(f, p, m + 1, normalize=False)
    with pytest.raises(TrainingError, match="pids"):
        cmemd_loss(f, p[:-1], m, normalize=False)
    with pytest.raises(TrainingError, match="feats\\[1\\]"):
        cmemd_loss([f, f[:-1]], p, m, normalize=False)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100.0), st.sampled_from(["cmemd", "all-pairs", "hetero-center", "mmd"]))
def test_property_default_losses_cannot_be_lowered_by_rescaling(seed, scale, name):
    """The default of every alignment loss is scale-safe: rescaling all features leaves the loss unchanged."""
    feats, pids, mods = paper_batch(D=6, ids=3, kv=3, kt=2, seed=seed)
    loss = make_alignment_loss(name)
    a, b = loss(feats, pids, mods).loss.item(), loss(feats * scale, pids, mods).loss.item()
    assert b == pytest.approx(a, rel=1e-6, abs=1e-9)


def test_options_reach_each_loss_as_it_reads_them():
    """One AlignmentOptions for every loss: each computes what its function computes with the options it reads,
    written out here per loss; the options it does not read change nothing; a keyword argument wins."""
    feats, pids, mods = paper_batch(D=6, ids=3, kv=3, kt=2)
    fl = [feats, feats[:, :4] * 2.0]
    opts = AlignmentOptions(cost="cosine", normalize=False, solver="sinkhorn", eps=0.1, sinkhorn_iters=30)
    expected = {
        "cmemd": cmemd_loss(fl, pids, mods, "cosine", False, "sinkhorn", 0.1, 30),
        "all-pairs": all_pairs_loss(fl, pids, mods, "cosine", False),
        "hetero-center": hetero_center_loss(fl, pids, mods, "cosine", False),
        "mmd": mmd_loss(fl, pids, mods, normalize=False),
        "none": AlignmentOutput(torch.zeros((), dtype=feats.dtype), torch.zeros(2, dtype=feats.dtype), 3, 0),
    }
    for name, want in expected.items():
        got = make_alignment_loss(name, opts)(fl, pids, mods)
        assert torch.equal(got.per_granularity, want.per_granularity), name
        assert (got.num_identities, got.num_skipped) == (want.num_identities, want.num_skipped), name
    # MMD reads no cost, all-pairs no solver: options outside a loss's reading change nothing
    other_cost = AlignmentOptions(cost="sqeuclidean", normalize=False)
    assert torch.equal(make_alignment_loss("mmd", other_cost)(fl, pids, mods).loss, expected["mmd"].loss)
    other_solver = AlignmentOptions(cost="cosine", normalize=False, solver="exact", eps=9.0)
    assert torch.equal(make_alignment_loss("all-pairs", other_solver)(fl, pids, mods).loss, expected["all-pairs"].loss)
    assert make_alignment_loss("cmemd", opts, cost="euclidean").cost == "euclidean"
    with pytest.raises(ConfigError, match="unknown cost"):
        make_alignment_loss("hetero-center", AlignmentOptions(cost="manhattan"))
