"""`cmemd train` as a user runs it (a subprocess): progress written to a file is plain lines, and the thread
policy is chosen, printed in the run header and recorded in environment.json."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.engine.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path, name: str, **env_extra) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra)
    out_path, err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:  # files, not a terminal
        rc = subprocess.call([sys.executable, "-m", "cmemd", *args], stdout=out, stderr=err, env=env, cwd=tmp_path,
                             timeout=300)
    return rc, out_path.read_text(), err_path.read_text()


def test_progress_to_a_file_is_one_line_per_update_and_threads_are_recorded(tiny_sysu, tmp_path):
    run = tmp_path / "run"
    rc, out, err = _run(["train", "-c", "synth_cmemd", *tiny_overrides(tiny_sysu, run, **{"optim.epochs": 1})],
                        tmp_path, "default", CMEMD_PROGRESS_INTERVAL="0")
    assert rc == 0, out + err
    assert "\r" not in out and "\r" not in err
    steps = int(re.search(r"(\d+) steps/epoch", out).group(1))
    progress = [line for line in err.splitlines() if line.startswith("epoch 1/1: ")]
    assert [line.split()[2] for line in progress] == [f"{k}/{steps}" for k in range(1, steps + 1)], err
    assert any(line.startswith("query: ") for line in err.splitlines())  # evaluation's feature extraction too
    # the run header and environment.json name the thread policy: torch's own count, OMP_WAIT_POLICY=PASSIVE
    env = json.loads((run / "environment.json").read_text())
    n = env["threads"]
    assert n >= 1 and env["omp_wait_policy"] == "PASSIVE"
    assert env["thread_policy"] == {**env["thread_policy"], "source": "default", "threads": n}
    # the tiny run's 32x16 input is under 128x64: one thread by default (cmemd.threads.SMALL_INPUT_PIXELS)
    assert n == 1
    assert "threads: 1 CPU thread(s) (default: one thread for 32x16 inputs (under 128x64; docs/architecture.md)), " \
           "OMP_WAIT_POLICY=PASSIVE" in out


def test_run_threads_and_a_user_wait_policy_win(tiny_sysu, tmp_path):
    run = tmp_path / "run"
    rc, out, err = _run(["train", "-c", "synth_cmemd", "--no-eval",
                         *tiny_overrides(tiny_sysu, run, **{"optim.epochs": 1, "run.threads": 1})],
                        tmp_path, "two", OMP_WAIT_POLICY="ACTIVE")
    assert rc == 0, out + err
    # (one thread: a second one with ACTIVE waiting would spin against whatever else runs on the machine)
    assert "threads: 1 CPU thread(s) (run.threads=1), OMP_WAIT_POLICY=ACTIVE" in out
    env = json.loads((run / "environment.json").read_text())
    assert env["threads"] == 1 and env["omp_wait_policy"] == "ACTIVE" and env["thread_policy"]["source"] == "run.threads"
