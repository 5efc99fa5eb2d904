"""The CPU thread policy: the wait policy is set before torch starts, run.threads overrides the default."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cmemd.errors import ConfigError
from cmemd.threads import LARGE_INPUT, apply_thread_policy, default_threads, describe, set_wait_policy, usable_cpus


def test_wait_policy_is_set_unless_the_user_chose_one():
    env: dict = {}
    assert set_wait_policy(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_wait_policy(env) == "ACTIVE" and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_default_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads("cpu", pixels=64 * 32)[0] == 1
    assert default_threads("cpu", pixels=LARGE_INPUT)[0] == usable_cpus() >= 1
    assert default_threads("cpu", pixels=288 * 144)[0] == usable_cpus()
    assert default_threads("cuda", pixels=64 * 32)[0] is None  # torch's own default on a GPU
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    n, reason = default_threads("cpu", pixels=64 * 32)
    assert n is None and "OMP_NUM_THREADS" in reason


def test_run_threads_overrides_the_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        p = apply_thread_policy(3, "cpu", pixels=64 * 32)
        assert torch.get_num_threads() == 3 and p["threads"] == 3 and p["source"] == "run.threads"
        p = apply_thread_policy(None, torch.device("cpu"), pixels=64 * 32)
        assert torch.get_num_threads() == 1 and p == {**p, "threads": 1, "source": "default"}
        assert "1 CPU thread(s)" in describe(p) and "OMP_WAIT_POLICY=" in describe(p)
        with pytest.raises(ConfigError, match="run.threads must be >= 1"):
            apply_thread_policy(-2, "cpu")
    finally:
        torch.set_num_threads(before)


def test_the_cli_sets_the_wait_policy_before_torch_is_imported():
    # importing the CLI must not import torch, and main() must export the policy before any command runs
    code = ("import os, sys\n"
            "os.environ.pop('OMP_WAIT_POLICY', None)\n"
            "import cmemd.cli\n"
            "assert 'torch' not in sys.modules, 'importing the CLI imported torch'\n"
            "try:\n"
            "    cmemd.cli.main(['--version'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["PASSIVE", "False"]
