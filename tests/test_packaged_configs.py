"""Configs ship inside the package and are addressable by name; a file path still works and wins."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cmemd
from cmemd.cli import app
from cmemd.config import load_config, packaged_configs, resolve_config
from cmemd.errors import ConfigError

PACKAGE_DIR = Path(cmemd.__file__).resolve().parent / "configs"
NAMES = sorted(p.stem for p in PACKAGE_DIR.glob("*.yaml"))


def _leading_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return " ".join(lines)


def test_every_yaml_in_the_package_is_listed_with_its_comment():
    assert {"synth_cmemd", "sysu_cmemd", "regdb_cmemd", "synth_baseline", "sysu_baseline"} <= set(NAMES)
    found = packaged_configs()
    assert list(found) == NAMES
    for name in NAMES:
        comment = _leading_comment(PACKAGE_DIR / f"{name}.yaml")
        desc = found[name]
        # one sentence: the start of the comment, up to its first full stop
        assert desc and comment.startswith(desc) and desc.endswith("."), (name, desc)
        assert ". " not in desc.rstrip(".")


@pytest.mark.parametrize("name", NAMES)
def test_a_name_loads_the_packaged_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing called configs/ here: the names must not depend on the current folder
    direct = load_config(PACKAGE_DIR / f"{name}.yaml")
    assert load_config(name) == direct
    assert load_config(f"{name}.yaml") == direct
    # the repository's old location keeps working, relative or absolute
    assert load_config(f"configs/{name}.yaml") == direct
    assert load_config(tmp_path / "configs" / f"{name}.yaml") == direct


def test_packaged_base_chain_resolves_by_name():
    # regdb_cmemd says `base: sysu_cmemd.yaml`: the packaged one, whatever the current folder holds
    sysu = yaml.safe_load((PACKAGE_DIR / "sysu_cmemd.yaml").read_text())
    cfg = load_config("regdb_cmemd")
    assert cfg.data.dataset == "regdb" and cfg.model.arch == sysu["model"]["arch"]
    assert cfg.optim.epochs == sysu["optim"]["epochs"] and cfg.data.height == sysu["data"]["height"]


def test_a_file_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("sysu_cmemd.yaml").write_text("model:\n  arch: resnet18\n")
    assert load_config("sysu_cmemd.yaml").model.arch == "resnet18"  # the file in the current folder
    assert load_config("sysu_cmemd").model.arch == "resnet50"  # the bare name: the packaged config
    Path("configs").mkdir()
    Path("configs/synth_cmemd.yaml").write_text("model:\n  width: 16\n")
    assert load_config("configs/synth_cmemd.yaml").model.width == 16  # a real file at the old location wins too


def test_user_file_with_a_named_base(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: synth_cmemd\noptim:\n  epochs: 2\n")
    cfg = load_config(tmp_path / "mine.yaml")
    ref = load_config("synth_cmemd", ["optim.epochs=2"])
    assert cfg == ref
    # with .yaml too, and a file beside it of that name wins over the packaged one
    (tmp_path / "mine2.yaml").write_text("base: sysu_cmemd.yaml\n")
    assert load_config(tmp_path / "mine2.yaml") == load_config("sysu_cmemd")
    (tmp_path / "sysu_cmemd.yaml").write_text("model:\n  arch: resnet18\n")
    assert load_config(tmp_path / "mine2.yaml").model.arch == "resnet18"


def test_unknown_names_and_paths_are_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"sysu_cmemdd: config file not found.*one of: .*sysu_cmemd"):
        load_config("sysu_cmemdd")
    # a path outside configs/ naming a packaged file is a typo, not a packaged config
    with pytest.raises(ConfigError, match="runs/synth_cmemd.yaml: config file not found"):
        load_config("runs/synth_cmemd.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="too deep"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml: config file not found \(looked beside"):
        load_config(tmp_path / "c.yaml")
    assert resolve_config(tmp_path / "a.yaml") == tmp_path / "a.yaml"


def test_cli_configs_and_version():
    runner = CliRunner()
    res = runner.invoke(app, ["configs"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines() if line.strip()}
    for name, desc in packaged_configs().items():
        assert name in lines and lines[name].split(None, 1)[1].strip() == desc
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"cmemd {importlib.metadata.version('cmemd')}"
    assert cmemd.__version__ == importlib.metadata.version("cmemd")


def test_synth_cmemd_global_is_the_studys_measured_row():
    # the demo's config is the alignment study's bn1_global row (experiments/alignment_study), at the demo's budget
    study = Path(__file__).resolve().parents[1] / "experiments" / "alignment_study" / "configs"
    budget = yaml.safe_load((study / "study_budget.yaml").read_text())
    budget.pop("base")
    row = load_config(study / "space" / "bn1_global.yaml").to_dict()
    mine = load_config("synth_cmemd_global").to_dict()
    for section, values in budget.items():  # the study's budget is not the demo's
        for key in values:
            row[section].pop(key), mine[section].pop(key)
    assert {k: v for k, v in mine.items() if k != "run"} == {k: v for k, v in row.items() if k != "run"}
