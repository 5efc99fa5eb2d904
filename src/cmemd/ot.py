"""Batched optimal transport for the many tiny problems of CM-EMD.

Two solvers, both batched over ``B`` problems (cost ``B x n x m``; a single ``n x m`` cost gives
unbatched outputs) and both returning :class:`EMDResult` ``(plan, value)`` with the plan held
constant (no gradient) and ``value = <plan, cost>`` differentiable in ``cost``:

* :func:`emd` -- the exact Earth Mover's Distance.
* :func:`sinkhorn` -- entropic OT, log-domain, fully on the tensor's device.

How :func:`emd` solves a problem (uniform marginals, the CM-EMD case)
---------------------------------------------------------------------
With uniform marginals and ``n == m`` an optimal plan is a permutation matrix ``/ n`` (Birkhoff),
so the EMD is a linear assignment. With ``n != m`` each row is replicated ``L/n`` times and each
column ``L/m`` times, ``L = lcm(n, m)``; the ``L x L`` assignment, folded back
(``plan[i, j] = #replicated pairs (i, j) / L``), is an optimal plan of the original problem.
Every such folded plan is an integer "count" matrix with row sums ``L/n`` and column sums
``L/m``, divided by ``L``. Two paths:

1. **enumeration** (when the number ``P`` of count matrices is small, e.g. ``P = n!`` = 24 for
   4 x 4, 720 for 6 x 6): all ``P`` candidate plans are precomputed once per ``(n, m)`` and the
   whole batch is solved by ONE matrix product ``cost (B, n*m) @ candidates (n*m, P)`` and an
   argmin, on the tensor's own device, with no host synchronisation. Exact: the optimum of the
   LP is one of the candidates. This is the path of the paper's batch (104 problems of 4 x 4).
2. **assignment loop** (larger problems): one device-to-host copy of the whole batch, then a
   tight loop of :func:`scipy.optimize.linear_sum_assignment` (~1-6 us per 8 x 8 .. 16 x 16
   problem), then one host-to-device copy of the plans. When ``lcm(n, m)`` would make the
   replicated problem large (> ``_MAX_LCM``), the problem goes to the LP fallback below.

Non-uniform marginals are solved exactly by :func:`scipy.optimize.linprog` (HiGHS), one problem at
a time -- correct but slow; use :func:`sinkhorn` when that matters.

This module is standalone: it imports only :mod:`cmemd.errors` (which imports nothing).
"""

from __future__ import annotations

import math
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from cmemd.errors import SolverError

__all__ = ["EMDResult", "emd", "sinkhorn"]

# Enumeration is used while the candidate table is at most this many plans (6 x 6 has 720; on
# CPU the assignment loop is as fast from there on, on an accelerator the matmul stays cheaper
# and avoids the host round trip, so 7 x 7 = 5040 is allowed there) ...
_ENUM_MAX_CANDIDATES = 720
_ENUM_MAX_CANDIDATES_ACCEL = 5040
# ... and the score matrix (B x P) at most this many entries (memory bound; beyond it the
# assignment loop is as fast anyway).
_ENUM_MAX_SCORES = 1 << 24
# Largest lcm(n, m) handled by replication + assignment; beyond it, linprog.
_MAX_LCM = 512


class EMDResult(NamedTuple):
    """Solution of a (batch of) transport problem(s).

    ``plan``: ``(B, n, m)`` or ``(n, m)``, detached (no gradient).
    ``value``: ``(B,)`` or ``()``, equal to ``(plan * cost).sum((-2, -1))`` with the gradient of
    ``cost`` (for the exact solver this is the gradient of the EMD, by the envelope theorem).
    """

    plan: Tensor
    value: Tensor


# --------------------------------------------------------------------------------------------
# input handling


def _as_batched_cost(cost: Tensor, name: str, check_finite: bool = True) -> tuple[Tensor, bool]:
    if not isinstance(cost, Tensor):
        cost = torch.as_tensor(cost)
    if cost.dim() not in (2, 3):
        raise SolverError(
            f"{name}: cost must have shape (n, m) or (B, n, m), got {tuple(cost.shape)}; "
            "stack the cost matrices of one problem size into a 3-d tensor"
        )
    if cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise SolverError(
            f"{name}: cost has an empty side, shape {tuple(cost.shape)}; every problem needs n >= 1 and m >= 1 points"
        )
    if not cost.is_floating_point():
        cost = cost.to(torch.get_default_dtype())
    unbatched = cost.dim() == 2
    if unbatched:
        cost = cost.unsqueeze(0)
    # A finite sum proves every entry finite (NaN/inf propagate) and is much cheaper than an
    # elementwise check; the full check runs only to tell overflow of the sum from a bad entry.
    # (The check reads a value on the host: with check_finite=False a caller that checks its result
    # anyway skips that synchronisation; the host-side paths check their own copy, see _host_cost.)
    c = cost.detach()
    if check_finite and not bool(torch.isfinite(c.sum())) and not bool(torch.isfinite(c).all()):
        raise SolverError(_non_finite(name))
    return cost, unbatched


