"""cmemd never deletes a folder it did not make, clears what it regenerates, and checks where an output goes before
the work (issue 24, items 1, 2 and 4). Every refusal must come before any work, so the demo's data generation and
training are replaced by tripwires where the check is meant to fire first."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cmemd.cli import app
from cmemd.config import TrainConfig
from cmemd.data.synth import SynthConfig, generate_sysu
from cmemd.errors import ConfigError
from cmemd.folders import LOCK, MARKER, folder_kind
from tests.engine.conftest import tiny_sysu  # noqa: F401  (fixtures)
from tests.usage.conftest import tiny_checkpoint  # noqa: F401

runner = CliRunner()
SMALL = ["--height", "32", "--width", "16", "--images-min", "1", "--images-max", "2"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fake_dataset(root: Path) -> Path:
    """A user's dataset (SYSU-like, not written by cmemd) with a file of the user's beside it."""
    for cam in ("cam1", "cam3"):
        (root / cam / "0001").mkdir(parents=True)
        (root / cam / "0001" / "0001.jpg").write_bytes(b"\xff\xd8 a real photo " + cam.encode())
    (root / "exp").mkdir()
    (root / "exp" / "train_id.txt").write_text("1\n")
    (root / "my_notes.txt").write_text("two years of labelling\n")
    return root


def _no_work(monkeypatch) -> None:
    """Tripwires: the demo's data generation and training must not start."""
    import cmemd.app.train as train
    import cmemd.data.synth as synth

    def boom(*a, **k):
        raise AssertionError("the work started before the folder check")

    monkeypatch.setattr(synth, "generate_sysu", boom)
    monkeypatch.setattr(train, "train", boom)


# --------------------------------------------------------------------------- cmemd demo


