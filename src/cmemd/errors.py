"""One exception family for the project.

Every message names the file (or object), the field and the fix, so that a user who
points the tool at the wrong folder learns what to do without reading the source.
"""

from __future__ import annotations


class CmemdError(Exception):
    """Base class of every error cmemd raises on purpose."""


class DatasetError(CmemdError):
    """A dataset root, split file, record or image is missing or malformed.

    ``problems`` holds every problem found when a scan collected several, so that a
    user fixes them in one pass instead of one per run.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems) if problems else [message]
        if problems:
            shown = "\n  - ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            message = f"{message}\n  - {shown}{more}"
        super().__init__(message)


class ConfigError(CmemdError):
    """A configuration key is unknown or has a value of the wrong type."""


class CheckpointError(CmemdError):
    """A checkpoint is missing, corrupt, or does not match the model."""


class EvaluationError(CmemdError):
    """Evaluation inputs are inconsistent (shapes, NaN features, unknown protocol)."""


class SolverError(CmemdError):
    """An optimal-transport problem the chosen solver cannot solve exactly."""


class TrainingError(CmemdError):
    """Training cannot continue (non-finite loss, bad resume state)."""


class InputError(ConfigError, ValueError):
    """An argument of a library call has an unsupported type, shape or value (an image array of the wrong
    shape, ``modality=0.7``, ``device="tpu"``). A ConfigError (what such arguments raised before) and a
    ValueError, so either ``except`` catches it."""
