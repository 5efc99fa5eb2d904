"""Resume on another device: the RNG states stay on the CPU, and a checkpoint of more GPUs than are visible
restores the CUDA states that fit (and says so). CPU-only: the ``meta`` device stands in for a GPU (a state
moved there is no CPU ByteTensor either, as on CUDA), and the CUDA RNG functions are faked."""
from __future__ import annotations

import random
import types

import numpy as np
import pytest
import torch
from torch import nn

from cmemd.engine.trainer import Trainer, rng_state, set_rng_state


class _Sampler:
    """The batch-sampler surface Trainer.state_dict / resume use."""

    num_batches, epoch = 2, 0

    def state_dict(self, batches_done: int = 0) -> dict:
        return {"seed": 0, "epoch": self.epoch, "start_batch": batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = dict(state)


def _trainer(model: nn.Module, out_dir, device: str = "cpu") -> Trainer:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, None, opt, types.SimpleNamespace(batch_sampler=_Sampler()), epochs=1, out_dir=out_dir,
                   device=device, progress=False)


def test_resume_restores_rng_states_on_the_cpu_whatever_the_device(tmp_path):
    torch.manual_seed(3)
    model = nn.Linear(3, 2)
    saver = _trainer(model, tmp_path)
    model(torch.randn(4, 3)).sum().backward()
    saver.optimizer.step()  # momentum buffers in the optimiser state
    np.random.seed(5)
    random.seed(6)
    torch.rand(7)
    path = saver.save()
    expected = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # scramble

    # the model and optimiser on a device that is not the CPU; the checkpoint's RNG states must not follow them
    with pytest.warns(UserWarning, match="meta parameter"):  # torch: copying into meta weights is a no-op
        _trainer(nn.Linear(3, 2, device="meta"), tmp_path, device="meta").resume(path)
    assert torch.equal(torch.get_rng_state(), expected[0])
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    assert kind == expected[1][0] and np.array_equal(key, expected[1][1]) and (pos, has_gauss, gauss) == expected[1][2:]
    assert random.getstate() == expected[2]


def _fake_gpus(monkeypatch, visible: int) -> list:
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((device, state.clone())))
    return calls


@pytest.mark.parametrize("saved, visible", [(4, 2), (1, 2), (2, 0)])
def test_cuda_rng_states_that_fit_are_restored_and_the_rest_named(monkeypatch, saved, visible):
    state = rng_state()  # before faking CUDA: on this machine its "cuda" entry is None
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(saved)]
    calls = _fake_gpus(monkeypatch, visible)
    if saved > visible:
        with pytest.warns(UserWarning, match=f"CUDA RNG states of {saved} GPU\\(s\\) but {visible} are visible: "
                                             f"restored {visible}"):
            set_rng_state(state)
    else:
        set_rng_state(state)
    n = min(saved, visible)
    assert [d for d, _ in calls] == list(range(n))
    assert all(torch.equal(s, state["cuda"][d]) for d, s in calls)


def test_the_numpy_rng_state_is_saved_as_a_tensor():
    """So that a checkpoint needs nothing beyond torch's weights-only list (no numpy globals)."""
    np.random.seed(11)
    np.random.standard_normal()  # a cached Gaussian, so has_gauss = 1
    state = rng_state()
    assert isinstance(state["numpy"]["key"], torch.Tensor) and state["numpy"]["has_gauss"] == 1
    a = np.random.standard_normal(5)
    set_rng_state(state)
    np.testing.assert_array_equal(np.random.standard_normal(5), a)  # the cached Gaussian included
