"""The synthetic benchmark (``cmemd data synth``, ``cmemd demo``; docs/benchmark.md): what only it has.

The generator (:mod:`cmemd.data.synth`) writes each image's nuisance (view, walking phase, box scale/shift,
occlusion) to a sidecar beside the data, outside the real layout. The diagnostics that need it read it here, so
the library's diagnostics (:mod:`cmemd.engine.diagnostics`) take per-record nuisance labels from the caller and
never read a generator's file: :func:`nuisance_of` gives the labels of a set of records, :func:`nuisance_of_test_ids`
the test ids' records of a synthetic SYSU-MM01-layout set with theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmemd.benchmarks.sysu import BENCHMARK as SYSU
from cmemd.data.records import ImageRecord
from cmemd.data.synth import NUISANCE_FILE, read_nuisance
from cmemd.errors import DatasetError

#: The sidecar's numeric nuisance columns, as plan purity compares them (plan- against uniform-weighted).
NUISANCE_NUMBERS = ("phase", "scale", "cx", "top", "occlusion_extent")


def nuisance_of(records: Sequence[ImageRecord], root: str | Path) -> dict[str, np.ndarray] | None:
    """Per-record nuisance arrays (``view``, then the :data:`NUISANCE_NUMBERS`) from the generator's sidecar under
    ``root``; None when the data has no sidecar (real datasets never do). A record missing from the sidecar is a
    :class:`DatasetError` (the sidecar belongs to other data)."""
    table = read_nuisance(root)
    if table is None:
        return None
    base = Path(root).resolve()
    rows = []
    for r in records:
        try:
            rel = Path(r.path).resolve().relative_to(base).as_posix()
        except ValueError:
            rel = r.path
        if rel not in table:
            raise DatasetError(
                f"{base / NUISANCE_FILE}: no entry for {rel}; the sidecar is not of this data "
                "(regenerate it with `cmemd data synth`)"
            )
        rows.append(table[rel])
    out = {"view": np.array([x["view"] for x in rows])}
    out.update({k: np.array([x[k] for x in rows], np.float64) for k in NUISANCE_NUMBERS})
    return out


def nuisance_of_test_ids(root: str | Path) -> tuple[list[ImageRecord], dict[str, np.ndarray] | None]:
    """Every test image of a synthetic SYSU-MM01-layout set (the queries, then the all-search gallery pool) and
    their :func:`nuisance_of` (None without the sidecar): what ``cmemd demo`` measures the test ids' plan purity
    on."""
    sets = SYSU.test_sets(root)
    records = sets["query"] + sets["gallery_pool"]
    return records, nuisance_of(records, root)
