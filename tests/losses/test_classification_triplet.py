"""Label-smoothed cross-entropy and the WRT triplet against loop references."""
from __future__ import annotations

import math

import pytest
import torch

from cmemd.errors import TrainingError
from cmemd.losses import CrossEntropyLabelSmooth, WeightedRegularizedTriplet, cross_entropy_label_smooth, wrt_triplet
from tests.losses.degenerate import CASES, degenerate_batch


def test_label_smoothing_matches_hand_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 6, 2, 2])
    eps = 0.1
    ref = 0.0
    for i in range(5):
        logp = logits[i] - torch.logsumexp(logits[i], 0)
        q = torch.full((7,), eps / 7, dtype=torch.float64)
        q[y[i]] += 1 - eps
        ref += -(q * logp).sum().item()
    assert CrossEntropyLabelSmooth(eps)(logits, y).item() == pytest.approx(ref / 5, rel=1e-12)
    assert cross_entropy_label_smooth(logits, y, 0.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item())
    with pytest.raises(TrainingError, match="targets must lie"):
        cross_entropy_label_smooth(logits, torch.tensor([0, 1, 2, 3, 7]))


def wrt_reference(x: torch.Tensor, pids: torch.Tensor) -> float:
    """Per-anchor loop: softmax weights over positives (by distance) and negatives (by -distance)."""
    N = len(x)
    total = 0.0
    for i in range(N):
        pos = [j for j in range(N) if pids[j] == pids[i]]
        neg = [j for j in range(N) if pids[j] != pids[i]]
        d = [math.dist(x[i].tolist(), x[j].tolist()) for j in range(N)]
        wp = [math.exp(d[j]) for j in pos]
        dp = sum(w * d[j] for w, j in zip(wp, pos)) / sum(wp)
        if neg:
            wn = [math.exp(-d[j]) for j in neg]
            dn = sum(w * d[j] for w, j in zip(wn, neg)) / sum(wn)
        else:
            dn = 0.0
        total += math.log1p(math.exp(dp - dn))
    return total / N


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wrt_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4])
    # the reference code adds 1e-6 to the softmax normaliser: tolerance accordingly
    assert wrt_triplet(x, pids).item() == pytest.approx(wrt_reference(x, pids), rel=1e-5)
    xn = torch.nn.functional.normalize(x, dim=1)
    assert WeightedRegularizedTriplet(normalize=True)(x, pids).item() == pytest.approx(
        wrt_reference(xn, pids), rel=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_wrt_degenerate_finite(case):
    x, pids = degenerate_batch(case)
    loss = wrt_triplet(x, pids)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
