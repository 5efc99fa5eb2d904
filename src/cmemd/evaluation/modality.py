"""Is the modality gap closing? Measures computed from features and labels only (never a model).

* :func:`feature_health`: mean L2 norm, dead units and zero entries of a feature batch -- an alignment
  cost that can be lowered by shrinking features shows up here first.
* :func:`modality_gap`: how far apart an identity's visible and thermal features sit, against how spread
  each modality is (:attr:`ModalityGap.centre_ratio`); whether a linear probe can still tell the
  modalities apart (:attr:`ModalityGap.probe_accuracy`, 0.5 = indistinguishable); and Rank-1 within
  and across modalities (v->v, t->t, t->v).
* :func:`plan_purity`: does the optimal transport plan put its mass on the visible-thermal pairs with
  small intra-identity variation? Needs each image's nuisance (the synthetic generator writes it:
  :func:`cmemd.data.synth.read_nuisance`); compares the plan-weighted share of same-view pairs and
  the plan-weighted nuisance differences with those of the uniform (all-pairs) coupling.

All measures work on L2-normalised features unless told otherwise, so they cannot be moved by a
global rescaling of the features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from cmemd import ot
from cmemd.errors import EvaluationError
from cmemd.numerics import l2_normalize, l2_normalize_np

__all__ = [
    "DEAD_BELOW",
    "FeatureHealth",
    "feature_health",
    "feature_health_tensors",
    "ModalityGap",
    "modality_gap",
    "feature_sets_gap",
    "PlanPurity",
    "plan_purity",
    "sample_identity_groups",
]

#: An entry at or below this magnitude counts as dead: ReLU outputs are exactly 0, and GeM pooling of an
#: all-zero map returns its clamp floor (1e-6).
DEAD_BELOW = 1e-5


class FeatureHealth(NamedTuple):
    """``norm``: mean L2 norm of the rows. ``dead_units``: share of units (columns) at or below
    :data:`DEAD_BELOW` for every row -- units that carry nothing. ``zero_entries``: share of all entries at
    or below it (BN + ReLU features sit near 50% by construction; far above that, the features are
    collapsing)."""

    norm: float
    dead_units: float
    zero_entries: float


def feature_health(
    feats: Tensor | np.ndarray, dead_below: float = DEAD_BELOW, *, shared_units: bool = False
) -> FeatureHealth:
    """:class:`FeatureHealth` of ``(N, ...)`` features: rows are the first dimension, the rest are units
    (a ``(N, S, D)`` stack of stripe features has ``S * D`` units, one set per stripe's own layer).

    ``shared_units``: for a ``(N, S, D)`` stack made by ONE layer applied to S inputs (the prefix reduction of
    the accumulated features), a unit is dead only when it is zero for every row and every one of the S
    inputs -- a unit silent for one prefix but active for another is specialised, not dead. The norm is the
    mean norm of the ``(N, S*D)`` rows either way.
    """
    norm, dead, zero = feature_health_tensors(feats, dead_below, shared_units=shared_units)
    return FeatureHealth(float(norm), float(dead), float(zero))


def feature_health_tensors(
    feats: Tensor | np.ndarray, dead_below: float = DEAD_BELOW, *, shared_units: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`feature_health`'s three values as 0-d tensors on the features' device, read by nobody yet (the
    trainer logs them without waiting for the device each step)."""
    x = torch.as_tensor(feats).detach().float()
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise EvaluationError(f"feature_health: need a non-empty (N, D) feature tensor, got shape {tuple(x.shape)}")
    zero = x.abs() <= dead_below
    if shared_units and x.dim() == 3:
        dead = zero.all(1).all(0).float().mean()
    else:
        dead = zero.reshape(x.shape[0], -1).all(0).float().mean()
    return x.reshape(x.shape[0], -1).norm(dim=1).mean(), dead, zero.float().mean()


# ----------------------------------------------------------------------------- modality gap


@dataclass
class ModalityGap:
    """Modality-gap measures of one feature set (see :func:`modality_gap`).

    ``centre_ratio`` = ``centre_distance / spread`` (0: the two modalities of an identity share a centre;
    well above 1: the modality gap dominates the within-modality variation). ``centre_distance``: root of
    the mean over identities of ||centre_v - centre_t||^2, each corrected for its finite-sample bias
    (``- var_v/n_v - var_t/n_t``; clipped at 0 only after the mean). ``spread``: root of the mean
    within-modality variance (squared distance to the own-modality centre, ``ddof=1``). Identities need
    at least two images in each modality. So a set whose modalities share one distribution scores about 0
    whatever the number of images. ``probe_accuracy``: balanced accuracy of a
    linear modality probe on held-out identities (0.5 = modalities indistinguishable, 1 = separable).
    ``r1_v2v``, ``r1_t2t``, ``r1_t2v``: Rank-1 within and across modalities (fractions; cross-camera
    within a modality when cameras are given). ``num_ids``: identities with both modalities.
    ``mixing``: how far each identity's two modalities are intermixed, the question a t-SNE plot answers
    by eye. Within each identity, the share of images whose nearest other image of that identity is of the
    other modality, divided by the share a random modality labelling would give (``n_other / (n - 1)``
    per image); averaged over identities. 0: each identity's modalities form two clusters; about 1: mixed
    as if the labels were random (above 1: each image's nearest is its counterpart of the other modality).
    ``overlap_share``: the share of identities whose own ``mixing`` is at least 0.5.
    """

    centre_ratio: float
    centre_distance: float
    spread: float
    probe_accuracy: float
    r1_v2v: float
    r1_t2t: float
    r1_t2v: float
    num_ids: int
    num_images: int
    mixing: float = float("nan")
    overlap_share: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}

    def format(self) -> str:
        def pct(x: float) -> str:
            return "-" if np.isnan(x) else f"{100 * x:.1f}"

        return (
            f"modality gap ({self.num_ids} ids, {self.num_images} images, L2-normalised features): "
            f"centre ratio {self.centre_ratio:.2f} (0 = modalities share a centre), "
            f"modality probe {pct(self.probe_accuracy)}% (50 = indistinguishable), "
            f"Rank-1 v->v {pct(self.r1_v2v)} / t->t {pct(self.r1_t2t)} / t->v {pct(self.r1_t2v)}, "
            f"within-identity mixing {self.mixing:.2f} (1 = as if random; "
            f"{pct(self.overlap_share)}% of ids at 0.5 or more)"
        )


