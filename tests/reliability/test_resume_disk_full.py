"""A disk that is full when ``--resume`` starts: a clear error naming the file, nothing of the run changed, no temp
file left behind (issue 24, item 5). The full disk is simulated as in tests/engine/test_checkpoint.py: the write
system call fails with ENOSPC."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from cmemd.engine.trainer import _truncate_metrics
from cmemd.errors import TrainingError
from cmemd.folders import write_atomic
from tests.engine.conftest import tiny_overrides, tiny_sysu  # noqa: F401  (tiny_sysu is a fixture)


def _disk_full_for(monkeypatch, fragment: str) -> None:
    """``os.write`` fails with ENOSPC for files whose path contains ``fragment`` (every file for "")."""
    real = os.write

    def write(fd, data):
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _metrics(path: Path, steps) -> bytes:
    path.write_text("".join(json.dumps({"kind": "step", "step": s, "loss": 1.0 / s}) + "\n" for s in steps))
    return path.read_bytes()


@pytest.mark.parametrize("fail", ["write", "fsync", "replace"])
def test_truncating_the_metrics_on_a_full_disk_changes_nothing(tmp_path, monkeypatch, fail):
    path = tmp_path / "metrics.jsonl"
    before = _metrics(path, range(1, 9))
    full = OSError(errno.ENOSPC, "No space left on device")
    if fail == "write":
        _disk_full_for(monkeypatch, "")
    else:
        monkeypatch.setattr(os, fail, lambda *a, **k: (_ for _ in ()).throw(full))
    with pytest.raises(TrainingError) as err:
        _truncate_metrics(path, 4)
    msg = str(err.value)
    assert str(path) in msg and "No space left" in msg and "checkpoint and the metrics log are intact" in msg
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no 0-byte temp file left
    _truncate_metrics(path, 4)  # space again: the lines after the checkpoint's step go
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_on_a_full_disk_leaves_the_run_as_it_was(tiny_sysu, tmp_path, monkeypatch):  # noqa: F811
    from cmemd.app.train import train
    from cmemd.config import load_config

    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(tiny_sysu, out, **{"optim.epochs": 1})), progress=False,
          evaluate_after=False)
    with open(out / "metrics.jsonl", "a") as f:  # lines after the checkpoint, as a killed run leaves them
        f.write(json.dumps({"kind": "step", "epoch": 1, "step": 10 ** 6, "loss": 1.0}) + "\n")
    before = _snapshot(out)
    resumed = load_config(None, tiny_overrides(tiny_sysu, out, **{"optim.epochs": 2}))
    # the first write of a resume (environment.json), then the metrics rewrite itself
    for fragment, named in (("", "environment.json"), ("metrics.jsonl", "metrics.jsonl")):
        _disk_full_for(monkeypatch, fragment)
        with pytest.raises(TrainingError) as err:
            train(resumed, resume=True, progress=False, evaluate_after=False)
        monkeypatch.undo()
        msg = str(err.value)
        assert str(out / named) in msg and "No space left" in msg and "intact" in msg, msg
        after = _snapshot(out)
        if named == "metrics.jsonl":  # environment.json was rewritten (there was space for it): the rest is as it was
            after.pop("environment.json"), before.pop("environment.json")
        assert after == before  # last.pt, last.prev.pt, config.yaml, metrics.jsonl (its extra line too), lock
        assert not list(out.glob(".*.tmp-*")) and not list(out.glob("*.tmp"))


def test_a_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "metrics.jsonl"
    dead = tmp_path / ".metrics.jsonl.tmp-999999999"  # beyond pid_max: no such process
    dead.write_text("half")
    alive = tmp_path / f".metrics.jsonl.tmp-{os.getppid()}"  # a live writer's file is left alone
    alive.write_text("in progress")
    write_atomic(path, "x\n")
    assert path.read_text() == "x\n" and not dead.exists() and alive.exists()
