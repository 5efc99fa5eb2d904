"""bench/gpu_check.py runs end to end on CPU in quick mode (the test of the script that a GPU run relies on), and a
run that runs out of time still leaves a report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, CMEMD_PROGRESS_INTERVAL="3600")
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--work", str(tmp_path / "work"),
                           *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


@pytest.mark.slow
def test_quick_cpu_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    res = _run(tmp_path, "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = out.read_text()
    sections = json.loads(out.with_suffix(".json").read_text())
    expected = ["environment", "optimal transport (emd, sinkhorn)", "losses (CM-EMD objective)",
                "model forward/backward on cpu", "evaluation (SYSU-MM01 sizes)", "re-ranking (k-reciprocal)",
                "training (paper model, synthetic data)"]
    assert list(sections)[: len(expected)] == expected
    for name in expected:
        status = sections[name]["status"]
        assert status == "ok" or (name.startswith("re-ranking") and status.startswith("not available")), (name, status)
        assert f"## {name}" in text
    # model rows: fp32, channels_last and bf16 on CPU, each with a positive speed
    rows = sections["model forward/backward on cpu"]["rows"]
    assert [(r[0], r[1]) for r in rows] == [("none", False), ("none", True), ("bf16", False)]
    assert all(isinstance(r[3], float) and r[3] > 0 for r in rows)
    # training: two settings, each projected to one SYSU-MM01 epoch (695 steps) and the 80-epoch recipe
    train_rows = sections["training (paper model, synthetic data)"]["rows"]
    assert [r[0] for r in train_rows] == ["fp32 (sysu_cmemd as written)", "bf16 + channels_last"]
    assert all(r[3] > 0 for r in train_rows) and "695 steps" in text
    # OT, losses and evaluation agree with the CPU reference (trivially here: the device is the CPU)
    assert all(r[5] <= 1e-4 for r in sections["optimal transport (emd, sinkhorn)"]["rows"])
    assert sections["losses (CM-EMD objective)"]["grads_finite"] is True


@pytest.mark.slow
def test_a_run_out_of_time_still_leaves_a_report(tmp_path):
    out = tmp_path / "gpu.md"
    res = _run(tmp_path, "--out", str(out), "--budget", "1", timeout=300)
    assert out.is_file(), res.stdout[-2000:] + res.stderr[-2000:]
    sections = json.loads(out.with_suffix(".json").read_text())
    assert "environment" in sections and sections["environment"]["status"] == "ok"
    # with no time left, later sections stop at their time box instead of running on
    assert any(s["status"].startswith("stopped") for s in sections.values()), sections
    assert "Finished in" in out.read_text()