def _as_array(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if n is not None and (a.ndim != 1 or a.shape[0] != n):
        raise EvaluationError(f"modality_gap: {name} must have one entry per feature row ({n}), got shape {a.shape}")
    return a


def _normalise(f: np.ndarray) -> np.ndarray:
    return l2_normalize_np(f, axis=1)  # scale-safe (features of 1e20 or 1e-20 are the same directions)


def _identity_mixing(v: np.ndarray, t: np.ndarray) -> float:
    """One identity's visible ``v`` and thermal ``t`` features: the share of its images whose nearest other image
    of the identity (Euclidean) is of the other modality, over the mean share a random modality labelling gives
    (``n_other / (n - 1)`` per image, ``2 n_v n_t / (n (n - 1))`` on average)."""
    x = np.concatenate([v, t])
    mods = np.repeat([0, 1], [len(v), len(t)])
    n = len(x)
    sq = np.sum(x * x, axis=1)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T  # n x n, never n x n x D (real sets: hundreds of images an id)
    np.fill_diagonal(d, np.inf)
    cross = mods[np.argmin(d, axis=1)] != mods
    return float(cross.mean() / (2 * len(v) * len(t) / (n * (n - 1))))


def _rank1(sim: np.ndarray, qp: np.ndarray, gp: np.ndarray, invalid: np.ndarray) -> float:
    """Rank-1 over queries with at least one valid true match; ``invalid`` marks excluded gallery entries."""
    s = np.where(invalid, -np.inf, sim)
    has_match = ((gp[None, :] == qp[:, None]) & ~invalid).any(1)
    if not has_match.any():
        return float("nan")
    top = np.argmax(s[has_match], axis=1)
    return float(np.mean(gp[top] == qp[has_match]))


def _fit_logistic(x: Tensor, y: Tensor, l2: float) -> Tensor:
    """Class-balanced, L2-regularised logistic regression (weights + bias) by L-BFGS, float64, deterministic."""
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    pos = y.mean().clamp(1e-6, 1 - 1e-6)
    weight = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = x @ w[:-1] + w[-1]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).mean()
        loss = loss + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _probe_accuracy(f: np.ndarray, pids: np.ndarray, mods: np.ndarray, l2: float = 1e-4) -> float:
    """Balanced accuracy of a linear (logistic) modality probe, 2-fold over identities: trained on the
    images of half the identities, tested on the others'."""
    ids = np.unique(pids)
    if len(ids) < 2:
        return float("nan")
    folds = np.array_split(np.random.default_rng(0).permutation(ids), 2)
    accs = []
    for k in range(2):
        test = np.isin(pids, folds[k])
        train = ~test
        if len(np.unique(mods[train])) < 2 or len(np.unique(mods[test])) < 2:
            continue
        mu, sd = f[train].mean(0), f[train].std(0) + 1e-8
        xtr = torch.from_numpy((f[train] - mu) / sd)
        w = _fit_logistic(xtr, torch.from_numpy(mods[train].astype(np.float64)), l2)
        pred = ((f[test] - mu) / sd) @ w[:-1].numpy() + float(w[-1]) > 0
        truth = mods[test] == 1
        accs.append((np.mean(pred[truth]) + np.mean(~pred[~truth])) / 2)
    return float(np.mean(accs)) if accs else float("nan")


