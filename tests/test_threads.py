"""The CPU thread policy: the wait policy is set before torch starts, run.threads overrides the default."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cmemd.errors import ConfigError
from cmemd.threads import apply_thread_policy, default_reason, describe, set_wait_policy


def test_wait_policy_is_set_unless_the_user_chose_one():
    env: dict = {}
    assert set_wait_policy(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_wait_policy(env) == "ACTIVE" and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_default_reason(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "torch's thread count" in default_reason("cpu") and "torch default on cuda" == default_reason("cuda")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert "OMP_NUM_THREADS" in default_reason("cpu")


def test_run_threads_overrides_the_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        p = apply_thread_policy(3, "cpu")
        assert torch.get_num_threads() == 3 and p["threads"] == 3 and p["source"] == "run.threads"
        p = apply_thread_policy(None, torch.device("cpu"))  # unset: the count in force stays
        assert torch.get_num_threads() == 3 and p == {**p, "threads": 3, "source": "default"}
        assert "3 CPU thread(s)" in describe(p) and "OMP_WAIT_POLICY=" in describe(p)
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


def test_small_cpu_inputs_default_to_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        p = apply_thread_policy(None, "cpu", (64, 32))  # the demo's input
        assert torch.get_num_threads() == 1 and p["source"] == "default" and "64x32" in p["reason"]
        torch.set_num_threads(2)
        p = apply_thread_policy(None, "cpu", (288, 144))  # the paper's input keeps the count in force
        assert torch.get_num_threads() == 2 and "torch's thread count" in p["reason"]
        assert apply_thread_policy(2, "cpu", (64, 32))["threads"] == 2  # run.threads wins
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_thread_policy(None, "cpu", (64, 32))["threads"] == 2  # so does an exported OMP_NUM_THREADS
    finally:
        torch.set_num_threads(before)
