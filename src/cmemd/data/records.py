"""The one record type for an image, shared by every dataset, sampler and evaluator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

Modality = Literal["visible", "thermal"]
MODALITIES: tuple[str, str] = ("visible", "thermal")


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
    person id in query/gallery sets. ``camid`` is the dataset's camera number
    (SYSU-MM01: 1..6; RegDB: 1 visible, 2 thermal).
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
