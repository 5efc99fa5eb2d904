"""Feature files and the `cmemd eval-features` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cmemd.cli import app
from cmemd.errors import EvaluationError
from cmemd.benchmarks.regdb import evaluate_regdb
from cmemd.benchmarks.sysu import evaluate_sysu
from cmemd.evaluation import load_features, save_features
from tests.evaluation.test_protocols import sysu_like


def test_save_load_round_trip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    path = save_features(tmp_path / "q.npz", feats, [1, 2, 3, 4], [3, 3, 6, 6], ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    fs = load_features(path)
    np.testing.assert_array_equal(fs.feats, feats)
    np.testing.assert_array_equal(fs.pids, [1, 2, 3, 4])
    np.testing.assert_array_equal(fs.cams, [3, 3, 6, 6])
    assert list(fs.paths) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"] and len(fs) == 4


def test_missing_array_and_bad_files_are_named(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, feats=np.zeros((2, 2)), pids=np.arange(2), paths=np.array(["a", "b"]))
    with pytest.raises(EvaluationError, match=r"bad.npz: array\(s\) \['cams'\] missing"):
        load_features(p)
    with pytest.raises(EvaluationError, match="feature file not found"):
        load_features(tmp_path / "nope.npz")
    np.savez(p, feats=np.zeros((2, 2)), pids=np.arange(3), cams=np.arange(2), paths=np.array(["a", "b"]))
    with pytest.raises(EvaluationError, match="'pids' must be 1-D with one entry per feature row"):
        load_features(p)
    with pytest.raises(EvaluationError, match="'feats' has 1 row"):
        save_features(tmp_path / "x.npz", np.array([[np.nan, 1.0], [1.0, 1.0]]), [1, 2], [1, 1], ["a", "b"])


def test_cli_sysu_matches_the_library_and_writes_json(tmp_path):
    qf, qp, qc, pf, pp, pc, paths = sysu_like()
    save_features(tmp_path / "q.npz", qf, qp, qc, [f"q{i}.jpg" for i in range(len(qp))])
    save_features(tmp_path / "g.npz", pf, pp, pc, paths)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval-features", str(tmp_path / "q.npz"), str(tmp_path / "g.npz"), "--protocol", "sysu",
                                   "mode=indoor", "shots=10", "trials=3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "SYSU-MM01 indoor-search" in res.output and "mean ± std" in res.output
    lib = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, mode="indoor", shots=10, trials=3)
    data = json.loads(out.read_text())
    assert data["mean"]["mAP"] == pytest.approx(lib.mean["mAP"]) and data["trial_ids"] == [0, 1, 2]


def test_cli_regdb_direction_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(10), 5)
    vis, th = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    save_features(tmp_path / "t.npz", th, ids, np.full(50, 2), [f"t{i}" for i in range(50)])
    save_features(tmp_path / "v.npz", vis, ids, np.full(50, 1), [f"v{i}" for i in range(50)])
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval-features", str(tmp_path / "t.npz"), str(tmp_path / "v.npz"), "--protocol", "regdb",
                                   "direction=t2v", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lib = evaluate_regdb(vis, ids, th, ids, direction="t2v")
    assert json.loads(out.read_text())["mean"]["R1"] == pytest.approx(lib.mean["R1"])
    bad = CliRunner().invoke(app, ["eval-features", str(tmp_path / "t.npz"), str(tmp_path / "missing.npz"), "--protocol", "regdb"])
    assert bad.exit_code == 2 and "missing.npz" in bad.output
    bad = CliRunner().invoke(app, ["eval-features", str(tmp_path / "t.npz"), str(tmp_path / "v.npz"), "--protocol", "market"])
    assert bad.exit_code == 2 and "--protocol 'market' is unknown" in bad.output
