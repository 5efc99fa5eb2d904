from __future__ import annotations

import pytest

from cmemd.data.regdb import RegDB, idx_path
from cmemd.errors import DatasetError
from tests.data.builders import make_regdb


@pytest.fixture
def regdb(tmp_path):
    return make_regdb(tmp_path / "RegDB", num_ids=8, per_id=3)


def test_trials(regdb):
    ds = RegDB(regdb)
    for t in range(1, 11):
        train = ds.train(t)
        vis, th = ds.test(t)
        assert sorted({r.pid for r in train}) == list(range(4))
        assert sum(r.modality == "visible" for r in train) == 12 and sum(r.modality == "thermal" for r in train) == 12
        assert {r.camid for r in vis} == {1} and {r.camid for r in th} == {2}
        assert len(vis) == len(th) == 12
        train_folders = {r.path.split("/")[-2] for r in train}
        test_folders = {r.path.split("/")[-2] for r in vis + th}
        assert not train_folders & test_folders, "train and test ids of a trial must be disjoint"
        assert all("_v_" in r.path for r in vis) and all("_t_" in r.path for r in th)


def test_bad_trial_and_root(regdb, tmp_path):
    with pytest.raises(DatasetError, match="1..10"):
        RegDB(regdb).train(0)
    with pytest.raises(DatasetError, match="root not found"):
        RegDB(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "Visible").mkdir()
    with pytest.raises(DatasetError, match=r"\['Thermal', 'idx'\]"):
        RegDB(tmp_path / "half")


def test_malformed_idx_lines_all_reported(regdb):
    p = idx_path(regdb, "train", "visible", 2)
    lines = p.read_text().splitlines()
    lines[0] = lines[0].split()[0]  # label missing
    lines[1] = lines[1].replace(".bmp", "_gone.bmp")  # path that does not exist
    lines[2] = lines[2].rsplit(" ", 1)[0] + " abc"
    lines[3] = "Thermal/1/x.bmp 0"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as e:
        RegDB(regdb).train(2)
    probs = e.value.problems
    assert len(probs) == 4
    assert ":1:" in probs[0] and "expected '<relative path> <integer label>'" in probs[0]
    assert "does not exist" in probs[1] and "is not a non-negative integer" in probs[2] and "not under Visible/" in probs[3]


def test_non_contiguous_labels(regdb):
    for m in ("visible", "thermal"):
        p = idx_path(regdb, "train", m, 3)
        p.write_text("".join(line.rsplit(" ", 1)[0] + f" {int(line.rsplit(' ', 1)[1]) * 2}\n" for line in p.read_text().splitlines()))
    with pytest.raises(DatasetError, match="not contiguous"):
        RegDB(regdb).train(3)


def test_missing_idx_file(regdb):
    idx_path(regdb, "test", "thermal", 5).unlink()
    with pytest.raises(DatasetError, match="test_thermal_5.txt: split file not found"):
        RegDB(regdb).test(5)


def test_check_lists_every_problem_of_every_split_file(regdb):
    """`cmemd data check` on RegDB: a problem in one idx file does not hide those of the others, not even
    of the other modality's file of the same trial and split."""
    from cmemd.benchmarks.stats import check_dataset

    broken = {}
    for split, m, t in (("train", "visible", 3), ("train", "thermal", 3), ("test", "visible", 7), ("test", "thermal", 7)):
        p = idx_path(regdb, split, m, t)
        lines = p.read_text().splitlines()
        lines[1] = lines[1].rsplit(" ", 1)[0] + " x"  # a bad label on line 2
        p.write_text("\n".join(lines) + "\n")
        broken[p] = f"{p}:2: label 'x' is not a non-negative integer"
    idx_path(regdb, "test", "thermal", 5).unlink()
    idx_path(regdb, "train", "visible", 9).write_text("Visible/1/none.bmp 0\n")
    problems = check_dataset(regdb)
    want = list(broken.values()) + [f"{idx_path(regdb, 'test', 'thermal', 5)}: split file not found",
                                    f"{idx_path(regdb, 'train', 'visible', 9)}:1: image"]
    for w in want:
        assert sum(p.startswith(w) for p in problems) == 1, (w, problems)
    assert len(problems) == len(want)
    # the readers themselves report both files of a trial at once
    with pytest.raises(DatasetError) as e:
        RegDB(regdb).train(3)
    assert e.value.problems == [broken[idx_path(regdb, "train", m, 3)] for m in ("visible", "thermal")]
    with pytest.raises(DatasetError) as e:
        RegDB(regdb).test(7)
    assert len(e.value.problems) == 2
