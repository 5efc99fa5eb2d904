"""Scale-safe L2 normalisation: cosine similarity that does not depend on the features' scale.

``x / ||x||`` computed directly overflows when the entries are large (float32 ``1e20``: the squares are
``1e40`` > 3.4e38, the norm is inf and every row becomes 0, so every score ties) and underflows when they are
tiny (``1e-20``: the squares are 0 or subnormal; ``torch.nn.functional.normalize`` then divides by its
``eps=1e-12`` floor). Each row is first divided by its largest absolute entry, which brings the entries into
[-1, 1] (the norm into [1, sqrt(D)]). A row scaled by ``2^k`` has its largest entry scaled by ``2^k`` too, so the
quotients are the same real numbers, rounded the same: it normalises to the same bits; a row scaled by any
other finite factor to the same values up to rounding. Only elementwise ops, ``amax`` and the norm: vectorised,
and exportable to ONNX (the model's concatenated test feature uses it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["l2_normalize", "l2_normalize_np"]


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ||x||`` along ``dim`` for any finite scale (float tensors); all-zero rows stay zero, as in
    ``torch.nn.functional.normalize``. About as fast as the naive form (two reductions without a temporary
    for the largest entry; the last division in place unless autograd needs ``y``)."""
    m = torch.maximum(x.amax(dim=dim, keepdim=True), -x.amin(dim=dim, keepdim=True))
    y = x / torch.where(m > 0, m, torch.ones_like(m))
    n = torch.linalg.vector_norm(y, dim=dim, keepdim=True)
    n = torch.where(n > 0, n, torch.ones_like(n))
    return y / n if y.requires_grad else y.div_(n)


def l2_normalize_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """:func:`l2_normalize` for numpy arrays (same dtype out; integer input becomes float64)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return l2_normalize(torch.from_numpy(np.ascontiguousarray(x)), dim=axis).numpy()
