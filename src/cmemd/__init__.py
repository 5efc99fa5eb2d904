"""cmemd: visible-thermal person re-identification with Cross-Modality Earth Mover's Distance."""

from __future__ import annotations

__version__ = "0.1.0"

from cmemd.errors import (
    CheckpointError,
    CmemdError,
    ConfigError,
    DatasetError,
    EvaluationError,
    InputError,
    SolverError,
    TrainingError,
)

__all__ = [
    "__version__",
    "CmemdError",
    "DatasetError",
    "ConfigError",
    "CheckpointError",
    "EvaluationError",
    "InputError",
    "SolverError",
    "TrainingError",
    "load",
]


def __getattr__(name: str):
    # ``cmemd.load`` imports torch on first use, so ``import cmemd`` stays light.
    if name == "load":
        from cmemd.api import load

        return load
    raise AttributeError(f"module 'cmemd' has no attribute {name!r}")
