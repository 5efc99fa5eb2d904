"""cmemd.ot against POT (independent reference) and LP properties."""
from __future__ import annotations

import itertools
import math

import numpy as np
import ot as pot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmemd.errors import SolverError
from cmemd.ot import EMDResult, _emd_path, emd, sinkhorn

SIZES = [(n, m) for n in range(1, 10) for m in range(1, 10)]


def pot_value(c: np.ndarray, a=None, b=None) -> float:
    n, m = c.shape
    a = np.full(n, 1.0 / n) if a is None else a
    b = np.full(m, 1.0 / m) if b is None else b
    return float(pot.emd2(a, b, c))


def assert_feasible(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor, atol=1e-9) -> None:
    assert (plan >= -atol).all()
    torch.testing.assert_close(plan.sum(-1), a, atol=atol, rtol=0)
    torch.testing.assert_close(plan.sum(-2), b, atol=atol, rtol=0)


@pytest.mark.parametrize("n,m", SIZES)
def test_emd_matches_pot_all_sizes(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    cost = torch.rand(7, n, m, generator=g, dtype=torch.float64)
    res = emd(cost)
    assert isinstance(res, EMDResult) and res.plan.shape == (7, n, m) and res.value.shape == (7,)
    assert not res.plan.requires_grad
    assert_feasible(res.plan, torch.full((7, n), 1 / n, dtype=torch.float64),
                    torch.full((7, m), 1 / m, dtype=torch.float64))
    for k in range(7):
        ref = pot_value(cost[k].numpy())
        assert res.value[k].item() == pytest.approx(ref, rel=1e-6, abs=1e-12)
    torch.testing.assert_close(res.value, (res.plan * cost).sum((-2, -1)))


@pytest.mark.parametrize("n,m", [(4, 4), (8, 8), (3, 7), (16, 16), (5, 12)])
def test_emd_gradient_is_plan(n, m):
    cost = torch.rand(5, n, m, dtype=torch.float64, requires_grad=True)
    res = emd(cost)
    res.value.sum().backward()
    torch.testing.assert_close(cost.grad, res.plan)


def test_paths_cover_enumeration_assignment_and_linprog():
    # the three exact paths are all exercised and agree with POT
    assert _emd_path(104, 4, 4) == "enumerate"
    assert _emd_path(10, 8, 8) == "assignment"
    assert _emd_path(2, 29, 31) == "linprog"  # lcm = 899 > 512
    cost = torch.rand(2, 29, 31, dtype=torch.float64)
    res = emd(cost)
    for k in range(2):
        assert res.value[k].item() == pytest.approx(pot_value(cost[k].numpy()), rel=1e-6)
    assert_feasible(res.plan, torch.full((2, 29), 1 / 29, dtype=torch.float64),
                    torch.full((2, 31), 1 / 31, dtype=torch.float64), atol=1e-7)


def test_unbatched_and_single_point():
    c = torch.rand(3, 5, dtype=torch.float64)
    res = emd(c)
    assert res.plan.shape == (3, 5) and res.value.dim() == 0
    assert res.value.item() == pytest.approx(pot_value(c.numpy()), rel=1e-9)
    one = emd(torch.tensor([[2.5]]))
    assert one.value.item() == 2.5 and one.plan.item() == 1.0
    # n = 1 or m = 1: the only feasible plan spreads the single point uniformly
    row = torch.tensor([[1.0, 2.0, 6.0]], dtype=torch.float64)
    assert emd(row).value.item() == pytest.approx(3.0)
    assert emd(row.T).value.item() == pytest.approx(3.0)


def test_ties_constant_cost():
    c = torch.full((4, 6, 6), 3.0, dtype=torch.float64)
    res = emd(c)
    torch.testing.assert_close(res.value, torch.full((4,), 3.0, dtype=torch.float64))
    assert_feasible(res.plan, torch.full((4, 6), 1 / 6, dtype=torch.float64),
                    torch.full((4, 6), 1 / 6, dtype=torch.float64))


@pytest.mark.parametrize("n,m", [(4, 4), (8, 8), (2, 3)])
def test_float32_and_huge_values(n, m):
    cost = torch.rand(6, n, m, dtype=torch.float64) * 1e6 + 1e9
    r32 = emd(cost.float())
    assert r32.plan.dtype == torch.float32 and r32.value.dtype == torch.float32
    for k in range(6):
        ref = pot_value(cost[k].numpy())
        assert r32.value[k].item() == pytest.approx(ref, rel=1e-6)
        assert emd(cost)[1][k].item() == pytest.approx(ref, rel=1e-9)


def test_non_uniform_marginals_exact():
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    a = torch.rand(3, 4, generator=g, dtype=torch.float64)
    a /= a.sum(1, keepdim=True)
    b = torch.rand(5, generator=g, dtype=torch.float64)
    b /= b.sum()
    res = emd(cost, a, b)
    assert_feasible(res.plan, a, b.expand(3, 5), atol=1e-7)
    for k in range(3):
        assert res.value[k].item() == pytest.approx(pot_value(cost[k].numpy(), a[k].numpy(), b.numpy()), rel=1e-6)
    # explicitly uniform marginals take the fast path and give the same answer
    u = emd(cost, torch.full((4,), 0.25, dtype=torch.float64), None)
    torch.testing.assert_close(u.value, emd(cost).value)


def test_bad_inputs_raise_solver_error():
    with pytest.raises(SolverError, match="NaN or inf"):
        emd(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(SolverError, match="shape"):
        emd(torch.rand(2, 2, 2, 2))
    with pytest.raises(SolverError, match="empty"):
        emd(torch.rand(3, 0))
    with pytest.raises(SolverError, match="total mass"):
        emd(torch.rand(2, 2), torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.9]))
    with pytest.raises(SolverError, match="non-negative"):
        emd(torch.rand(2, 2), torch.tensor([1.5, -0.5]))
    with pytest.raises(SolverError, match="marginal b"):
        emd(torch.rand(2, 3), None, torch.tensor([0.5, 0.5]))
    with pytest.raises(SolverError, match="eps"):
        sinkhorn(torch.rand(2, 2), eps=0.0)
    # a huge but finite cost whose sum overflows is not mistaken for inf
    big = torch.full((2, 2), 1e308, dtype=torch.float64)
    assert torch.isfinite(emd(big).plan).all()


