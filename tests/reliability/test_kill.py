"""A training run SIGKILLed at random points and resumed with ``--resume`` ends where an uninterrupted run ends;
one stopped by SIGINT / SIGTERM saves where it stopped, exits 130 / 143 and prints the command that resumes it.

One uninterrupted CLI run is the reference. A second run of the same command is killed
(seeded random points) inside steps, inside a checkpoint write (``CMEMD_TEST_SLOW_CHECKPOINT_WRITE``
holds the temp file open), and inside the final evaluation, with a damaged ``last.pt`` thrown in;
each time it is rerun with ``--resume``. The final weights and every logged step loss must be
bit-identical to the reference (CPU, deterministic settings, one thread), ``last.pt`` must always
be a complete checkpoint, and ``metrics.jsonl`` must hold each step once.
"""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmemd.engine.checkpoint import previous_path, read_checkpoint
from tests.engine.conftest import tiny_overrides, tiny_sysu  # noqa: F401  (tiny_sysu is a fixture)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "synth_cmemd.yaml"

# `python -m cmemd` with evaluate_model wrapped: when KILLTEST_EVAL_MARK is set, it touches that file,
# evaluates, then sleeps before returning, so that a kill lands inside evaluation (before results.json).
LAUNCHER = """
import os, sys, time
import cmemd.app.train as train
_real = train.evaluate_model
def _wrapped(*a, **k):
    mark = os.environ.get("KILLTEST_EVAL_MARK")
    if mark:
        open(mark, "w").close()
    out = _real(*a, **k)
    if mark:
        time.sleep(60)
    return out
train.evaluate_model = _wrapped  # the name train() calls
sys.argv[0] = "cmemd"
from cmemd.cli import main
main()
"""


def _overrides(root, out) -> list[str]:
    return tiny_overrides(root, out, **{"run.threads": 1, "run.checkpoint_every_steps": 1})


def _env(**extra) -> dict:
    # this checkout's src first: the subprocess must run the code under test, not whatever cmemd is installed
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
               PYTHONWARNINGS="default")
    env.pop("CMEMD_TEST_SLOW_CHECKPOINT_WRITE", None)
    env.update(extra)
    return env


