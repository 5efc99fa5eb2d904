"""The synthetic benchmark's sidecar diagnostics (cmemd.benchmarks.synthetic): each record's nuisance as the
generator wrote it, in the records' order; other data's records refused; no sidecar, no labels."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cmemd.benchmarks.synthetic import NUISANCE_NUMBERS, nuisance_of, nuisance_of_test_ids
from cmemd.data.records import ImageRecord
from cmemd.data.synth import NUISANCE_FILE, SynthConfig, generate_sysu
from cmemd.errors import DatasetError


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "sysu"
    generate_sysu(root, SynthConfig(ids=6, images_per_camera=(2, 2), height=32, width=16, seed=4))
    return root


def _csv_rows(root: Path) -> dict[str, dict[str, str]]:
    with open(root / NUISANCE_FILE, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_every_test_image_gets_the_row_the_generator_wrote(synth_set):
    records, nuisance = nuisance_of_test_ids(synth_set)
    rows = _csv_rows(synth_set)
    assert {r.modality for r in records} == {"visible", "thermal"} and len(records) == len({r.path for r in records})
    for i, r in enumerate(records):
        row = rows[Path(r.path).resolve().relative_to(synth_set.resolve()).as_posix()]
        assert nuisance["view"][i] == row["view"]
        for name in NUISANCE_NUMBERS:
            assert nuisance[name][i] == float(row[name])
    assert list(nuisance) == ["view", *NUISANCE_NUMBERS]
    reverse = nuisance_of(records[::-1], synth_set)  # the records' order, not the file's
    assert all(np.array_equal(reverse[k], nuisance[k][::-1]) for k in nuisance)


def test_other_data_is_refused_and_real_data_has_no_labels(synth_set, tmp_path):
    stranger = ImageRecord(path=str(tmp_path / "cam1" / "0001" / "0001.jpg"), pid=1, camid=1, modality="visible")
    with pytest.raises(DatasetError, match=NUISANCE_FILE):
        nuisance_of([stranger], synth_set)
    assert nuisance_of([stranger], tmp_path) is None  # no sidecar: a real dataset
