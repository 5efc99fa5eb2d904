"""Weighted-regularisation triplet loss (WRT) of the AGW baseline (Ye et al., TPAMI 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmemd.errors import TrainingError

__all__ = ["pairwise_euclidean", "wrt_triplet", "WeightedRegularizedTriplet"]


def pairwise_euclidean(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """``(N, M)`` Euclidean distances, with a finite gradient when two rows coincide.

    Computed from explicit differences (no ``|x|^2 + |y|^2 - 2xy`` cancellation); pairs with squared
    distance below ``eps`` get distance 0 and zero gradient (the double-``where`` trick).
    """
    d2 = (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)
    return _safe_sqrt(d2, eps)


def _safe_sqrt(d2: Tensor, eps: float = 1e-12) -> Tensor:
    safe = d2.clamp_min(eps)
    return torch.where(d2 > eps, safe.sqrt(), torch.zeros_like(d2))


def _softmax_weights(dist: Tensor, mask: Tensor) -> Tensor:
    # softmax of `dist` restricted to `mask`, stabilised by the row max (as AGW's reference code)
    max_v = (dist * mask).max(dim=1, keepdim=True)[0]
    e = torch.exp(dist - max_v) * mask
    return e / (e.sum(dim=1, keepdim=True) + 1e-6)


def wrt_triplet(feats: Tensor, pids: Tensor, normalize: bool = False) -> Tensor:
    """Weighted-regularisation triplet loss.

    For each anchor: ``d_p = sum_j softmax(d_aj over positives) * d_aj`` (hard positives weigh
    more), ``d_n = sum_k softmax(-d_ak over negatives) * d_ak`` (hard negatives weigh more); the
    loss is the soft margin ``mean log(1 + exp(d_p - d_n))``. No margin hyper-parameter. Positives
    include the anchor itself (distance 0), as in the reference implementation. An anchor without
    negatives contributes ``log(1 + exp(d_p))``.

    Args:
        feats: ``(N, D)`` features (both modalities together).
        pids: ``(N,)`` identity labels.
        normalize: L2-normalise features first.
    """
    if feats.dim() != 2 or pids.shape != feats.shape[:1]:
        raise TrainingError(
            f"wrt_triplet: feats must be (N, D) and pids (N,), got {tuple(feats.shape)} and {tuple(pids.shape)}"
        )
    if normalize:
        feats = F.normalize(feats, dim=1)
    dist = pairwise_euclidean(feats, feats)
    same = pids[:, None] == pids[None, :]
    is_pos = same.to(dist.dtype)
    is_neg = (~same).to(dist.dtype)
    d_ap = dist * is_pos
    d_an = dist * is_neg
    w_ap = _softmax_weights(d_ap, is_pos)
    w_an = _softmax_weights(-d_an, is_neg)
    furthest_pos = (d_ap * w_ap).sum(1)
    closest_neg = (d_an * w_an).sum(1)
    # SoftMarginLoss(closest_neg - furthest_pos, 1) = softplus(furthest_pos - closest_neg)
    return F.softplus(furthest_pos - closest_neg).mean()


class WeightedRegularizedTriplet(nn.Module):
    """Module form of :func:`wrt_triplet`."""

    def __init__(self, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, feats: Tensor, pids: Tensor) -> Tensor:
        return wrt_triplet(feats, pids, self.normalize)
