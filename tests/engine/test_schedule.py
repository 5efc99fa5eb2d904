from __future__ import annotations

import pytest
import torch

from cmemd.engine.schedule import build_optimizer, lr_factor, param_groups
from cmemd.models import ModelConfig, build_model


@pytest.mark.parametrize(
    "epoch,expected",
    [(0, 0.1), (5, 0.55), (10, 1.0), (19.9, 1.0), (20, 0.1), (49, 0.1), (50, 0.01), (79, 0.01)],
)
def test_recipe_schedule(epoch, expected):
    assert lr_factor(epoch, warmup_epochs=10, milestones=[20, 50], gamma=0.1) == pytest.approx(expected)


def test_param_groups_partition_trainable_params():
    model = build_model(ModelConfig(num_classes=5, arch="resnet18", width=8, num_stripes=2, local_dim=8))
    groups = param_groups(model, lr=0.1, backbone_lr=0.01, weight_decay=5e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(set(ids)) == len(ids)
    by_name = {g["name"]: g for g in groups}
    backbone = {id(p) for p in model.global_stream.parameters()} | {id(p) for p in model.modality_parts.parameters()}
    assert backbone <= {id(p) for p in by_name["backbone"]["params"]}
    assert id(model.global_classifier.weight) in {id(p) for p in by_name["heads"]["params"]}
    assert by_name["backbone"]["lr"] == 0.01 and by_name["heads"]["lr"] == 0.1
    opt = build_optimizer(model, "sgd", lr=0.1, backbone_lr=0.01)
    assert opt.defaults["nesterov"] is True


def test_param_groups_of_a_wrapped_model_are_the_plain_models():
    """A wrapper exposing the model as ``.module`` (DataParallel here; DDP in test_ddp.py) is unwrapped."""
    model = build_model(ModelConfig(num_classes=5, arch="resnet18", width=8, num_stripes=2, local_dim=8))
    plain = param_groups(model, lr=0.1, backbone_lr=0.01, weight_decay=5e-4)
    wrapped = param_groups(torch.nn.DataParallel(model), lr=0.1, backbone_lr=0.01, weight_decay=5e-4)
    assert [(g["name"], g["lr"], [id(p) for p in g["params"]]) for g in wrapped] == \
        [(g["name"], g["lr"], [id(p) for p in g["params"]]) for g in plain]
    assert [g["name"] for g in wrapped] == ["backbone", "heads"]
