"""Models: a torchvision-compatible ResNet and the two-stream VT-ReID model with MGS heads."""

from __future__ import annotations

from cmemd.models.resnet import (
    IMAGENET_URLS,
    ResNet,
    load_pretrained,
    read_state_dict,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from cmemd.models.vtreid import (
    GeM,
    ModelConfig,
    VTOutput,
    VTReIDModel,
    build_model,
    count_parameters,
    load_pretrained_backbone,
)

__all__ = [
    "IMAGENET_URLS",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "read_state_dict",
    "load_pretrained",
    "GeM",
    "ModelConfig",
    "VTOutput",
    "VTReIDModel",
    "build_model",
    "count_parameters",
    "load_pretrained_backbone",
]
