from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cmemd.cli import app
from tests.engine.conftest import tiny_overrides

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_sysu, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    res = runner.invoke(app, ["train", "-c", "synth_cmemd", *tiny_overrides(tiny_sysu, out, **{"optim.epochs": 1})])
    assert res.exit_code == 0, res.output
    assert "sysu all-search single-shot" in res.output and "R1" in res.output
    return out


def test_train_config_errors(tmp_path):
    res = runner.invoke(app, ["train", "-c", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output
    res = runner.invoke(app, ["train", "-c", "configs/synth_cmemd.yaml", "optim.lrr=1"])
    assert res.exit_code == 2 and "unknown key 'optim.lrr'" in res.output
    res = runner.invoke(app, ["train", "-c", "configs/synth_cmemd.yaml", "data.root=" + str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "root not found" in res.output
    res = runner.invoke(app, ["train", "-c", "configs/synth_cmemd.yaml", "--all-trials"])
    assert res.exit_code == 2 and "--all-trials is for datasets with numbered training splits" in res.output


def test_eval_checkpoint_errors(tmp_path, trained):
    res = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    torch.save({"state_dict": {}}, tmp_path / "imagenet_like.pt")
    res = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "imagenet_like.pt")])
    assert res.exit_code == 2 and "not a cmemd checkpoint" in res.output
    res = runner.invoke(app, ["eval", "--checkpoint", str(trained / "last.pt"), "--protocol", "regdb"])
    assert res.exit_code == 2 and "trained on sysu" in res.output


def test_eval_and_extract_agree(trained, tmp_path):
    res = runner.invoke(app, ["eval", "--checkpoint", str(trained / "last.pt"), "modes=[all]", "trials=3",
                              "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    direct = json.loads((tmp_path / "r.json").read_text())["sysu all-search single-shot"]
    res = runner.invoke(app, ["extract", "--checkpoint", str(trained / "last.pt"), "--out-dir", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval-features", str(tmp_path / "f" / "query.npz"), str(tmp_path / "f" / "gallery_pool.npz"),
                              "--protocol", "sysu", "mode=all", "trials=3", "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    via_features = json.loads((tmp_path / "g.json").read_text())
    assert via_features["mean"] == pytest.approx(direct["mean"], abs=1e-6)
