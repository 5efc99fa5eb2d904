"""CM-DL against hand-computed ratios."""
from __future__ import annotations

import pytest
import torch

from cmemd.errors import ConfigError, TrainingError
from cmemd.losses import CMDLLoss, cmdl_loss
from tests.losses.degenerate import CASES, degenerate_batch


def clusters():
    # identity 0: (0,0) vis, (2,0) th -> centre (1,0); identity 1: (10,0), (10,4) vis, (10,2) th
    # -> centre (10,2)
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0], [10.0, 2.0]], dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1, 1])
    mods = torch.tensor([0, 1, 0, 0, 1])
    return x, pids, mods


def test_plain_ratio_by_hand():
    x, pids, mods = clusters()
    # S_w = (1 + 1 + 4 + 4 + 0) / 5 = 2; mu = (5.5, 1); S_b = (4.5^2 + 1 + 4.5^2 + 1) / 2 = 21.25
    assert cmdl_loss(x, pids).item() == pytest.approx(2.0 / (21.25 + 1e-6), rel=1e-12)
    assert CMDLLoss(eps=0.0)(x, pids).item() == pytest.approx(2.0 / 21.25, rel=1e-12)


def test_cross_ratio_by_hand():
    x, pids, mods = clusters()
    # other-modality centres: id0 vis -> th (2,0): 4; id0 th -> vis (0,0): 4;
    # id1 vis -> th (10,2): 4, 4; id1 th -> vis centre (10,2): 0  -> S_w = 16/5
    assert cmdl_loss(x, pids, mods, cross=True, eps=0.0).item() == pytest.approx(3.2 / 21.25, rel=1e-12)
    # identity 2 with only a visible sample: falls back to its own centre (distance 0) ...
    x2 = torch.cat([x, torch.tensor([[0.0, 10.0]], dtype=torch.float64)])
    p2, m2 = torch.cat([pids, torch.tensor([2])]), torch.cat([mods, torch.tensor([0])])
    mu = torch.tensor([[1.0, 0.0], [10.0, 2.0], [0.0, 10.0]], dtype=torch.float64)
    s_b = (mu - mu.mean(0)).pow(2).sum(1).mean().item()
    assert cmdl_loss(x2, p2, m2, cross=True, eps=0.0).item() == pytest.approx((16 / 6) / s_b, rel=1e-12)
    # ... or is left out of S_w with "skip"
    assert CMDLLoss(cross=True, cross_fallback="skip", eps=0.0)(x2, p2, m2).item() == pytest.approx(
        (16 / 5) / s_b, rel=1e-12)


def test_scale_invariance_and_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g, dtype=torch.float64)
    pids = torch.arange(4).repeat_interleave(4)
    a = cmdl_loss(x, pids, eps=0.0)
    b = cmdl_loss(x * 37.0, pids, eps=0.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert torch.autograd.gradcheck(lambda t: cmdl_loss(t, pids), (x.clone().requires_grad_(True),))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cross", [False, True])
def test_degenerate_finite(case, cross):
    x, pids = degenerate_batch(case)
    mods = torch.tensor([0, 1, 0, 1, 0, 0])
    loss = cmdl_loss(x, pids, mods, cross=cross)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_bad_inputs():
    x, pids, mods = clusters()
    with pytest.raises(TrainingError, match="modalities"):
        cmdl_loss(x, pids, None, cross=True)
    with pytest.raises(ConfigError, match="cross_fallback"):
        CMDLLoss(cross_fallback="drop")
    with pytest.raises(TrainingError, match="pids"):
        cmdl_loss(x, pids[:3])
