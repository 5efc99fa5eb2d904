"""Cross-modality discrimination learning (CM-DL): intra- over inter-identity variance."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cmemd.errors import ConfigError, TrainingError
from cmemd.layout import BatchLayout

__all__ = ["cmdl_loss", "CMDLLoss"]

_FALLBACKS = ("own", "skip")


def cmdl_loss(
    feats: Tensor,
    pids: Tensor,
    modalities: Tensor | None = None,
    cross: bool = False,
    cross_fallback: str = "own",
    eps: float = 1e-6,
    layout: BatchLayout | None = None,
) -> Tensor:
    """``L = S_w / (S_b + eps)`` over the whole batch (both modalities).

    ``mu_y`` = mean of identity ``y``'s features, ``mu`` = mean of the ``mu_y`` (each identity
    weighs the same), ``S_w = mean_i ||h_i - mu_{y_i}||^2``, ``S_b = mean_y ||mu_y - mu||^2``.

    ``cross=True``: ``S_w`` is measured against the centre of the OTHER modality of the same
    identity, ``mean_i ||h_i - mu_{y_i, 1 - m_i}||^2`` (needs ``modalities``). Samples whose
    identity lacks the other modality use their identity's overall centre with
    ``cross_fallback="own"`` (default), or are left out of the mean with ``"skip"`` (``S_w = 0``
    if every sample is left out). ``S_b`` is unchanged.

    With a single identity ``S_b = 0`` and the loss is ``S_w / eps`` (finite, large): CM-DL needs
    at least two identities per batch to be meaningful.

    ``layout`` (:class:`cmemd.layout.BatchLayout`, its tensors on the features' device): the identity
    index of each sample computed on the host, so the loss makes no host-device synchronisation
    (without it the labels are grouped with ``torch.unique`` and checked on the device's data).
    """
    if feats.dim() != 2 or pids.shape != feats.shape[:1]:
        raise TrainingError(
            f"cmdl_loss: feats must be (N, D) and pids (N,), got {tuple(feats.shape)} and {tuple(pids.shape)}"
        )
    if cross_fallback not in _FALLBACKS:
        raise ConfigError(f"cmdl_loss: cross_fallback must be one of {_FALLBACKS}, got {cross_fallback!r}")
    if layout is not None:
        layout.check(pids.shape[0], "cmdl_loss")
        inv, Y = layout.inverse, layout.num_pids
    else:
        _, inv = torch.unique(_on(pids, feats.device), return_inverse=True)
        Y = int(inv.max()) + 1
    counts = torch.zeros(Y, dtype=feats.dtype, device=feats.device).index_add_(
        0, inv, torch.ones_like(inv, dtype=feats.dtype)
    )
    centres = (
        torch.zeros(Y, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, inv, feats)
        / counts[:, None]
    )
    mu = centres.mean(0)
    s_b = (centres - mu).pow(2).sum(1).mean()
    if not cross:
        s_w = (feats - centres[inv]).pow(2).sum(1).mean()
        return s_w / (s_b + eps)
    if modalities is None or modalities.shape != pids.shape:
        raise TrainingError("cmdl_loss: cross=True needs modalities of shape (N,) (0 visible, 1 thermal)")
    mod = _on(modalities, feats.device).long()
    if layout is None and bool(((mod != 0) & (mod != 1)).any()):  # a layout was checked on the host
        raise TrainingError("cmdl_loss: modalities must be 0 (visible) or 1 (thermal)")
    key = inv * 2 + mod
    mcounts = torch.zeros(2 * Y, dtype=feats.dtype, device=feats.device).index_add_(
        0, key, torch.ones_like(key, dtype=feats.dtype)
    )
    msum = torch.zeros(2 * Y, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, key, feats)
    other = inv * 2 + (1 - mod)
    has_other = mcounts[other] > 0
    other_centre = msum[other] / mcounts[other].clamp_min(1.0)[:, None]
    d = (feats - torch.where(has_other[:, None], other_centre, centres[inv])).pow(2).sum(1)
    if cross_fallback == "own":
        s_w = d.mean()
    else:
        w = has_other.to(feats.dtype)
        s_w = (d * w).sum() / w.sum().clamp_min(1.0)
    return s_w / (s_b + eps)


def _on(t: Tensor, device: torch.device) -> Tensor:
    return t if t.device == device else t.to(device)


class CMDLLoss(nn.Module):
    """Module form of :func:`cmdl_loss`; ``forward(feats, pids, modalities=None, layout=None) -> Tensor``."""

    def __init__(self, cross: bool = False, cross_fallback: str = "own", eps: float = 1e-6) -> None:
        super().__init__()
        if cross_fallback not in _FALLBACKS:
            raise ConfigError(f"CMDLLoss: cross_fallback must be one of {_FALLBACKS}, got {cross_fallback!r}")
        self.cross, self.cross_fallback, self.eps = cross, cross_fallback, eps

    def forward(
        self, feats: Tensor, pids: Tensor, modalities: Tensor | None = None, layout: BatchLayout | None = None
    ) -> Tensor:
        return cmdl_loss(feats, pids, modalities, self.cross, self.cross_fallback, self.eps, layout)

    def extra_repr(self) -> str:
        return f"cross={self.cross}, cross_fallback={self.cross_fallback}, eps={self.eps}"
