"""Every loss stays finite (value and gradient) on adversarial feature batches.

Each loss sees 1,000 seeded random steps drawn from: ordinary features, all rows identical,
identities whose visible and thermal features coincide, collinear rows, all zeros, huge (1e6)
and tiny (1e-6) magnitudes, features rounded through bf16 (what an autocast model hands the
float32 losses), and batches where some identities lack one modality. A quarter of the steps
also run the loss itself under CPU bf16 autocast (the trainer keeps losses in float32, but a
user may not).
"""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from cmemd.engine.objective import Objective
from cmemd.losses import (
    AllPairsLoss,
    CMDLLoss,
    CMEMDLoss,
    HeteroCenterLoss,
    MMDLoss,
    cross_entropy_label_smooth,
    wrt_triplet,
)

STEPS = 1000
KINDS = ("normal", "identical", "same-across-modalities", "collinear", "zeros", "huge", "tiny", "bf16", "normal")


def _labels(rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """pids/modalities for 1-4 identities with 1-3 images per modality; with 1/3 chance some
    identities (never all) have only one modality."""
    P = rng.randint(1, 4)
    pids, mods = [], []
    drop = set(rng.sample(range(P), rng.randint(1, P - 1))) if P > 1 and rng.random() < 1 / 3 else set()
    for p in range(P):
        for m in (0, 1):
            if p in drop and m == (p % 2):
                continue
            k = rng.randint(1, 3)
            pids += [p * 7 + 3] * k  # non-contiguous labels
            mods += [m] * k
    order = list(range(len(pids)))
    rng.shuffle(order)
    return torch.tensor(pids)[order], torch.tensor(mods)[order]


def _feats(rng: random.Random, kind: str, pids: torch.Tensor, mods: torch.Tensor, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    n = len(pids)
    x = torch.randn(n, dim, generator=g)
    if kind == "identical":
        x = x[:1].expand(n, dim).clone()
    elif kind == "same-across-modalities":
        per_id = torch.randn(int(pids.max()) + 1, dim, generator=g)
        x = per_id[pids] + 0.0 * mods[:, None]
    elif kind == "collinear":
        x = torch.randn(n, 1, generator=g) * torch.randn(1, dim, generator=g)
    elif kind == "zeros":
        x = torch.zeros(n, dim)
    elif kind == "huge":
        x = x * 1e6
    elif kind == "tiny":
        x = x * 1e-6
    elif kind == "bf16":
        x = (x * 30).bfloat16().float()
    return x


def _check(value: torch.Tensor, leaves: list[torch.Tensor], what: str) -> None:
    assert value.dim() == 0 and torch.isfinite(value), f"{what}: loss {value}"
    value.backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all(), f"{what}: non-finite gradient"


def _run(name: str, fn, *, granularities: bool = False, steps: int = STEPS) -> None:
    """``fn(feats_list, pids, mods) -> scalar`` on ``steps`` adversarial batches."""
    rng = random.Random(name)
    for step in range(steps):
        kind = KINDS[step % len(KINDS)] if step < len(KINDS) else rng.choice(KINDS)
        pids, mods = _labels(rng)
        dims = [8, 4, 4] if granularities else [8]
        leaves = [_feats(rng, kind, pids, mods, d).requires_grad_(True) for d in dims]
        autocast = step % 4 == 3
        what = f"{name} step {step} ({kind}{', bf16 autocast' if autocast else ''}, pids {pids.tolist()}, mods {mods.tolist()})"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = fn(leaves, pids, mods)
        _check(value.float(), leaves, what)


@pytest.mark.parametrize("cost", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("solver", ["exact", "sinkhorn"])
def test_cmemd_loss_finite(cost, solver):
    loss = CMEMDLoss(cost=cost, solver=solver)
    # the six settings share the 1,000 steps (each its own seeded stream)
    _run(f"CMEMDLoss {cost} {solver}", lambda f, p, m: loss(f, p, m).loss, granularities=True, steps=STEPS // 6 + 1)


@pytest.mark.parametrize("make", [AllPairsLoss, HeteroCenterLoss, MMDLoss], ids=["all-pairs", "hetero-center", "mmd"])
def test_alternative_alignments_finite(make):
    loss = make()
    _run(type(loss).__name__, lambda f, p, m: loss(f, p, m).loss, granularities=True)


@pytest.mark.parametrize("cross", [False, True], ids=["plain", "cross"])
def test_cmdl_finite(cross):
    loss = CMDLLoss(cross=cross)
    _run(f"CMDLLoss cross={cross}", lambda f, p, m: loss(f[0], p, m))


def test_wrt_triplet_finite():
    _run("wrt_triplet", lambda f, p, m: wrt_triplet(f[0], p) + wrt_triplet(f[0], p, normalize=True))


def test_label_smoothed_cross_entropy_finite():
    # logits: the same adversarial batches, read as logits over 8 classes (huge ones included)
    _run("cross_entropy_label_smooth", lambda f, p, m: cross_entropy_label_smooth(f[0], p % 8, 0.1))


def test_objective_on_fake_model_output_finite():
    """The whole objective (CE + local CE + CM-EMD on all granularities + CM-DL + WRT)."""
    objective = Objective(alignment="cmemd", lambda_align=0.5, lambda_dl=0.1, lambda_triplet=0.5, label_smoothing=0.1,
                          dl_on_global=True)
    S, C, D, classes = 2, 8, 4, 8

    def fn(f, pids, mods):
        g, l1, l2 = f
        n = len(pids)
        local = torch.stack([l1, l2], 1)
        out = SimpleNamespace(
            global_feat=g, global_logits=g[:, :classes], local_feats=local,
            local_logits=[l1.repeat(1, 2), l2.repeat(1, 2)], accumulated_feats=local.cumsum(1) / torch.arange(1, S + 1)[:, None],
            accumulated_logits=[l1.repeat(1, 2) * 2, l2.repeat(1, 2) * 0.5], holistic=local.reshape(n, S * D),
        )
        assert g.shape[1] == C
        total, terms = objective(out, pids % classes, mods)
        assert set(terms) >= {"loss", "ce_global", "ce_local", "align", "cmdl", "triplet"}
        return total

    _run("Objective", fn, granularities=True, steps=STEPS // 2)