def _start(args: list[str], log: Path, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-c", LAUNCHER, "train", "-c", str(CONFIG), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _step_records(out: Path) -> list[dict]:
    recs = []
    p = out / "metrics.jsonl"
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass  # a line being written right now
    return recs


def _steps_logged(out: Path) -> int:
    return max((r["step"] for r in _step_records(out) if r.get("kind") == "step"), default=0)


def _kill_when(proc: subprocess.Popen, ready, *, delay: float = 0.0, timeout: float = 90.0) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` turns true; fails if it exits first."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill point"
        assert time.time() - t0 < timeout, "kill point never reached"
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _assert_last_is_whole(out: Path) -> int:
    """``last.pt`` is a complete, verified checkpoint (never a half-written temp file)."""
    state = read_checkpoint(out / "last.pt")  # no fallback: the newest file itself must verify
    return int(state["step"])


def test_sigkill_anywhere_then_resume_matches_uninterrupted(tiny_sysu, tmp_path):  # noqa: F811
    rng = random.Random(9)
    ref_out, out = tmp_path / "ref", tmp_path / "killed"

    ref = subprocess.run([sys.executable, "-m", "cmemd", "train", "-c", str(CONFIG), *_overrides(tiny_sysu, ref_out)],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    ref_state = read_checkpoint(ref_out / "last.pt")
    total = int(ref_state["step"])
    per_epoch = total // 2
    assert per_epoch >= 8, "the tiny set should give enough steps per epoch for several kill points"
    args = _overrides(tiny_sysu, out)
    logs = iter(tmp_path / f"log{i}.txt" for i in range(10))

    # 1. fresh run, killed inside a step of epoch 1
    k1 = rng.randint(2, per_epoch - 3)
    _kill_when(_start(args, next(logs)), lambda: _steps_logged(out) >= k1, delay=rng.uniform(0, 0.2))
    at = _assert_last_is_whole(out)

    # 2. resumed, killed inside a step of epoch 2
    k2 = rng.randint(max(at, per_epoch) + 2, total - 6)
    _kill_when(_start(args + ["--resume"], next(logs)), lambda: _steps_logged(out) >= k2, delay=rng.uniform(0, 0.2))
    at = _assert_last_is_whole(out)
    assert at >= k2 - 1

    # 3. last.pt damaged (a copy cut short): resume must name it, fall back to last.prev.pt and say so;
    #    then killed inside a checkpoint write (temp file written, not yet renamed)
    prev_step = int(read_checkpoint(previous_path(out / "last.pt"))["step"])
    data = (out / "last.pt").read_bytes()
    # a NEW file cut short (as a copy would be): writing in place would also cut last.prev.pt whenever the previous
    # kill landed between the hard link and the rename, when both names still point at one inode
    (out / "last.pt").unlink()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    log3 = next(logs)
    p3 = _start(args + ["--resume"], log3, CMEMD_TEST_SLOW_CHECKPOINT_WRITE="0.8")
    k3 = at + rng.randint(1, 3)
    tmp_name = out / f".last.pt.tmp-{p3.pid}"
    _kill_when(p3, lambda: _steps_logged(out) >= k3 and tmp_name.exists(), delay=rng.uniform(0, 0.3))
    text = log3.read_text()
    assert "last.pt" in text and "truncated checkpoint" in text and "previous good checkpoint" in text, text
    assert f"resumed from {previous_path(out / 'last.pt')}" in text and f"step {prev_step}" in text, text
    at = _assert_last_is_whole(out)
    # the write in flight was complete in its temp file but never became last.pt
    assert int(read_checkpoint(tmp_name)["step"]) == at + 1 >= k3

    # 4. resumed, trains to the end, killed inside the final evaluation (before results.json)
    mark = tmp_path / "evaluating"
    _kill_when(_start(args + ["--resume"], next(logs), KILLTEST_EVAL_MARK=str(mark)), mark.exists,
               delay=rng.uniform(0, 0.3))
    assert not (out / "results.json").exists()
    assert _assert_last_is_whole(out) == total

    # 5. resumed once more: nothing left to train, so it only evaluates
    log5 = next(logs)
    p5 = _start(args + ["--resume"], log5)
    assert p5.wait(timeout=120) == 0, log5.read_text()
    assert f"epoch 3, batch 0, step {total}" in log5.read_text()
    assert json.loads((out / "results.json").read_text()).keys() == json.loads((ref_out / "results.json").read_text()).keys()

    # final weights are bit-identical to the uninterrupted run's
    state = read_checkpoint(out / "last.pt")
    assert state["model"].keys() == ref_state["model"].keys()
    for k, v in ref_state["model"].items():
        assert torch.equal(state["model"][k], v), k
    # every step is logged exactly once, with the same loss as in the uninterrupted run
    recs, ref_recs = _step_records(out), _step_records(ref_out)
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    assert [r["loss"] for r in steps] == [r["loss"] for r in ref_recs if r["kind"] == "step"]
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [0, 1]
    # no temp file of a killed writer is left behind
    assert not list(out.glob(".*.tmp-*")), list(out.iterdir())


def _interrupt_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 90.0) -> int:
    """Send ``sig`` to ``proc`` once ``ready()`` is true; its exit code."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the signal"
        assert time.time() - t0 < timeout, "signal point never reached"
        time.sleep(0.01)
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def _printed_command(log: Path) -> list[str]:
    """The resume command the run printed, made runnable here (``cmemd`` / ``python -m cmemd`` -> this Python)."""
    text = log.read_text()
    line = next(x for x in text.splitlines() if "resume with: " in x)
    cmd = shlex.split(line.split("resume with: ", 1)[1])
    if cmd[0] == "cmemd":
        return [sys.executable, "-m", "cmemd", *cmd[1:]]
    assert cmd[:3] == ["python", "-m", "cmemd"], cmd
    return [sys.executable, *cmd[1:]]


def test_sigint_sigterm_save_print_the_resume_command_and_resume_bit_identically(tiny_sysu, tmp_path):  # noqa: F811
    """SIGINT inside epoch 1, then SIGTERM inside epoch 2 of the resumed run: each exits 130 / 143 with a
    mid-epoch checkpoint at the step it names (no periodic checkpoints here: only the interruption saves inside an
    epoch), and the printed command finishes the run with the uninterrupted run's weights and step losses."""
    ref_out, out = tmp_path / "ref", tmp_path / "stopped"
    base = tiny_overrides(tiny_sysu, ref_out, **{"run.threads": 1})
    ref = subprocess.run([sys.executable, "-m", "cmemd", "train", "-c", str(CONFIG), *base, "--no-eval"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    ref_state = read_checkpoint(ref_out / "last.pt")
    per_epoch = int(ref_state["step"]) // 2
    args = tiny_overrides(tiny_sysu, out, **{"run.threads": 1, "data.num_workers": 1})

    log1 = tmp_path / "log1.txt"
    rc = _interrupt_when(_start([*args, "--no-eval"], log1), lambda: _steps_logged(out) >= 3, signal.SIGINT)
    text = log1.read_text()
    assert rc == 130, text
    state = read_checkpoint(out / "last.pt")
    at = int(state["step"])
    assert 3 <= at < per_epoch and state["epoch"] == 0 and state["batches_done"] == at  # saved inside epoch 1
    assert f"interrupted at epoch 1 step {at} (SIGINT)" in text, text
    cmd = _printed_command(log1)
    assert cmd[3:] == ["train", "-c", str(CONFIG), *args, "--no-eval", "--resume"], cmd  # the exact command

    log2 = tmp_path / "log2.txt"
    p2 = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=open(log2, "w"), stderr=subprocess.STDOUT)
    rc = _interrupt_when(p2, lambda: _steps_logged(out) >= per_epoch + 2, signal.SIGTERM)
    text = log2.read_text()
    assert rc == 143, text
    state = read_checkpoint(out / "last.pt")
    at = int(state["step"])
    assert state["epoch"] == 1 and 2 <= state["batches_done"] == at - per_epoch < per_epoch, text
    assert f"interrupted at epoch 2 step {at} (SIGTERM)" in text and text.count("--resume") == 1, text
    cmd = _printed_command(log2)
    assert cmd.count("--resume") == 1

    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    state = read_checkpoint(out / "last.pt")
    for k, v in ref_state["model"].items():
        assert torch.equal(state["model"][k], v), k
    steps = [r for r in _step_records(out) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 2 * per_epoch + 1))
    assert [r["loss"] for r in steps] == [r["loss"] for r in _step_records(ref_out) if r["kind"] == "step"]
