"""experiments/alignment_study: the finished study is what its configs say, and its page is what its runs give.

The rows are YAML configs (``configs/<group>/<row>.yaml``, ``base:`` chains ending at the packaged synth_cmemd) and
the finished runs committed JSON files; the driver skips a run whose file holds the settings its row asks for now.
These tests check that every committed run still counts as finished (a rerun trains nothing: a change to a packaged
config that moved a row would show here), that the plan is exactly the committed runs, and that the report page
rebuilt from them is the committed one.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "alignment_study"
sys.path.insert(0, str(STUDY))  # study.py imports its sibling report.py
spec = importlib.util.spec_from_file_location("alignment_study_driver", STUDY / "study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def committed_runs() -> set[tuple[str, str, int]]:
    return {(f.parts[-3], f.parts[-2], int(f.stem.removeprefix("seed"))) for f in STUDY.glob("runs/*/*/seed*.json")}


def test_every_committed_run_is_finished_and_the_plan_is_exactly_them():
    runs = committed_runs()
    assert len(runs) > 100
    assert set(study.plan(list(study.GROUPS))) == runs
    for group, row, seed in sorted(runs):
        rec = study.finished(group, row, seed)
        assert rec is not None, f"{group}/{row} seed {seed}: its run file no longer matches {group}/{row}.yaml"
        assert (rec["group"], rec["row"], rec["seed"]) == (group, row, seed)


def test_every_row_is_a_loadable_config_with_a_label():
    from cmemd.config import load_config

    files = {p for p in STUDY.glob("configs/*/*.yaml")}
    named = {f for g in study.GROUPS.values() for _, f in g["rows"].values()}
    assert files == named  # no config that no group names, no row without its file
    for g in study.GROUPS.values():
        for label, f in g["rows"].values():
            assert label and not label.startswith("#")
            assert load_config(f).loss.alignment in ("none", "cmemd", "all-pairs", "hetero-center", "mmd")


def test_a_changed_setting_is_not_finished(monkeypatch, tmp_path):
    """The skip is not unconditional: a run file holding another value than its row asks for is run again."""
    group, row, seed = "core", "baseline", 0
    rec = json.loads(study.run_path(group, row, seed).read_text())
    changed = tmp_path / "seed0.json"
    for value, expect_finished in ((rec["config"]["loss"]["lambda_triplet"], True),
                                   (rec["config"]["loss"]["lambda_triplet"] + 1, False)):
        rec["config"]["loss"]["lambda_triplet"] = value
        changed.write_text(json.dumps(rec))
        monkeypatch.setattr(study, "run_path", lambda *a: changed)
        assert (study.finished(group, row, seed) is not None) == expect_finished


def test_report_rebuilt_from_the_runs_is_the_committed_page(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    from report import write

    shutil.copy(STUDY / "notes.md", tmp_path / "notes.md")
    write(study.GROUPS, study.load_runs, tmp_path / "README.md", tmp_path, study.COMMAND, None)
    assert (tmp_path / "README.md").read_text() == (STUDY / "README.md").read_text()
    assert (tmp_path / "variation.png").is_file()
