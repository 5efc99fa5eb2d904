"""LLCM end to end on the synthetic LLCM layout: generate, train, evaluate both directions over 10 trials,
extract, evaluate the saved features, report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cmemd.cli import app
from cmemd.data.llcm import LLCM
from cmemd.data.synth import SynthConfig, generate_llcm
from tests.engine.conftest import tiny_overrides

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_llcm(tmp_path_factory):
    root = tmp_path_factory.mktemp("llcm") / "camdata" / "llcm"  # "cam" in the root path must not matter
    summary = generate_llcm(root, SynthConfig(ids=10, images_per_camera=(1, 2), height=32, width=16, seed=4,
                                              split=(0.5, 0.1, 0.4)))
    return root, summary


@pytest.fixture(scope="module")
def trained(tiny_llcm, tmp_path_factory):
    root, _ = tiny_llcm
    out = tmp_path_factory.mktemp("llcm_run") / "run"
    res = runner.invoke(app, ["train", "-c", "llcm_cmemd",
                              *tiny_overrides(root, out, **{"optim.epochs": 1, "eval.trials": 10,
                                                             "model.pretrained": "null"})])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_generated_layout_reads_back(tiny_llcm):
    root, summary = tiny_llcm
    ds = LLCM(root)
    assert ds.test_ids == summary["ids"]["test"]
    train = ds.train()
    assert sum(r.modality == "visible" for r in train) == summary["images"]["train"]["visible"]
    assert sum(r.modality == "thermal" for r in train) == summary["images"]["train"]["thermal"]
    assert len(ds.test("visible")) == summary["images"]["test"]["visible"]
    assert len(ds.test("thermal")) == summary["images"]["test"]["thermal"]
    assert not any(r.camid == 3 for r in ds.test("thermal"))  # no NIR cam3, as the authors' code lists none


def test_train_evaluates_both_directions_over_ten_trials(trained, tiny_llcm):
    out, output = trained
    assert "training on LLCM " in output and "LLCM has no validation split" in output
    assert "LLCM t2v (IR->VIS" in output and "LLCM v2t (VIS->IR" in output
    results = json.loads((out / "results.json").read_text())
    _, summary = tiny_llcm
    n_test = len(summary["ids"]["test"])
    for name in ("llcm t2v", "llcm v2t"):
        r = results[name]
        assert r["trial_ids"] == list(range(10)) and len(r["trials"]) == 10
        assert r["settings"]["removal"] == "same-pid-same-cam" and r["settings"]["cmc"] == "identity-dedup"
        assert 0.0 <= r["mean"]["R1"] <= 1.0 and r["mean"]["R20"] == 1.0  # fewer than 20 test ids: all found by rank 20
        assert n_test < 20
    assert "modality_gap" in results


def test_eval_extract_and_features_agree(trained, tmp_path):
    out, _ = trained
    res = runner.invoke(app, ["eval", "--checkpoint", str(out / "last.pt"), "directions=[t2v, v2t-authors]",
                              "trials=3", "--out", str(tmp_path / "r.json"),
                              "--report", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    assert "transposed" in res.output  # which VIS->IR ran is printed
    direct = json.loads((tmp_path / "r.json").read_text())
    assert set(direct) == {"llcm t2v", "llcm v2t-authors", "modality_gap"}
    assert (tmp_path / "report" / "index.html").is_file()
    res = runner.invoke(app, ["extract", "--checkpoint", str(out / "last.pt"), "--out-dir", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    f = tmp_path / "f"
    for direction, (q, g) in {"t2v": ("thermal", "visible"), "v2t-authors": ("visible", "thermal")}.items():
        res = runner.invoke(app, ["eval-features", str(f / f"{q}.npz"), str(f / f"{g}.npz"), "--protocol", "llcm",
                                  f"direction={direction}", "trials=3", "--out", str(tmp_path / "g.json")])
        assert res.exit_code == 0, res.output
        via = json.loads((tmp_path / "g.json").read_text())
        for k, v in direct[f"llcm {direction}"]["mean"].items():
            assert via["mean"][k] == pytest.approx(v, abs=1e-6), (direction, k)
    res = runner.invoke(app, ["train", "-c", "llcm_cmemd", "run.selection=val",
                              f"data.root={out}", f"run.out_dir={tmp_path / 'x'}", "model.pretrained=null"])
    assert res.exit_code == 2 and "LLCM has none" in res.output
    assert np.isfinite(direct["llcm t2v"]["mean"]["mAP"])
    # re-ranking is not implemented for LLCM: said, never silently skipped
    res = runner.invoke(app, ["eval", "--checkpoint", str(out / "last.pt"), "--rerank", "trials=1"])
    assert res.exit_code == 2 and "not implemented for the LLCM protocol" in res.output
