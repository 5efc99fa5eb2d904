"""One writer per run folder: a second run into a folder another process is writing is refused with the holder's
pid before it writes anything; a lock left by a killed process is taken over (issue 24, item 3)."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cmemd.errors import TrainingError
from cmemd.folders import LOCK, lock_folder
from tests.engine.conftest import tiny_overrides, tiny_sysu  # noqa: F401  (tiny_sysu is a fixture)

REPO = Path(__file__).resolve().parents[2]

# holds the lock on argv[1] until killed (or stdin closes); says "locked" once it has it
HOLDER = """
import sys
from cmemd.folders import lock_folder
lock = lock_folder(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def _hold(folder: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=env, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _release(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=30)


def test_a_folder_held_by_another_process_is_refused_with_its_pid(tmp_path):
    folder = tmp_path / "run"
    holder = _hold(folder)
    try:
        with pytest.raises(TrainingError) as err:
            lock_folder(folder)
        assert f"pid {holder.pid}" in str(err.value) and str(folder) in str(err.value)
        # the lock is the kernel's: another open file description in this process is refused too
        fd = os.open(folder / LOCK, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        _release(holder)
    with lock_folder(folder):  # released when the holder exits normally
        assert (folder / LOCK).read_text().strip() == str(os.getpid())


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    holder = _hold(folder)
    assert (folder / LOCK).read_text().strip() == str(holder.pid)  # the dead holder's pid stays in the file
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with lock_folder(folder) as lock:
        assert lock.folder == folder
        assert (folder / LOCK).read_text().strip() == str(os.getpid())


def test_the_lock_is_reentrant_in_one_process_and_free_after_the_last_release(tmp_path):
    folder = tmp_path / "run"
    outer = lock_folder(folder)
    with lock_folder(folder):  # the demo holds its run folder and the training it starts takes it again
        pass
    with pytest.raises(subprocess.CalledProcessError):  # still held by the outer one
        subprocess.run([sys.executable, "-c", HOLDER, str(folder)], input="", capture_output=True, check=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO / "src")), timeout=60)
    outer.release()
    _release(_hold(folder))  # now another process gets it


def test_a_second_training_is_refused_before_it_writes_anything(tiny_sysu, tmp_path):
    from typer.testing import CliRunner

    from cmemd.app.train import train
    from cmemd.cli import app
    from cmemd.config import load_config

    out = tmp_path / "run"
    holder = _hold(out)
    try:
        cfg = load_config(None, tiny_overrides(tiny_sysu, out))
        with pytest.raises(TrainingError, match=f"pid {holder.pid}"):
            train(cfg, progress=False, evaluate_after=False)
        res = CliRunner().invoke(app, ["train", "-c", str(REPO / "configs" / "synth_cmemd.yaml"),
                                       *tiny_overrides(tiny_sysu, out)])
        assert res.exit_code == 2 and f"pid {holder.pid}" in res.output and str(out) in res.output, res.output
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # no config.yaml, environment.json, metrics, ...
        # --resume is refused the same way (it would rewrite the holder's metrics.jsonl)
        with pytest.raises(TrainingError, match=f"pid {holder.pid}"):
            train(cfg, resume=True, progress=False, evaluate_after=False)
    finally:
        _release(holder)


def test_under_ddp_only_rank_0_takes_the_lock(tmp_path, monkeypatch):
    import cmemd.app.train as run
    from cmemd.config import load_config

    out = tmp_path / "run"
    cfg = load_config(None, [f"run.out_dir={out}"])
    monkeypatch.setattr(run, "_train", lambda cfg, **kw: "trained")
    holder = _hold(out)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        assert run.train(cfg) == "trained"  # rank 1 never writes the folder: no lock, no refusal
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(TrainingError, match=f"pid {holder.pid}"):
            run.train(cfg)
    finally:
        _release(holder)
