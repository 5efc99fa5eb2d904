"""Degenerate feature batches shared by the loss tests (6 samples x 5 dims, 3 ids unless the case says otherwise)."""
from __future__ import annotations

import torch

CASES = ["identical", "zeros", "huge", "tiny", "one_id", "singletons"]


def degenerate_batch(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features requiring grad, pids) for one degenerate case."""
    torch.manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    x = {"identical": torch.ones(6, 5), "zeros": torch.zeros(6, 5), "huge": torch.randn(6, 5) * 1e4,
         "tiny": torch.randn(6, 5) * 1e-8, "one_id": torch.randn(6, 5), "singletons": torch.randn(6, 5)}[case]
    if case == "one_id":
        pids = torch.zeros(6, dtype=torch.long)
    if case == "singletons":
        pids = torch.arange(6)
    return x.requires_grad_(True), pids