def modality_gap(
    feats: Tensor | np.ndarray,
    pids: Sequence[int] | np.ndarray,
    modalities: Sequence[int] | np.ndarray,
    cams: Sequence[int] | np.ndarray | None = None,
    *,
    normalize: bool = True,
) -> ModalityGap:
    """Modality-gap measures of ``(N, D)`` features with identity labels and modalities (0 visible, 1 thermal).

    Rank-1 uses cosine similarity, never matches an image with itself, and (when ``cams`` is given)
    never with an image of the same identity from the same camera, so v->v and t->t are cross-camera
    where a modality has several cameras. These are diagnostics, not the benchmark's protocol numbers.
    """
    f = _as_array(feats, "feats").astype(np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise EvaluationError(f"modality_gap: feats must be a non-empty (N, D) array, got shape {f.shape}")
    n = f.shape[0]
    p = _as_array(pids, "pids", n).astype(np.int64)
    m = _as_array(modalities, "modalities", n).astype(np.int64)
    if not np.isin(m, (0, 1)).all():
        raise EvaluationError("modality_gap: modalities must be 0 (visible) or 1 (thermal)")
    c = _as_array(cams, "cams", n).astype(np.int64) if cams is not None else np.zeros(n, np.int64)
    if normalize:
        f = _normalise(f)
    dists, spreads, mix, both = [], [], [], []
    for pid in np.unique(p):
        v, t = f[(p == pid) & (m == 0)], f[(p == pid) & (m == 1)]
        if len(v) < 2 or len(t) < 2:
            continue
        both.append(pid)
        cv, ct = v.mean(0), t.mean(0)
        # unbiased: the squared distance of two sample means exceeds that of the true centres by var/n each
        var_v = np.sum((v - cv) ** 2) / (len(v) - 1)
        var_t = np.sum((t - ct) ** 2) / (len(t) - 1)
        # kept unclipped and squared: the noise of one identity's estimate averages out over identities
        dists.append(np.sum((cv - ct) ** 2) - var_v / len(v) - var_t / len(t))
        spreads.append((var_v + var_t) / 2)
        mix.append(_identity_mixing(v, t))
    keep = np.isin(p, both)
    sim = f @ f.T
    same_cam = (p[:, None] == p[None, :]) & (c[:, None] == c[None, :])
    invalid = same_cam | np.eye(n, dtype=bool)
    r1 = {}
    for name, qm, gm in (("v2v", 0, 0), ("t2t", 1, 1), ("t2v", 1, 0)):
        q, g = np.flatnonzero(m == qm), np.flatnonzero(m == gm)
        r1[name] = _rank1(sim[np.ix_(q, g)], p[q], p[g], invalid[np.ix_(q, g)]) if len(q) and len(g) else float("nan")
    nan = float("nan")
    mix_arr = np.array(mix)
    dist = float(np.sqrt(max(np.mean(dists), 0.0))) if dists else nan
    spread = float(np.sqrt(np.mean(spreads))) if spreads else nan
    return ModalityGap(
        centre_ratio=dist / max(spread, 1e-12) if dists else nan,
        centre_distance=dist,
        spread=spread,
        probe_accuracy=_probe_accuracy(f[keep], p[keep], m[keep]) if keep.any() else nan,
        r1_v2v=r1["v2v"],
        r1_t2t=r1["t2t"],
        r1_t2v=r1["t2v"],
        num_ids=len(both),
        num_images=n,
        mixing=float(mix_arr.mean()) if len(mix_arr) else nan,
        overlap_share=float(np.mean(mix_arr >= 0.5)) if len(mix_arr) else nan,
    )


def feature_sets_gap(query: Any, gallery: Any, query_modality: str, gallery_modality: str) -> ModalityGap:
    """:func:`modality_gap` of a query and a gallery :class:`~cmemd.evaluation.features.FeatureSet` taken
    together, each of one modality (``"visible"`` or ``"thermal"``)."""
    codes = {"visible": 0, "thermal": 1}
    for name, m in (("query_modality", query_modality), ("gallery_modality", gallery_modality)):
        if m not in codes:
            raise EvaluationError(f"feature_sets_gap: {name} must be 'visible' or 'thermal', got {m!r}")
    mods = np.concatenate(
        [np.full(len(query.pids), codes[query_modality]), np.full(len(gallery.pids), codes[gallery_modality])]
    )
    return modality_gap(
        np.concatenate([query.feats, gallery.feats]),
        np.concatenate([query.pids, gallery.pids]),
        mods,
        np.concatenate([query.cams, gallery.cams]),
    )


# ----------------------------------------------------------------------------- plan purity


def sample_identity_groups(
    pids: Sequence[int] | np.ndarray, modalities: Sequence[int] | np.ndarray, k: int, draws: int = 1, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``draws`` rounds of, for every identity with both modalities, ``k`` visible and ``k`` thermal row
    indices (without replacement where an identity has enough images, as the identity sampler draws)."""
    p, m = np.asarray(pids), np.asarray(modalities)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        for pid in np.unique(p):
            v, t = np.flatnonzero((p == pid) & (m == 0)), np.flatnonzero((p == pid) & (m == 1))
            if len(v) and len(t):
                out.append((rng.choice(v, k, replace=len(v) < k), rng.choice(t, k, replace=len(t) < k)))
    return out


@dataclass
class PlanPurity:
    """How the optimal plan weighs visible-thermal pairs of one identity, against the uniform coupling.

    ``same_view_plan`` / ``same_view_uniform``: mass on same-view pairs under the plan / under the
    all-pairs coupling, averaged over the identity groups where both views occur mixed (the others
    carry no information); ``ratio`` = plan / uniform (1 = no preference, the paper's claim is > 1).
    ``same_view_max``: the most same-view mass any plan with the same marginals can put there (the plan of a
    cost that sees only the view), over the same groups: the ceiling ``same_view_plan`` is measured against;
    ``max_ratio`` = max / uniform.
    ``nuisance_plan`` / ``nuisance_uniform``: mean absolute difference of each numeric nuisance
    (phase difference on the circle, in units of pi) between paired images, plan-weighted and uniform.
    """

    same_view_plan: float
    same_view_uniform: float
    ratio: float
    nuisance_plan: dict[str, float]
    nuisance_uniform: dict[str, float]
    num_groups: int
    num_informative: int
    same_view_max: float = float("nan")

    @property
    def max_ratio(self) -> float:
        return self.same_view_max / self.same_view_uniform

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        nz = ", ".join(f"{k} {self.nuisance_plan[k]:.3f} vs {self.nuisance_uniform[k]:.3f}" for k in self.nuisance_plan)
        return (
            f"plan purity: same-view mass {100 * self.same_view_plan:.1f}% vs uniform "
            f"{100 * self.same_view_uniform:.1f}% (x{self.ratio:.2f}; a plan that sees only the view reaches "
            f"{100 * self.same_view_max:.1f}%, x{self.max_ratio:.2f}; {self.num_informative} of {self.num_groups} "
            f"groups mixed); nuisance difference plan vs uniform: {nz}"
        )


def _pair_difference(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a[:, None] - b[None, :])
    if name == "phase":  # walking phase lives on a circle
        d = np.minimum(d % (2 * np.pi), 2 * np.pi - d % (2 * np.pi)) / np.pi
    return d


def plan_purity(
    feats: Tensor,
    groups: Sequence[tuple[np.ndarray, np.ndarray]],
    views: Sequence[Any] | np.ndarray,
    nuisance: Mapping[str, np.ndarray] | None = None,
    cost: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> PlanPurity:
    """Plan purity of the exact optimal plans of ``groups`` (see :func:`sample_identity_groups`).

    Args:
        feats: ``(N, D)`` features the plan is computed on (the ones the alignment loss sees).
        groups: per identity group, visible and thermal row indices (equal counts within a call's groups
            of one shape; shapes may differ between groups).
        views: ``(N,)`` each image's view (any comparable labels).
        nuisance: optional ``{name: (N,) numeric}`` nuisances to compare (e.g. ``phase``, ``scale``).
        cost: ``cost(v (n, Kv, D), t (n, Kt, D)) -> (n, Kv, Kt)``; default ``1 - cos``.
    """
    if not groups:
        raise EvaluationError("plan_purity: no identity groups (need identities with both modalities)")
    f = torch.as_tensor(feats).detach().float()
    views = np.asarray(views)
    if len(views) != f.shape[0]:
        raise EvaluationError(f"plan_purity: views has {len(views)} entries for {f.shape[0]} feature rows")
    nuisance = {k: np.asarray(v, dtype=np.float64) for k, v in (nuisance or {}).items()}
    if cost is None:

        def cost(v: Tensor, t: Tensor) -> Tensor:
            return 1.0 - l2_normalize(v, dim=-1) @ l2_normalize(t, dim=-1).transpose(-1, -2)

    by_shape: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    for iv, it in groups:
        by_shape.setdefault((len(iv), len(it)), []).append((np.asarray(iv), np.asarray(it)))
    sv_plan, sv_uni, sv_max = [], [], []
    nz_plan: dict[str, list[float]] = {k: [] for k in nuisance}
    nz_uni: dict[str, list[float]] = {k: [] for k in nuisance}
    total = 0
    for shape_groups in by_shape.values():
        iv = np.stack([g[0] for g in shape_groups])
        it = np.stack([g[1] for g in shape_groups])
        plans = ot.emd(cost(f[torch.as_tensor(iv)], f[torch.as_tensor(it)])).plan.double().cpu().numpy()
        same_all = (views[iv][:, :, None] == views[it][:, None, :]).astype(np.float64)
        # the ceiling: the exact plan of the cost "different view", i.e. the most same-view mass the marginals allow
        best = ot.emd(torch.from_numpy(1.0 - same_all)).plan.numpy()
        for g in range(len(iv)):
            total += 1
            T = plans[g] / plans[g].sum()
            same = same_all[g]
            if 0 < same.mean() < 1:
                sv_plan.append(float((T * same).sum()))
                sv_uni.append(float(same.mean()))
                sv_max.append(float((best[g] / best[g].sum() * same).sum()))
            for k, a in nuisance.items():
                d = _pair_difference(k, a[iv[g]], a[it[g]])
                nz_plan[k].append(float((T * d).sum()))
                nz_uni[k].append(float(d.mean()))
    p_, u_ = (float(np.mean(sv_plan)), float(np.mean(sv_uni))) if sv_plan else (float("nan"), float("nan"))
    return PlanPurity(
        same_view_plan=p_,
        same_view_uniform=u_,
        ratio=p_ / u_ if sv_plan else float("nan"),
        nuisance_plan={k: float(np.mean(v)) for k, v in nz_plan.items()},
        nuisance_uniform={k: float(np.mean(v)) for k, v in nz_uni.items()},
        num_groups=total,
        num_informative=len(sv_plan),
        same_view_max=float(np.mean(sv_max)) if sv_max else float("nan"),
    )
