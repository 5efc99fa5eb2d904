"""Cross-modality alignment losses: CM-EMD and the alternatives it is compared with.

All of them take ``(feats, pids, modalities)`` (and an optional ``layout``, below):

* ``feats``: one ``(N, D)`` tensor, or a sequence of them -- one per granularity (global, each
  local stripe, each accumulated stripe); the feature width may differ between granularities.
* ``pids``: ``(N,)`` identity labels.
* ``modalities``: ``(N,)`` with 0 = visible, 1 = thermal.

and return an :class:`AlignmentOutput` ``(loss, per_granularity, num_identities, num_skipped)``:
``per_granularity[g]`` is the mean over identities of granularity ``g``, ``loss`` the mean over
granularities (the global feature weighs as one granularity). Identities present in only one
modality cannot be aligned; they are left out and counted in ``num_skipped`` (never silently).

Every loss L2-normalises the features before its cost by default (``normalize=True``): on raw features
an alignment cost can be lowered by shrinking the features, which the BN-neck hides from the identity
loss (docs/method.md). ``normalize=False`` gives the raw-feature losses.

Per-identity losses (CM-EMD, all-pairs, hetero-centre) group identities by their
``(K_v, K_t)`` shape, so every group (and all granularities of it) is ONE batched solver call.

Every loss also takes an optional ``layout`` (:class:`cmemd.layout.BatchLayout`, the batch's grouping
computed on the host by the collate function, its tensors on the features' device): with it the
per-identity losses make no host-device synchronisation -- no grouping from the label tensors and
no finite check of the OT costs (a non-finite feature then gives a non-finite loss, which the
trainer stops on before backward). Without it they compute the same grouping from the tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmemd import ot
from cmemd.errors import ConfigError, TrainingError
from cmemd.layout import BatchLayout, group_labels
from cmemd.losses.triplet import _safe_sqrt

__all__ = [
    "AlignmentOutput",
    "CMEMDOutput",
    "COSTS",
    "cross_cost",
    "group_identities",
    "cmemd_loss",
    "all_pairs_loss",
    "hetero_center_loss",
    "mmd_loss",
    "CMEMDLoss",
    "AllPairsLoss",
    "HeteroCenterLoss",
    "MMDLoss",
    "NoAlignment",
    "AlignmentOptions",
    "make_alignment_loss",
]

Feats = Tensor | Sequence[Tensor]
COSTS = ("euclidean", "sqeuclidean", "cosine")
SOLVERS = ("exact", "sinkhorn")


class AlignmentOutput(NamedTuple):
    """Result of an alignment loss.

    ``loss``: scalar to back-propagate. ``per_granularity``: ``(G,)`` values (with gradient; detach
    for logging). ``num_identities``: identities aligned. ``num_skipped``: identities in the batch
    that had only one modality.
    """

    loss: Tensor
    per_granularity: Tensor
    num_identities: int
    num_skipped: int


CMEMDOutput = AlignmentOutput


# --------------------------------------------------------------------------------------------
# shared pieces


def cross_cost(v: Tensor, t: Tensor, cost: str = "euclidean", normalize: bool = False) -> Tensor:
    """Cost matrices between visible ``v (..., K_v, D)`` and thermal ``t (..., K_t, D)`` features.

    ``euclidean``: ``||v - t||`` (exactly 0 with zero, finite gradient for identical features);
    ``sqeuclidean``: ``||v - t||^2``; ``cosine``: ``1 - cos(v, t)``. ``normalize`` L2-normalises
    the features first. Differences are formed explicitly (no ``|v|^2 + |t|^2 - 2 v.t``), which
    stays accurate for large feature magnitudes. Returns ``(..., K_v, K_t)``.
    """
    if cost not in COSTS:
        raise ConfigError(f"cross_cost: unknown cost {cost!r}; choose one of {COSTS}")
    if normalize or cost == "cosine":
        v = F.normalize(v, dim=-1)
        t = F.normalize(t, dim=-1)
    if cost == "cosine":
        return 1.0 - v @ t.transpose(-1, -2)
    d2 = (v.unsqueeze(-2) - t.unsqueeze(-3)).pow(2).sum(-1)
    if cost == "sqeuclidean":
        return d2
    return _safe_sqrt(d2)


def _as_list(feats: Feats, name: str) -> list[Tensor]:
    fl = [feats] if isinstance(feats, Tensor) else list(feats)
    if not fl:
        raise TrainingError(f"{name}: feats is an empty sequence; pass at least one (N, D) tensor")
    N = fl[0].shape[0] if fl[0].dim() == 2 else None
    for g, f in enumerate(fl):
        if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[0] != N:
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise TrainingError(f"{name}: feats[{g}] must be a (N, D) tensor with the same N as feats[0], got {shape}")
    return fl


def group_identities(
    pids: Tensor, modalities: Tensor, name: str = "alignment loss"
) -> tuple[list[tuple[Tensor, Tensor]], int, int]:
    """Group the batch's identities by ``(K_v, K_t)``.

    Returns ``(groups, num_identities, num_skipped)`` where each group is a pair of index tensors
    ``(idx_v (n_g, K_v), idx_t (n_g, K_t))`` on ``pids``' device, identities in order of first
    appearance; identities missing a modality are counted in ``num_skipped``.
    """
    if pids.dim() != 1 or modalities.shape != pids.shape:
        raise TrainingError(
            f"{name}: pids and modalities must both be (N,), got {tuple(pids.shape)} and {tuple(modalities.shape)}"
        )
    by_shape, n_id, skipped = group_labels(pids.tolist(), modalities.tolist(), name)
    dev = pids.device
    groups = [
        (torch.tensor(bv, dtype=torch.long, device=dev), torch.tensor(bt, dtype=torch.long, device=dev))
        for bv, bt in by_shape
    ]
    return groups, n_id, skipped


def _grouping(
    pids: Tensor, modalities: Tensor, layout: BatchLayout | None, device: torch.device, name: str
) -> tuple[Sequence[tuple[Tensor, Tensor]], int, int]:
    """The identity groups from the layout when there is one (no synchronisation), else from the labels."""
    if layout is not None:
        layout.check(pids.shape[0], name)
        return layout.groups, layout.num_identities, layout.num_skipped
    return group_identities(_on(pids, device), _on(modalities, device), name)


def _on(t: Tensor, device: torch.device) -> Tensor:
    return t if t.device == device else t.to(device)


def _per_identity(
    feats: Feats,
    pids: Tensor,
    modalities: Tensor,
    group_values: Callable[[list[Tensor], list[Tensor]], Tensor],
    name: str,
    layout: BatchLayout | None = None,
) -> AlignmentOutput:
    """Mean over identities per granularity, mean over granularities.

    ``group_values(vis, th)`` receives per granularity ``(n_g, K_v, D_g)`` / ``(n_g, K_t, D_g)``
    tensors of one shape group and returns the ``(G, n_g)`` per-identity losses.
    """
    fl = _as_list(feats, name)
    if pids.shape[0] != fl[0].shape[0]:
        raise TrainingError(f"{name}: feats have N = {fl[0].shape[0]} rows but pids has {pids.shape[0]}")
    groups, n_id, n_skip = _grouping(pids, modalities, layout, fl[0].device, name)
    if n_id == 0:
        # nothing to align: a zero that keeps the graph connected, so backward() still works
        zero = torch.stack([f.sum() * 0.0 for f in fl])
        return AlignmentOutput(zero.mean(), zero, 0, n_skip)
    total: Tensor | None = None
    for iv, it in groups:
        vals = group_values([f[iv] for f in fl], [f[it] for f in fl]).sum(1)  # (G,)
        total = vals if total is None else total + vals
    assert total is not None  # n_id > 0: at least one group
    per_g = total / n_id
    return AlignmentOutput(per_g.mean(), per_g, n_id, n_skip)


def _check_cost(cost: str, name: str) -> None:
    if cost not in COSTS:
        raise ConfigError(f"{name}: unknown cost {cost!r}; choose one of {COSTS}")


# --------------------------------------------------------------------------------------------
# CM-EMD


def cmemd_loss(
    feats: Feats,
    pids: Tensor,
    modalities: Tensor,
    cost: str = "euclidean",
    normalize: bool = True,
    solver: str = "exact",
    eps: float = 0.05,
    sinkhorn_iters: int = 200,
    layout: BatchLayout | None = None,
) -> AlignmentOutput:
    """Cross-Modality Earth Mover's Distance loss.

    For each identity ``y`` with visible features ``V (K_v)`` and thermal ``T (K_t)``:
    ``C_ij = cost(v_i, t_j)``, ``T* = argmin <T, C>`` over couplings with uniform marginals
    ``1/K_v, 1/K_t``, loss ``= sum_ij T*_ij C_ij`` with ``T*`` held constant (for the exact solver
    this is the EMD and its gradient, by the envelope theorem).

    Args:
        feats, pids, modalities: see the module docstring.
        cost: ``euclidean`` (default), ``sqeuclidean`` or ``cosine``.
        normalize: L2-normalise the features before the cost [True: scale-safe].
        solver: ``exact`` (:func:`cmemd.ot.emd`) or ``sinkhorn`` (:func:`cmemd.ot.sinkhorn`,
            ``eps`` relative to each problem's largest cost).
        eps, sinkhorn_iters: Sinkhorn settings (ignored by ``exact``).
        layout: the batch's grouping computed on the host (see the module docstring).
    """
    _check_cost(cost, "cmemd_loss")
    if solver not in SOLVERS:
        raise ConfigError(f"cmemd_loss: unknown solver {solver!r}; choose one of {SOLVERS}")

    def values(vis: list[Tensor], th: list[Tensor]) -> Tensor:
        G, n_g = len(vis), vis[0].shape[0]
        # all granularities of the group in one batched call
        C = torch.cat([cross_cost(v, t, cost, normalize) for v, t in zip(vis, th)])
        if solver == "exact":
            res = ot.emd(C, check_finite=check)
        else:
            res = ot.sinkhorn(C, eps=eps, max_iter=sinkhorn_iters, check_finite=check)
        return res.value.view(G, n_g)

    check = layout is None
    return _per_identity(feats, pids, modalities, values, "cmemd_loss", layout)


# --------------------------------------------------------------------------------------------
# the alternatives: all-pairs, hetero-centre, MMD


def all_pairs_loss(
    feats: Feats,
    pids: Tensor,
    modalities: Tensor,
    cost: str = "euclidean",
    normalize: bool = True,
    layout: BatchLayout | None = None,
) -> AlignmentOutput:
    """Mean cost over ALL cross-modality pairs of an identity (the independent coupling
    ``1/(K_v K_t)``; what the optimal plan avoids). Always >= the CM-EMD with the same cost."""
    _check_cost(cost, "all_pairs_loss")

    def values(vis: list[Tensor], th: list[Tensor]) -> Tensor:
        return torch.stack([cross_cost(v, t, cost, normalize).mean((-2, -1)) for v, t in zip(vis, th)])

    return _per_identity(feats, pids, modalities, values, "all_pairs_loss", layout)


def hetero_center_loss(
    feats: Feats,
    pids: Tensor,
    modalities: Tensor,
    cost: str = "euclidean",
    normalize: bool = True,
    layout: BatchLayout | None = None,
) -> AlignmentOutput:
    """Hetero-centre alignment (Zhu et al. 2020): cost between an identity's visible centre and its
    thermal centre (Euclidean by default), mean over identities. ``normalize`` normalises the
    features (not the centres)."""
    _check_cost(cost, "hetero_center_loss")

    def values(vis: list[Tensor], th: list[Tensor]) -> Tensor:
        out = []
        for v, t in zip(vis, th):
            if normalize:
                v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
            out.append(cross_cost(v.mean(1, keepdim=True), t.mean(1, keepdim=True), cost)[:, 0, 0])
        return torch.stack(out)

    return _per_identity(feats, pids, modalities, values, "hetero_center_loss", layout)


def mmd_loss(
    feats: Feats,
    pids: Tensor,
    modalities: Tensor,
    bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    normalize: bool = True,
    layout: BatchLayout | None = None,
) -> AlignmentOutput:
    """Squared MMD between ALL visible and ALL thermal features of the batch (identity-agnostic).

    Kernel: mean over ``b`` in ``bandwidths`` of ``exp(-||x - y||^2 / (b * s))``, with ``s`` the
    median of the pairwise squared distances of the pooled batch (median heuristic, detached;
    floored at 1e-12). Biased (V-statistic) estimator ``mean K_vv + mean K_tt - 2 mean K_vt``:
    non-negative and exactly 0 for identical sets. The squared MMD is returned (its square root
    has an infinite gradient at 0). ``num_identities`` / ``num_skipped`` are reported as for the
    per-identity losses, for logging; the loss uses every sample. ``layout`` saves the grouping's
    synchronisations (the masked means still select on the device's data).
    """
    fl = _as_list(feats, "mmd_loss")
    if not bandwidths or any(b <= 0 for b in bandwidths):
        raise ConfigError(f"mmd_loss: bandwidths must be positive numbers, got {tuple(bandwidths)}")
    _, n_id, n_skip = _grouping(pids, modalities, layout, pids.device, "mmd_loss")
    vis = _on(modalities, fl[0].device) == 0
    one_modality = min(layout.modality_counts) == 0 if layout is not None else bool(vis.all()) or not bool(vis.any())
    if one_modality:
        zero = torch.stack([f.sum() * 0.0 for f in fl])
        return AlignmentOutput(zero.mean(), zero, n_id, n_skip)
    per_g = []
    for f in fl:
        if normalize:
            f = F.normalize(f, dim=1)
        d2 = (f[:, None, :] - f[None, :, :]).pow(2).sum(-1)
        N = f.shape[0]
        off = d2.detach()[~torch.eye(N, dtype=torch.bool, device=f.device)]
        s = off.median().clamp_min(1e-12) if off.numel() else d2.new_tensor(1.0)
        k = sum((torch.exp(-d2 / (b * s)) for b in bandwidths), d2.new_zeros(())) / len(bandwidths)
        vv, tt = vis[:, None] & vis[None, :], ~vis[:, None] & ~vis[None, :]
        vt = vis[:, None] & ~vis[None, :]
        mmd2 = k[vv].mean() + k[tt].mean() - 2.0 * k[vt].mean()
        per_g.append(mmd2.clamp_min(0.0))
    per = torch.stack(per_g)
    return AlignmentOutput(per.mean(), per, n_id, n_skip)


# --------------------------------------------------------------------------------------------
# modules and factory


class CMEMDLoss(nn.Module):
    """Module form of :func:`cmemd_loss`; ``forward(feats, pids, modalities, layout=None) -> AlignmentOutput``."""

    #: The :class:`AlignmentOptions` fields this loss reads (constructor arguments of the same names).
    OPTIONS: ClassVar[tuple[str, ...]] = ("cost", "normalize", "solver", "eps", "sinkhorn_iters")
    #: Whether the loss reads the features at all (:class:`NoAlignment` does not: an objective skips it).
    aligns: ClassVar[bool] = True

    def __init__(
        self,
        cost: str = "euclidean",
        normalize: bool = True,
        solver: str = "exact",
        eps: float = 0.05,
        sinkhorn_iters: int = 200,
    ) -> None:
        super().__init__()
        _check_cost(cost, "CMEMDLoss")
        if solver not in SOLVERS:
            raise ConfigError(f"CMEMDLoss: unknown solver {solver!r}; choose one of {SOLVERS}")
        self.cost, self.normalize, self.solver = cost, normalize, solver
        self.eps, self.sinkhorn_iters = eps, sinkhorn_iters

    def forward(
        self, feats: Feats, pids: Tensor, modalities: Tensor, layout: BatchLayout | None = None
    ) -> AlignmentOutput:
        return cmemd_loss(
            feats, pids, modalities, self.cost, self.normalize, self.solver, self.eps, self.sinkhorn_iters, layout
        )

    def extra_repr(self) -> str:
        return f"cost={self.cost}, normalize={self.normalize}, solver={self.solver}"


class AllPairsLoss(nn.Module):
    """Module form of :func:`all_pairs_loss`."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("cost", "normalize")
    aligns: ClassVar[bool] = True

    def __init__(self, cost: str = "euclidean", normalize: bool = True) -> None:
        super().__init__()
        _check_cost(cost, "AllPairsLoss")
        self.cost, self.normalize = cost, normalize

    def forward(
        self, feats: Feats, pids: Tensor, modalities: Tensor, layout: BatchLayout | None = None
    ) -> AlignmentOutput:
        return all_pairs_loss(feats, pids, modalities, self.cost, self.normalize, layout)


class HeteroCenterLoss(nn.Module):
    """Module form of :func:`hetero_center_loss`."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("cost", "normalize")
    aligns: ClassVar[bool] = True

    def __init__(self, cost: str = "euclidean", normalize: bool = True) -> None:
        super().__init__()
        _check_cost(cost, "HeteroCenterLoss")
        self.cost, self.normalize = cost, normalize

    def forward(
        self, feats: Feats, pids: Tensor, modalities: Tensor, layout: BatchLayout | None = None
    ) -> AlignmentOutput:
        return hetero_center_loss(feats, pids, modalities, self.cost, self.normalize, layout)


class MMDLoss(nn.Module):
    """Module form of :func:`mmd_loss`."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("normalize",)  # a kernel, no cost: ``cost`` does not apply
    aligns: ClassVar[bool] = True

    def __init__(self, bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), normalize: bool = True) -> None:
        super().__init__()
        self.bandwidths, self.normalize = tuple(bandwidths), normalize

    def forward(
        self, feats: Feats, pids: Tensor, modalities: Tensor, layout: BatchLayout | None = None
    ) -> AlignmentOutput:
        return mmd_loss(feats, pids, modalities, self.bandwidths, self.normalize, layout)


class NoAlignment(nn.Module):
    """The baseline: a zero loss (connected to the graph), with the identity counts for logging."""

    OPTIONS: ClassVar[tuple[str, ...]] = ()
    aligns: ClassVar[bool] = False

    def forward(
        self, feats: Feats, pids: Tensor, modalities: Tensor, layout: BatchLayout | None = None
    ) -> AlignmentOutput:
        fl = _as_list(feats, "NoAlignment")
        _, n_id, n_skip = _grouping(pids, modalities, layout, pids.device, "NoAlignment")
        zero = torch.stack([f.sum() * 0.0 for f in fl])
        return AlignmentOutput(zero.mean(), zero, n_id, n_skip)


_ALIGNMENT = {
    "cmemd": CMEMDLoss,
    "all-pairs": AllPairsLoss,
    "hetero-center": HeteroCenterLoss,
    "mmd": MMDLoss,
    "none": NoAlignment,
}


#: The names ``make_alignment_loss`` (and ``loss.alignment`` in configs) accept.
ALIGNMENT_LOSSES = tuple(_ALIGNMENT)


@dataclass(frozen=True)
class AlignmentOptions:
    """The options an alignment loss may read, one set for every loss: each takes the fields its ``OPTIONS``
    name (CM-EMD all; all-pairs and hetero-centre ``cost``, ``normalize``; MMD ``normalize``; none nothing),
    so a caller configures "the alignment" without knowing which loss it is. The defaults are the losses'."""

    cost: str = "euclidean"  # cross-modality cost: one of COSTS
    normalize: bool = True  # L2-normalise the features before the cost (the scale-safe default)
    solver: str = "exact"  # CM-EMD's plan: exact | sinkhorn
    eps: float = 0.05  # Sinkhorn's entropic regularisation
    sinkhorn_iters: int = 200


def make_alignment_loss(name: str, options: AlignmentOptions | None = None, **kwargs: Any) -> nn.Module:
    """Build an alignment loss module by name: ``cmemd``, ``all-pairs``, ``hetero-center``,
    ``mmd`` or ``none``. ``options``: the fields of :class:`AlignmentOptions` the loss reads (its ``OPTIONS``)
    go to its constructor, the others are not its business; keyword arguments go to the constructor as given
    (after the options, so they win), and one the loss does not take is a :class:`ConfigError`."""
    if name not in _ALIGNMENT:
        raise ConfigError(f"make_alignment_loss: unknown alignment loss {name!r}; choose one of {sorted(_ALIGNMENT)}")
    cls = _ALIGNMENT[name]
    if options is not None:
        read: tuple[str, ...] = getattr(cls, "OPTIONS", ())  # every loss class declares the options it reads
        kwargs = {**{k: getattr(options, k) for k in read}, **kwargs}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"make_alignment_loss: bad option for {name!r}: {e}") from None