# ---------------------------------------------------------------------------- hypothesis


@st.composite
def problems(draw):
    n = draw(st.integers(1, 7))
    m = draw(st.integers(1, 7))
    B = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e4]))
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, n, m, generator=g, dtype=torch.float64) * scale


@settings(max_examples=60, deadline=None)
@given(problems())
def test_property_bounded_by_independent_coupling_and_min_max(cost):
    B, n, m = cost.shape
    v = emd(cost).value
    indep = cost.mean((-2, -1))  # value of a b^T with uniform marginals
    assert (v <= indep * (1 + 1e-12) + 1e-300).all()
    # each unit of mass pays at least the row minimum and at least the column minimum
    lower = torch.maximum(cost.min(-1).values.mean(-1), cost.min(-2).values.mean(-1))
    assert (v >= lower * (1 - 1e-12)).all()


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(0, 2**31 - 1))
def test_property_permutation_invariance(cost, seed):
    B, n, m = cost.shape
    g = torch.Generator().manual_seed(seed)
    pr, pc = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
    base = emd(cost)
    perm = emd(cost[:, pr][:, :, pc])
    torch.testing.assert_close(perm.value, base.value, rtol=1e-9, atol=1e-15)
    # transposing swaps the roles of the two sides without changing the value
    torch.testing.assert_close(emd(cost.transpose(1, 2)).value, base.value, rtol=1e-9, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_property_square_matches_brute_force_permutations(n, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, n, generator=g, dtype=torch.float64)
    brute = min(sum(c[i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(n))) / n
    assert emd(c).value.item() == pytest.approx(brute, rel=1e-12)


# ---------------------------------------------------------------------------- sinkhorn


@pytest.mark.parametrize("n,m", [(1, 1), (4, 4), (3, 7), (9, 2), (8, 8)])
def test_sinkhorn_matches_pot(n, m):
    g = torch.Generator().manual_seed(n + 100 * m)
    cost = torch.rand(3, n, m, generator=g, dtype=torch.float64)
    reg = 0.1
    res = sinkhorn(cost, eps=reg, relative_eps=False, max_iter=5000, tol=1e-12)
    for k in range(3):
        ref = pot.sinkhorn(np.full(n, 1 / n), np.full(m, 1 / m), cost[k].numpy(), reg,
                           numItermax=100000, stopThr=1e-13)
        np.testing.assert_allclose(res.plan[k].numpy(), ref, atol=1e-5)
    torch.testing.assert_close(res.value, (res.plan * cost).sum((-2, -1)))


def test_sinkhorn_non_uniform_and_relative_eps_and_gradient():
    g = torch.Generator().manual_seed(7)
    cost = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    a = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    b = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.2], dtype=torch.float64)
    res = sinkhorn(cost, a, b, eps=0.05, relative_eps=False, max_iter=5000, tol=1e-12)
    for k in range(2):
        ref = pot.sinkhorn(a.numpy(), b.numpy(), cost[k].numpy(), 0.05, numItermax=100000, stopThr=1e-13)
        np.testing.assert_allclose(res.plan[k].numpy(), ref, atol=1e-5)
    # relative eps: scaling the cost does not change the plan
    p1 = sinkhorn(cost, eps=0.05, max_iter=2000, tol=1e-12).plan
    p2 = sinkhorn(cost * 1000.0, eps=0.05, max_iter=2000, tol=1e-12).plan
    torch.testing.assert_close(p1, p2, atol=1e-8, rtol=0)
    c = cost.clone().requires_grad_(True)
    r = sinkhorn(c)
    r.value.sum().backward()
    torch.testing.assert_close(c.grad, r.plan)
    # small eps approaches the exact EMD
    close = sinkhorn(cost, eps=1e-3, max_iter=20000, tol=1e-10).value
    torch.testing.assert_close(close, emd(cost).value, atol=5e-3, rtol=0)


