"""Training engine: objective, loop, checkpoints, feature extraction (config -> runs: ``cmemd.app``)."""

from cmemd.engine.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from cmemd.engine.extract import extract_features
from cmemd.engine.objective import Objective
from cmemd.engine.schedule import build_optimizer, lr_factor, param_groups
from cmemd.engine.trainer import Trainer

__all__ = [
    "Trainer",
    "Objective",
    "extract_features",
    "build_optimizer",
    "param_groups",
    "lr_factor",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
]
