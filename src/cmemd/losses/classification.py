"""Identity classification loss: cross-entropy with label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmemd.errors import TrainingError
from cmemd.layout import BatchLayout

__all__ = ["cross_entropy", "cross_entropy_label_smooth", "CrossEntropyLabelSmooth"]


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``F.cross_entropy(logits, targets, label_smoothing=...)`` (mean over the batch), except on CUDA under
    ``torch.use_deterministic_algorithms(True)`` (``run.deterministic=true``), where it is computed densely as
    ``-(log_softmax(logits) * smoothed one-hot).sum(1).mean()``: the same value up to rounding, without the
    NLL kernels that have no deterministic CUDA implementation (they would raise in that mode)."""
    if logits.is_cuda and torch.are_deterministic_algorithms_enabled():
        C = logits.shape[1]
        target = F.one_hot(targets.long(), C).to(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / C
        return -(F.log_softmax(logits, dim=1) * target).sum(dim=1).mean()
    return F.cross_entropy(logits, targets.long(), label_smoothing=label_smoothing)


def cross_entropy_label_smooth(
    logits: Tensor, targets: Tensor, epsilon: float = 0.1, layout: BatchLayout | None = None
) -> Tensor:
    """Mean cross-entropy against smoothed one-hot targets ``(1 - eps) * onehot + eps / C``.

    This is the label-smoothed identity loss of the AGW / BoT baselines (Szegedy et al. 2016);
    ``epsilon = 0`` is plain cross-entropy.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        targets: ``(N,)`` integer class indices in ``[0, C)``.
        epsilon: smoothing mass spread uniformly over the ``C`` classes, in ``[0, 1)``.
        layout: the batch's :class:`cmemd.layout.BatchLayout`, whose label range is checked on the host
            (without it the range is read from ``targets``: two synchronisations on an accelerator).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise TrainingError(
            f"cross_entropy_label_smooth: logits must be (N, C) and targets (N,), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if not 0.0 <= epsilon < 1.0:
        raise TrainingError(f"cross_entropy_label_smooth: epsilon must be in [0, 1), got {epsilon}")
    if layout is not None:
        layout.check(targets.shape[0], "cross_entropy_label_smooth")
        low, high = layout.pid_min, layout.pid_max
    elif targets.numel():
        low, high = int(targets.min()), int(targets.max())
    if targets.numel() and (low < 0 or high >= logits.shape[1]):
        raise TrainingError(
            f"cross_entropy_label_smooth: targets must lie in [0, {logits.shape[1]}); got range "
            f"[{low}, {high}] -- is num_classes the number of training ids?"
        )
    return cross_entropy(logits, targets, epsilon)


class CrossEntropyLabelSmooth(nn.Module):
    """Module form of :func:`cross_entropy_label_smooth`."""

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = float(epsilon)

    def forward(self, logits: Tensor, targets: Tensor, layout: BatchLayout | None = None) -> Tensor:
        return cross_entropy_label_smooth(logits, targets, self.epsilon, layout)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"