# stops after 10 / 20-30 updates, runs to max_iter (the CM-EMD setting), float32 never / float64 soon, short loops
@pytest.mark.parametrize("eps,max_iter,tol", [(0.5, 200, 1e-6), (0.2, 200, 1e-5), (0.05, 200, 1e-6), (1.0, 5000, 1e-9),
                                              (0.05, 37, 1e-4), (0.05, 10, 1e-6)])
def test_sinkhorn_without_early_exit_is_the_same_plan_with_no_host_read(eps, max_iter, tol):
    """early_exit=False (the accelerator default) freezes the potentials on the device where the early exit would
    stop: the same plan, bit for bit, whether the test passes early, late or never; and no value is read back."""
    from cmemd.engine.sync_count import count_host_syncs

    g = torch.Generator().manual_seed(max_iter)
    for dtype in (torch.float32, torch.float64):
        cost = torch.rand(13, 4, 4, generator=g).to(dtype)
        cost[3] = 0.0
        early = sinkhorn(cost, eps=eps, max_iter=max_iter, tol=tol, early_exit=True)
        with count_host_syncs() as syncs:
            frozen = sinkhorn(cost, eps=eps, max_iter=max_iter, tol=tol, early_exit=False, check_finite=False)
        assert syncs.total == 0, syncs.table()
        assert torch.equal(early.plan, frozen.plan) and torch.equal(early.value, frozen.value)
    with count_host_syncs() as syncs:  # the early exit reads one value per test, none after the last update
        sinkhorn(cost, eps=0.05, max_iter=30, tol=0.0, early_exit=True, check_finite=False)
    assert dict(syncs.by_kind) == {"scalar": 2}


def test_sinkhorn_degenerate_inputs():
    z = sinkhorn(torch.zeros(2, 3, 3))
    torch.testing.assert_close(z.plan, torch.full((2, 3, 3), 1 / 9))
    huge = sinkhorn(torch.rand(2, 4, 4) * 1e8)
    assert torch.isfinite(huge.plan).all() and torch.isfinite(huge.value).all()
    assert math.isclose(float(huge.plan[0].sum()), 1.0, rel_tol=1e-4)
