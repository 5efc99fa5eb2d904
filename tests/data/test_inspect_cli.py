from __future__ import annotations

from typer.testing import CliRunner

from cmemd.cli import app
from cmemd.data.inspect import check_dataset, dataset_stats, detect_layout
from tests.data.builders import make_regdb, make_sysu

runner = CliRunner()
COUNTS = {(p, c): 2 + (p + c) % 3 for p in (1, 2, 3, 4) for c in range(1, 7)}


def test_stats_counts(tmp_path):
    root = make_sysu(tmp_path / "s", COUNTS, train=(1, 2), val=(3,), test=(4,))
    st = dataset_stats(root)
    assert st["layout"] == "sysu" and st["train_ids"] == 2 and st["test_ids"] == 1
    train = st["splits"]["train (train+val)"]
    assert train["images"] == sum(n for (p, _), n in COUNTS.items() if p < 4)
    assert train["by_camera"] == {c: sum(n for (p, cc), n in COUNTS.items() if cc == c and p < 4) for c in range(1, 7)}
    res = runner.invoke(app, ["data", "stats", str(root)])
    assert res.exit_code == 0, res.output
    assert "cam3=" in res.output and "thermal=" in res.output


def test_check_reports_all_problems(tmp_path):
    root = make_sysu(tmp_path / "s", COUNTS, train=(1, 2), val=(3,), test=(4,))
    assert check_dataset(root) == []
    (root / "cam1" / "0001" / "0001.jpg").write_bytes(b"garbage")
    (root / "exp" / "val_id.txt").write_text("3;4")
    problems = check_dataset(root)
    assert len(problems) == 1 and "val_id.txt" in problems[0]  # structure first; decode runs on what loaded
    (root / "exp" / "val_id.txt").write_text("3")
    problems = check_dataset(root)
    assert len(problems) == 1 and "cam1/0001/0001.jpg: image does not decode" in problems[0]
    res = runner.invoke(app, ["data", "check", str(root)])
    assert res.exit_code == 1 and "does not decode" in res.output


def test_regdb_check_and_detect(tmp_path):
    root = make_regdb(tmp_path / "r", num_ids=6, per_id=2)
    assert detect_layout(root) == "regdb"
    assert check_dataset(root) == []
    res = runner.invoke(app, ["data", "check", str(root)])
    assert res.exit_code == 0 and "OK" in res.output
    (root / "idx" / "train_thermal_4.txt").write_text("Thermal/1/nothing.bmp 0\n")
    problems = check_dataset(root)
    assert any("train_thermal_4.txt:1" in p for p in problems)


def test_unknown_root(tmp_path):
    (tmp_path / "x").mkdir()
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "x")])
    assert res.exit_code == 2 and "neither a SYSU-MM01 root" in res.output
