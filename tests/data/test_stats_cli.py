from __future__ import annotations

from typer.testing import CliRunner

from cmemd.cli import app
from cmemd.benchmarks.stats import check_dataset, dataset_stats, detect_layout
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
    assert res.exit_code == 2 and "not the root of a known dataset" in res.output
    for expected in ("sysu (SYSU-MM01: cam1..cam6", "regdb (RegDB: Visible/", "llcm (LLCM: idx/train_vis.txt"):
        assert expected in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "x"), "--layout", "market"])
    assert res.exit_code == 2 and "dataset 'market' is unknown" in res.output and "llcm (LLCM" in res.output


def test_llcm_stats_check_and_detect(tmp_path):
    from tests.data.builders import make_llcm

    counts = {("visible", 3, 1): 2, ("visible", 3, 5): 1, ("thermal", 3, 2): 3, ("thermal", 8, 9): 2, ("visible", 8, 4): 1}
    root = make_llcm(tmp_path / "cams" / "llcm", counts, train_ids=(1, 2, 5))
    assert detect_layout(root) == "llcm"
    st = dataset_stats(root)
    assert st["layout"] == "llcm" and st["train_ids"] == 3 and st["test_ids"] == 2
    assert st["splits"]["train (idx lists)"]["by_modality"] == {"thermal": 12, "visible": 12}
    assert st["splits"]["test visible"]["images"] == 4 and st["splits"]["test NIR"]["images"] == 5
    assert st["totals"] == {"visible": 12 + 4, "thermal": 12 + 5}
    res = runner.invoke(app, ["data", "stats", str(root)])
    assert res.exit_code == 0, res.output
    assert "LLCM layout" in res.output and "total (each image once): 33 images | visible=16 thermal=17" in res.output
    assert check_dataset(root) == []
    # problems of the training lists and of the test folders come together, then decoding
    (root / "idx" / "train_vis.txt").write_text("vis/0001/a.jpg 0\n")
    (root / "test_nir" / "cam2" / "0003" / "0003_c02_001.jpg").write_bytes(b"garbage")
    (root / "test_vis" / "cam7" / "0003").mkdir()
    problems = check_dataset(root)
    assert any("train_vis.txt:1" in p and "no cam<c> folder" in p for p in problems), problems
    assert any("cam7/0003: empty id folder" in p for p in problems), problems
    res = runner.invoke(app, ["data", "check", str(root)])
    assert res.exit_code == 1 and "problem(s) found" in res.output


def test_stats_totals_for_every_dataset(tmp_path):
    sysu = make_sysu(tmp_path / "s", COUNTS, train=(1, 2), val=(3,), test=(4,))
    st = dataset_stats(sysu)
    want = {m: sum(n for (p, c), n in COUNTS.items() if (c in (3, 6)) == (m == "thermal")) for m in ("visible", "thermal")}
    assert st["totals"] == want
    regdb = make_regdb(tmp_path / "r", num_ids=6, per_id=2)
    assert dataset_stats(regdb)["totals"] == {"visible": 12, "thermal": 12}