def test_demo_refuses_a_users_dataset_as_data_dir(tmp_path, monkeypatch):
    data = _fake_dataset(tmp_path / "sysu")
    before = _tree(data)
    _no_work(monkeypatch)
    res = runner.invoke(app, ["demo", "--data-dir", str(data), "--out-dir", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert f"--data-dir {data}" in res.output and "did not write" in res.output and "my_notes.txt" in res.output
    assert _tree(data) == before  # the dataset and the user's file survive, byte for byte
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_demo_out_dir_dot_in_a_folder_of_files_deletes_nothing(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "src.py").write_text("print('my code')\n")
    (tmp_path / "config.yaml").write_text("mine: true\n")  # a config.yaml alone does not make a run folder
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    _no_work(monkeypatch)
    res = runner.invoke(app, ["demo", "--out-dir", ".", "--data-dir", "data"])
    assert res.exit_code == 2, res.output
    assert "--out-dir ." in res.output and "did not write" in res.output
    assert _tree(tmp_path) == before and not (tmp_path / "data").exists()


def test_demo_refuses_a_file_as_out_dir_and_a_dataset_as_run_folder(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    f = tmp_path / "results.txt"
    f.write_text("keep")
    res = runner.invoke(app, ["demo", "--out-dir", str(f), "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 2 and "is a file" in res.output and f.read_text() == "keep"
    synth_set = tmp_path / "set"
    synth_set.mkdir()
    (synth_set / MARKER).write_text(json.dumps({"kind": "dataset", "made_by": "test"}))
    (synth_set / "cam1").mkdir()
    res = runner.invoke(app, ["demo", "--out-dir", str(synth_set), "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 2 and "a cmemd dataset folder, not a run folder" in res.output
    assert (synth_set / "cam1").is_dir()


def test_demo_refuses_another_tools_run_folder(tmp_path, monkeypatch):
    """config.yaml + metrics.jsonl + last.pt of another training tool is not a cmemd run folder."""
    run = tmp_path / "their_run"
    run.mkdir()
    (run / "config.yaml").write_text("lr: 0.1\nmodel: resnet50\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / "last.pt").write_bytes(b"PK\x03\x04 a torch zip")
    before = _tree(run)
    _no_work(monkeypatch)
    res = runner.invoke(app, ["demo", "--out-dir", str(run), "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 2 and "did not write" in res.output, res.output
    assert _tree(run) == before


def _legacy_run(folder: Path) -> None:
    """A run folder as cmemd wrote it before the marker existed, plus a file of the user's."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(TrainConfig().to_dict(), sort_keys=False))
    (folder / "last.pt").write_bytes(b"CMEMD-CKPT 1 00 0\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "report").mkdir()
    (folder / "report" / "index.html").write_text("<html>")
    (folder / "notes.md").write_text("what I tried\n")


def test_demo_replaces_its_own_earlier_folders_and_keeps_foreign_files(tmp_path, monkeypatch):
    import cmemd.app.train as train

    data, out = tmp_path / "data" / "demo", tmp_path / "runs" / "demo"
    old = SynthConfig(ids=4, images_per_camera=(1, 1), height=32, width=16, seed=9)
    generate_sysu(data, old)
    (data / MARKER).unlink()  # a set generated before the marker: its synth_summary.json is the mark
    (data / "cam1" / "0004" / "stale.jpg").write_bytes(b"old")
    _legacy_run(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    (out / "tensorboard").symlink_to(elsewhere)  # a link among the run's entries: removed, never followed
    assert folder_kind(data) == "dataset" and folder_kind(out) == "run"
    seen = {}

    def stop(cfg, **kw):  # the demo's training: look at the folders, then stop the demo there
        seen["out"] = sorted(p.name for p in out.iterdir())
        seen["lock"] = (out / LOCK).read_text().strip()  # held while the demo trains and evaluates
        seen["summary"] = json.loads((data / "synth_summary.json").read_text())
        raise ConfigError("stopped by the test before training")

    monkeypatch.setattr(train, "train", stop)
    res = runner.invoke(app, ["demo", "--data-dir", str(data), "--out-dir", str(out), "--ids", "3"])
    assert res.exit_code == 2 and "stopped by the test" in res.output, res.output
    assert seen["out"] == sorted([LOCK, MARKER, "notes.md"])  # the old run's files gone, the user's note kept
    assert seen["lock"] == str(os.getpid()) and (out / LOCK).read_text() == ""  # released at the end
    assert (elsewhere / "precious.txt").read_text() == "keep"
    assert "keeps entries cmemd did not write: notes.md" in res.output
    assert json.loads((out / MARKER).read_text())["kind"] == "run"
    # the data folder holds exactly the new set: no image of the old one (ids 4, stale.jpg) survived
    assert seen["summary"]["n_ids"] == 3 and not (data / "cam1" / "0004").exists()
    images = [p for p in data.rglob("*.jpg")]
    assert len(images) == seen["summary"]["total"]


# --------------------------------------------------------------------------- cmemd data synth --force


def test_synth_force_replaces_its_own_set_without_stale_images(tmp_path):
    out = tmp_path / "set"
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--ids", "6", "--seed", "1", *SMALL])
    assert res.exit_code == 0, res.output
    first = len(list(out.rglob("*.jpg")))
    (out / "README.txt").write_text("my notes about this set\n")
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--ids", "3", "--seed", "2", "--force", *SMALL])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "synth_summary.json").read_text())
    images = list(out.rglob("*.jpg"))
    assert f"wrote {summary['total']} images" in res.output
    assert len(images) == summary["total"] < first  # what it says it wrote is what is there
    assert {int(p.parent.name) for p in images} == {1, 2, 3}
    assert (out / "README.txt").read_text() == "my notes about this set\n"  # not the generator's: kept
    res = runner.invoke(app, ["data", "stats", str(out)])
    assert f"total (each image once): {summary['total']} images" in res.output, res.output


def test_synth_force_refuses_a_folder_it_did_not_make(tmp_path):
    data = _fake_dataset(tmp_path / "real")
    before = _tree(data)
    res = runner.invoke(app, ["data", "synth", "--out", str(data), "--ids", "3", "--force", *SMALL])
    assert res.exit_code == 2, res.output
    assert f"--out {data}" in res.output and "did not write" in res.output
    assert _tree(data) == before
    with pytest.raises(ConfigError, match="did not write"):  # the library refuses too
        generate_sysu(data, SynthConfig(ids=3, images_per_camera=(1, 1), height=32, width=16))
    assert _tree(data) == before
    f = tmp_path / "file"
    f.write_text("x")
    res = runner.invoke(app, ["data", "synth", "--out", str(f), "--force", *SMALL])
    assert res.exit_code == 2 and "is a file" in res.output and f.read_text() == "x"


def test_an_interrupted_generation_is_still_recognised_as_ours(tmp_path):
    out = tmp_path / "set"
    generate_sysu(out, SynthConfig(ids=3, images_per_camera=(1, 1), height=32, width=16))
    (out / "synth_summary.json").unlink()  # a generation killed before its summary
    assert folder_kind(out) == "dataset"  # the marker, written before the first image
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--ids", "3", "--force", *SMALL])
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------- outputs checked before the work


def test_eval_checks_its_outputs_before_evaluating(tmp_path, tiny_checkpoint, monkeypatch):
    import cmemd.app.evaluate as evaluate

    def boom(*a, **k):
        raise AssertionError("evaluated before the output check")

    monkeypatch.setattr(evaluate, "evaluate_model", boom)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--out", str(tmp_path / "missing" / "x.json")], "does not exist"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(a_file / "x.json")], "is a file"),
        (["--out", "/proc/x.json"], "cannot write"),
        (["--report", str(a_file)], "is a file"),
        (["--report", str(a_file / "sub" / "report")], "is a file"),
        (["--report", "/proc/cmemd-report"], "cannot write"),
    ]
    for args, why in cases:
        res = runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), *args])
        assert res.exit_code == 2 and args[0] in res.output and why in res.output, (args, res.output)
    monkeypatch.undo()
    good = tmp_path / "results.json"
    res = runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--out", str(good), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(good.read_text())  # a writable path still gets the results


def test_extract_and_eval_features_check_their_outputs_first(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # the checkpoint does not exist: the output check must fire before it is even opened
    res = runner.invoke(app, ["extract", "--checkpoint", str(tmp_path / "none.pt"), "--out-dir", str(a_file)])
    assert res.exit_code == 2 and "--out-dir" in res.output and "is a file" in res.output, res.output
    res = runner.invoke(app, ["eval-features", str(tmp_path / "q.npz"), str(tmp_path / "g.npz"), "--protocol", "sysu",
                              "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is a folder" in res.output, res.output


@pytest.mark.parametrize("signum,code", [(2, 130), (15, 143)])
def test_demo_interrupted_in_training_says_so_and_exits_with_the_signals_code(tmp_path, monkeypatch, signum, code):
    """Ctrl-C / SIGTERM during the demo's training: one clear line and the shell's code, not a traceback."""
    import cmemd.app.demo as demo
    from cmemd.app.runtime import TrainingInterrupted

    def interrupted(**_):
        raise TrainingInterrupted(signum, 0, 3, tmp_path / "runs" / "last.pt")

    monkeypatch.setattr(demo, "run_demo", interrupted)
    res = runner.invoke(app, ["demo", "--data-dir", str(tmp_path / "d"), "--out-dir", str(tmp_path / "runs")])
    assert res.exit_code == code, res.output
    assert "demo interrupted" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception  # no traceback
