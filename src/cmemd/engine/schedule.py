"""Optimiser parameter groups and the learning-rate schedule of the VT-ReID recipe."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Attribute names of the backbone parts of :class:`cmemd.models.VTReIDModel`; everything else is a head.
BACKBONE_PARTS = ("modality_parts", "shared", "global_stream", "local_stream")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (any wrapper exposing it as ``.module``)."""
    while isinstance(inner := getattr(model, "module", None), nn.Module):
        model = inner
    return model


def param_groups(model: nn.Module, *, lr: float, backbone_lr: float, weight_decay: float) -> list[dict]:
    """Two groups: backbone (ResNet copies) at ``backbone_lr`` and heads at ``lr``.

    Frozen parameters (the BN-neck biases) are left out. Each group keeps its ``initial_lr``
    so the schedule can rescale it. A DDP-wrapped model is unwrapped first: the wrapper hides the
    backbone attributes, which would otherwise put every parameter in the head group.
    """
    model = unwrap_model(model)
    backbone_ids: set[int] = set()
    for name in BACKBONE_PARTS:
        part = getattr(model, name, None)
        if part is not None:
            backbone_ids.update(id(p) for p in part.parameters())
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) in backbone_ids]
    heads = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
    groups = []
    if backbone:
        groups.append(
            {
                "params": backbone,
                "lr": backbone_lr,
                "initial_lr": backbone_lr,
                "weight_decay": weight_decay,
                "name": "backbone",
            }
        )
    if heads:
        groups.append({"params": heads, "lr": lr, "initial_lr": lr, "weight_decay": weight_decay, "name": "heads"})
    return groups


OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    *,
    lr: float = 0.1,
    backbone_lr: float = 0.01,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over :func:`param_groups`."""
    groups = param_groups(model, lr=lr, backbone_lr=backbone_lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def lr_factor(epoch: float, *, warmup_epochs: float, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """Multiplier of the initial learning rate at (fractional) ``epoch``.

    Linear warm-up from 0.1x to 1x over ``warmup_epochs`` (the field's ``(epoch+1)/10``
    ramp, made per step), then x``gamma`` at each milestone passed.
    """
    factor = 1.0
    if warmup_epochs > 0 and epoch < warmup_epochs:
        factor = 0.1 + 0.9 * epoch / warmup_epochs
    for m in milestones:
        if epoch >= m:
            factor *= gamma
    return factor


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g.get("initial_lr", g["lr"]) * factor
