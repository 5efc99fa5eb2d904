"""The one record type for an image, shared by every dataset, sampler and evaluator."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeGuard

from cmemd.errors import DatasetError

Modality = Literal["visible", "thermal"]
MODALITIES: tuple[Modality, Modality] = ("visible", "thermal")


def is_modality(modality: str) -> TypeGuard[Modality]:
    """True when ``modality`` is one of ``MODALITIES`` (narrows a ``str`` to ``Modality`` for the type checker)."""
    return modality in MODALITIES


def modality_index(modality: str) -> int:
    """0 for visible, 1 for thermal: the value carried in the batch's modality tensor."""
    try:
        return MODALITIES.index(modality)
    except ValueError:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}") from None


@dataclass(frozen=True, order=True)
class ImageRecord:
    """One image: where it is, who it shows, which camera took it, in which modality.

    ``pid`` is the training label (0..N-1) in a training set and the dataset's own
    person id in test sets. ``camid`` is the dataset's camera number (e.g. SYSU-MM01's 1..6).
    """

    path: str
    pid: int
    camid: int
    modality: Modality

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"ImageRecord.modality must be one of {MODALITIES}, got {self.modality!r}")


def count_by(records: Iterable[ImageRecord], key: str) -> dict:
    """Count records by one attribute (``"camid"``, ``"modality"``, ``"pid"``), sorted by key."""
    counts: dict = {}
    for r in records:
        k = getattr(r, key)
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def path_label_lines(path: Path) -> Iterator[tuple[str, str, int, str | None]]:
    """The lines of a ``<relative path> <integer label>`` list (the idx files and training lists of the readers), in
    order: ``(where, relative path, label, problem)`` with ``where`` = ``file:line`` and ``problem`` the
    message of a malformed line (None for a good one). Blank lines are skipped; the caller adds its own
    per-line checks and reports every problem at once."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path}: not a text file ({e.reason} at byte {e.start}); expected "
            "'<relative path> <integer label>' per line"
        ) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            yield where, "", -1, f"{where}: expected '<relative path> <integer label>', got {line.strip()[:80]!r}"
        elif not (parts[1].isascii() and parts[1].isdigit()):  # isdigit alone accepts '²'
            yield where, parts[0], -1, f"{where}: label {parts[1]!r} is not a non-negative integer"
        else:
            yield where, parts[0], int(parts[1]), None