def _non_finite(name: str) -> str:
    return (
        f"{name}: cost contains NaN or inf; check the features the cost was built from "
        "(a forbidden pair needs a large finite cost, not inf)"
    )


def _host_cost(cost: Tensor, name: str) -> np.ndarray:
    """The cost as a float64 array on the host, checked finite (these paths copy it anyway)."""
    C = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(C).all():
        raise SolverError(_non_finite(name))
    return C


def _marginal(w: Tensor | None, B: int, n: int, cost: Tensor, name: str, side: str) -> Tensor | None:
    """Validated marginal of shape (B, n), or None when it is uniform."""
    if w is None:
        return None
    w = torch.as_tensor(w).to(device=cost.device, dtype=cost.dtype).detach()
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(B, -1)
    if tuple(w.shape) != (B, n):
        raise SolverError(
            f"{name}: marginal {side} has shape {tuple(w.shape)}, expected ({n},) or ({B}, {n}) to match the cost"
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise SolverError(f"{name}: marginal {side} must be finite and non-negative")
    if torch.allclose(w, torch.full_like(w, 1.0 / n), rtol=1e-6, atol=1e-12):
        return None
    return w


# --------------------------------------------------------------------------------------------
# exact solver, uniform marginals


def _count_matrices(n: int, m: int, limit: int) -> np.ndarray | None:
    """All n x m non-negative integer matrices with row sums L/n and column sums L/m.

    Returns None as soon as there are more than ``limit`` of them.
    """
    L = n * m // math.gcd(n, m)
    r, c = L // n, L // m
    out: list[list[int]] = []

    def rows(i: int, cap: list[int], acc: list[int]) -> bool:
        if i == n:
            out.append(list(acc))
            return len(out) <= limit
        # compositions of r into m parts bounded by the remaining column capacity
        if i == n - 1:  # the last row is forced: it takes what the columns have left
            return rows(n, cap, acc + cap)

        def parts(j: int, left: int, row: list[int]) -> bool:
            if left > sum(cap[j:]):  # prune: the remaining columns cannot absorb the row
                return True
            if j == m - 1:
                if left > cap[j]:
                    return True
                row.append(left)
                cap[j] -= left
                ok = rows(i + 1, cap, acc + row)
                cap[j] += left
                row.pop()
                return ok
            for v in range(min(left, cap[j]), -1, -1):
                row.append(v)
                cap[j] -= v
                ok = parts(j + 1, left - v, row)
                cap[j] += v
                row.pop()
                if not ok:
                    return False
            return True

        return parts(0, r, [])

    if not rows(0, [c] * m, []):
        return None
    return np.asarray(out, dtype=np.float64).reshape(-1, n * m) / L


@cache
def _candidates_cpu(n: int, m: int, limit: int = _ENUM_MAX_CANDIDATES) -> Tensor | None:
    table = _count_matrices(n, m, limit)
    return None if table is None else torch.from_numpy(table)


@lru_cache(maxsize=64)
def _candidates(n: int, m: int, limit: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    table = _candidates_cpu(n, m, limit)
    assert table is not None
    return table.to(device=device, dtype=dtype)


def _enum_limit(device: torch.device) -> int:
    return _ENUM_MAX_CANDIDATES if device.type == "cpu" else _ENUM_MAX_CANDIDATES_ACCEL


def _score_dtype(cost: Tensor) -> torch.dtype:
    # Scores are compared in float64 so that a float32 cost does not pick a sub-optimal plan on a
    # near tie; MPS has no float64.
    return torch.float32 if cost.device.type == "mps" else torch.float64


def _emd_enumerate(cost: Tensor) -> Tensor:
    B, n, m = cost.shape
    sdt = _score_dtype(cost)
    table = _candidates(n, m, _enum_limit(cost.device), cost.device, sdt)  # (P, n*m)
    scores = cost.detach().reshape(B, n * m).to(sdt) @ table.T  # (B, P)
    best = scores.argmin(dim=1)
    return table[best].to(cost.dtype).reshape(B, n, m)


def _emd_assignment(cost: Tensor) -> Tensor:
    from scipy.optimize import linear_sum_assignment

    B, n, m = cost.shape
    C = _host_cost(cost, "emd")
    plan = np.zeros((B, n, m), dtype=np.float64)
    if n == m:
        cols = np.asarray([linear_sum_assignment(c)[1] for c in C], dtype=np.int64)
        plan[np.arange(B)[:, None], np.arange(n)[None, :], cols] = 1.0 / n
    else:
        L = n * m // math.gcd(n, m)
        rep = np.repeat(np.repeat(C, L // n, axis=1), L // m, axis=2)
        cols = np.asarray([linear_sum_assignment(c)[1] for c in rep], dtype=np.int64)
        row_group = np.arange(L) // (L // n)
        np.add.at(plan, (np.arange(B)[:, None], row_group[None, :], cols // (L // m)), 1.0 / L)
    return torch.from_numpy(plan).to(device=cost.device, dtype=cost.dtype)


def _emd_linprog(cost: Tensor, a: Tensor, b: Tensor, name: str) -> Tensor:
    from scipy.optimize import linprog

    B, n, m = cost.shape
    C = _host_cost(cost, name)
    A = a.detach().to("cpu", torch.float64).numpy()
    Bm = b.detach().to("cpu", torch.float64).numpy()
    # equality constraints: row sums (n) and column sums (m) of the flattened plan
    rows = np.kron(np.eye(n), np.ones((1, m)))
    cols = np.kron(np.ones((1, n)), np.eye(m))
    A_eq = np.vstack([rows, cols])
    plan = np.zeros((B, n, m), dtype=np.float64)
    for k in range(B):
        res = linprog(C[k].ravel(), A_eq=A_eq, b_eq=np.concatenate([A[k], Bm[k]]), bounds=(0, None), method="highs")
        if res.status != 0:
            raise SolverError(
                f"{name}: the exact LP of problem {k} failed ({res.message}); check that the "
                "marginals are feasible, or use cmemd.ot.sinkhorn for an entropic solution"
            )
        plan[k] = np.clip(res.x.reshape(n, m), 0.0, None)
    return torch.from_numpy(plan).to(device=cost.device, dtype=cost.dtype)


def _emd_path(B: int, n: int, m: int, device: torch.device = torch.device("cpu")) -> str:
    """Which exact path a uniform (B, n, m) problem takes: 'enumerate', 'assignment' or 'linprog'."""
    table = _candidates_cpu(n, m, _enum_limit(device))
    if table is not None and B * table.shape[0] <= _ENUM_MAX_SCORES:
        return "enumerate"
    if n * m // math.gcd(n, m) <= _MAX_LCM:
        return "assignment"
    return "linprog"


def emd(cost: Tensor, a: Tensor | None = None, b: Tensor | None = None, *, check_finite: bool = True) -> EMDResult:
    """Exact Earth Mover's Distance of a batch of small problems.

    Args:
        cost: ``(B, n, m)`` or ``(n, m)`` cost matrices (any float dtype, any device); must be finite.
        a: source marginal ``(n,)`` or ``(B, n)``; None means uniform ``1/n``.
        b: target marginal ``(m,)`` or ``(B, m)``; None means uniform ``1/m``.
            ``a`` and ``b`` must have the same total mass.
        check_finite: raise :class:`SolverError` on a non-finite cost [True]. The check reads a value on
            the host (a synchronisation on an accelerator); with False the on-device path skips it and a
            non-finite cost gives a non-finite ``value`` (the paths that copy the cost to the host check
            their copy either way).

    Returns:
        :class:`EMDResult` ``(plan, value)``: ``plan`` detached, same dtype and device as ``cost``;
        ``value = (plan * cost).sum((-2, -1))`` differentiable w.r.t. ``cost`` (its gradient is the
        plan). Unbatched input gives ``plan (n, m)`` and a 0-d ``value``.

    Uniform marginals are solved as (replicated) linear assignments -- by enumerating all
    candidate plans in one batched matrix product on small sizes, else by a loop of
    :func:`scipy.optimize.linear_sum_assignment` (see the module docstring). Non-uniform
    marginals use :func:`scipy.optimize.linprog` per problem (exact, slow).

    Raises:
        SolverError: malformed shapes, non-finite cost, negative or unbalanced marginals, or an LP
            that fails.
    """
    cost, unbatched = _as_batched_cost(cost, "emd", check_finite)
    B, n, m = cost.shape
    wa = _marginal(a, B, n, cost, "emd", "a")
    wb = _marginal(b, B, m, cost, "emd", "b")
    if wa is None and wb is None:
        path = _emd_path(B, n, m, cost.device)
    else:
        path = "linprog"
        wa = torch.full((B, n), 1.0 / n, dtype=cost.dtype, device=cost.device) if wa is None else wa
        wb = torch.full((B, m), 1.0 / m, dtype=cost.dtype, device=cost.device) if wb is None else wb
        sa, sb = wa.sum(1), wb.sum(1)
        if not torch.allclose(sa, sb, rtol=1e-6, atol=1e-12):
            raise SolverError(
                "emd: marginals a and b have different total mass "
                f"(e.g. {float(sa[0]):.6g} vs {float(sb[0]):.6g}); normalise both to sum to 1"
            )
    with torch.no_grad():
        if path == "enumerate":
            plan = _emd_enumerate(cost)
        elif path == "assignment":
            plan = _emd_assignment(cost)
        else:
            wa = torch.full((B, n), 1.0 / n, dtype=cost.dtype, device=cost.device) if wa is None else wa
            wb = torch.full((B, m), 1.0 / m, dtype=cost.dtype, device=cost.device) if wb is None else wb
            plan = _emd_linprog(cost, wa, wb, "emd")
    value = (plan * cost).sum((-2, -1))
    if unbatched:
        return EMDResult(plan[0], value[0])
    return EMDResult(plan, value)


# --------------------------------------------------------------------------------------------
# entropic solver


def sinkhorn(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    eps: float = 0.05,
    max_iter: int = 200,
    tol: float = 1e-6,
    relative_eps: bool = True,
    check_finite: bool = True,
    early_exit: bool | None = None,
) -> EMDResult:
    """Entropic optimal transport (log-domain Sinkhorn), batched, on the tensor's device.

    Solves ``min <T, C> + eps_abs * sum T log T`` s.t. ``T 1 = a``, ``T^T 1 = b`` for each problem.

    Args:
        cost: ``(B, n, m)`` or ``(n, m)`` finite cost.
        a, b: marginals as in :func:`emd` (None = uniform).
        eps: regularisation. With ``relative_eps`` (default) the absolute value per problem is
            ``eps * max_ij |C_ij|`` (so the plan does not depend on the cost's units; an all-zero
            cost uses ``eps``); otherwise ``eps`` is absolute (as POT's ``reg``).
        max_iter: maximum number of (row + column) updates.
        tol: stop when the largest L1 error of the row marginals over the batch is below ``tol``
            (checked every 10 iterations; columns are exact after each update).
        relative_eps: see ``eps``.
        check_finite: raise on a non-finite cost [True]; False skips that host read (see :func:`emd`).
        early_exit: how the ``tol`` test stops the loop. True: the loop ends at the first test that passes
            (each test reads a value on the host: a synchronisation on an accelerator). False: the loop runs
            ``max_iter`` updates and the potentials stop changing on the device from the test that passes on,
            with no host read; both give the same plan, bit for bit. None [default]: True on the CPU (where a
            read costs nothing and the saved iterations do), False on an accelerator.

    Returns:
        :class:`EMDResult` with the detached entropic plan and ``value = <plan, cost>``
        (differentiable in ``cost``; its gradient is the plan).
    """
    if eps <= 0:
        raise SolverError(f"sinkhorn: eps must be > 0, got {eps}; use cmemd.ot.emd for eps = 0")
    cost, unbatched = _as_batched_cost(cost, "sinkhorn", check_finite)
    B, n, m = cost.shape
    wa = _marginal(a, B, n, cost, "sinkhorn", "a")
    wb = _marginal(b, B, m, cost, "sinkhorn", "b")
    with torch.no_grad():
        C = cost.detach()
        if relative_eps:
            scale = C.abs().amax(dim=(-2, -1))
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            e = (eps * scale).view(B, 1, 1)
        else:
            e = torch.full((B, 1, 1), float(eps), dtype=C.dtype, device=C.device)
        log_a = torch.full((B, n), -math.log(n), dtype=C.dtype, device=C.device) if wa is None else wa.log()
        log_b = torch.full((B, m), -math.log(m), dtype=C.dtype, device=C.device) if wb is None else wb.log()
        a_ = log_a.exp()
        K = -C / e  # (B, n, m)
        f = torch.zeros(B, n, dtype=C.dtype, device=C.device)  # potentials divided by eps
        g = torch.zeros(B, m, dtype=C.dtype, device=C.device)
        early = C.device.type == "cpu" if early_exit is None else early_exit
        done = None if early else torch.zeros((), dtype=torch.bool, device=C.device)  # converged (frozen)
        for it in range(max_iter):
            f_new = log_a - torch.logsumexp(K + g[:, None, :], dim=2)
            g_new = log_b - torch.logsumexp(K + f_new[:, :, None], dim=1)
            if done is None:
                f, g = f_new, g_new
            else:
                f, g = torch.where(done, f, f_new), torch.where(done, g, g_new)
            # (no test after the last update: the loop ends there either way)
            if (it + 1) % 10 == 0 and it < max_iter - 1:
                rows = torch.exp(K + f[:, :, None] + g[:, None, :]).sum(2)
                err = (rows - a_).abs().sum(1).max()
                if done is None:
                    if float(err) < tol:
                        break
                else:
                    done = done | (err < tol)
        plan = torch.exp(K + f[:, :, None] + g[:, None, :])
        plan = torch.nan_to_num(plan, nan=0.0)  # rows/cols with zero mass
    value = (plan * cost).sum((-2, -1))
    if unbatched:
        return EMDResult(plan[0], value[0])
    return EMDResult(plan, value)
