"""Parameters a loss setting never gives a gradient are exactly the ones the objective freezes.

DistributedDataParallel waits for every trainable parameter's gradient; one the loss settings leave unused
(``loss.lambda_dl=0``, ``loss.lambda_accum_ce=0``, ...) made a multi-GPU run fail with "Expected to have finished
reduction". For each setting, a CPU step on the unfrozen model finds the parameters left without a gradient
(the independent truth) and ``Objective.unused_parameters`` must name exactly those; after ``freeze_unused``
no trainable parameter is left without a gradient.
"""
from __future__ import annotations

import pytest
import torch

from cmemd.engine.objective import Objective
from cmemd.models import ModelConfig, build_model

SETTINGS = [
    {},
    {"lambda_dl": 0.0},
    {"lambda_accum_ce": 0.0},
    {"lambda_accum_ce": 0.0, "lambda_dl": 0.0},
    {"lambda_accum_ce": 0.0, "align_feature": "bn"},
    {"lambda_accum_ce": 0.0, "align_granularities": "global"},
    {"lambda_accum_ce": 0.0, "alignment": "none"},
    {"lambda_accum_ce": 0.0, "lambda_align": 0.0, "lambda_dl": 0.0},
    {"lambda_align": 0.0, "alignment": "hetero-center"},
]
MODELS = [{}, {"accumulate": "cumsum"}, {"accumulated_heads": False}]
# the models without accumulated features or without the local stream have fewer parameters to leave unused:
# one setting with and one without CM-DL each
CASES = [(loss, model) for model in MODELS for loss in SETTINGS] + [
    (loss, model) for model in ({"accumulate": "none"}, {"use_local": False, "test_feature": "global"})
    for loss in (SETTINGS[1], SETTINGS[3])]


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(12, 3, 16, 8, generator=g)
    pids = torch.tensor([0, 0, 1, 1, 2, 2] * 2)
    mods = torch.tensor([0] * 6 + [1] * 6)
    return images, pids, mods


def _no_grad(model, objective) -> set[str]:
    images, pids, mods = _batch()
    model.train()
    model.zero_grad(set_to_none=True)
    total, _ = objective(model(images, mods), pids, mods)
    total.backward()
    return {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}


def _name(kw: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


@pytest.mark.parametrize("loss_kw,model_kw", CASES, ids=[f"{_name(a)}-{_name(b)}" for a, b in CASES])
def test_frozen_parameters_are_exactly_the_unused_ones(loss_kw, model_kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, arch="resnet18", width=4, num_stripes=2, local_dim=8, **model_kw))
    objective = Objective(**loss_kw)
    truth = _no_grad(model, objective)
    assert set(objective.unused_parameters(model)) == truth
    keys = set(model.state_dict())
    frozen = objective.freeze_unused(model)
    assert set(model.state_dict()) == keys  # nothing removed: checkpoints of either version load
    assert {n.split(".")[0] for n in truth} == set(frozen)
    assert _no_grad(model, objective) == set()  # every trainable parameter now receives a gradient
    if loss_kw.get("lambda_dl") == 0.0 and model_kw.get("use_local", True):
        assert "stripe_logits" in frozen  # the settings of the issue do leave parameters unused
    if loss_kw.get("lambda_accum_ce") == 0.0 and model_kw.get("accumulate", "prefix") != "none" \
            and model_kw.get("accumulated_heads", True) and model_kw.get("use_local", True):
        assert "accum_classifiers" in frozen
