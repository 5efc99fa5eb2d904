"""bench/gpu_check.py: every row runs on the CPU in --smoke mode, the report is written even when the deadline cuts
the check short, and the rows' criteria fail when what they check is broken (faults injected on the CPU: a
GradScaler that skips every step, an optimiser state lost on resume, a wrong EMD, an unconverged Sinkhorn, a hung
DDP launch, features that differ with the cache)."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


@pytest.fixture
def check(gc, tmp_path):
    """A Check writing to tmp_path (its watchdog cancelled afterwards) and a smoke-size CPU context."""
    c = gc.Check(tmp_path / "gpu.md", ["# test"], budget=300)
    yield c, gc.Ctx(torch.device("cpu"), gc.SMOKE, tmp_path / "work")
    c.watchdog.cancel()


@pytest.fixture
def restore_torch_flags():
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, CMEMD_PROGRESS_INTERVAL="3600")
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--work", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


# ---------------------------------------------------------------------------------------------- the whole script

@pytest.mark.slow
def test_smoke_run_exercises_every_row(tmp_path):
    out = tmp_path / "gpu.md"
    res = _run(tmp_path, "--out", str(out))
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["section"], r["name"]): r for r in report["rows"]}
    sections = {s for s, _ in rows}
    assert {"environment", "optimal transport", "losses", "AMP", "host and GPU", "step time", "memory", "data",
            "evaluation", "resume", "DDP"} <= sections
    assert sum(s.startswith("training") for s in sections) == 1
    text = out.read_text()
    for (section, name), r in rows.items():
        assert r["criterion"] and f"| {name} |" in text
        if section == "DDP":
            # 2-process DDP with loss.lambda_dl=0 fails until unused parameters are handled (issue 25); the row must
            # then say why, never hang: both outcomes are accepted here, a hang or a crash of the row is not
            assert r["status"] == "pass" or r["status"].startswith("FAIL: first launch exited 1"), r["status"]
            continue
        assert r["status"].startswith(("pass", "skipped: the CPU", "not judged:")), (section, name, r["status"])
    assert rows["resume", "crash mid-epoch and resume on cpu, run.deterministic=true"]["status"] == "pass"
    failed = any(r["status"].startswith("FAIL") for r in report["rows"])
    assert res.returncode == report["exit_status"] == (1 if failed else 0), res.stderr[-3000:]
    assert "Finished in" in text


def test_the_deadline_leaves_a_report_and_exit_status_2(tmp_path):
    out = tmp_path / "gpu.md"
    res = _run(tmp_path, "--out", str(out), "--budget", "2", timeout=300)
    report = json.loads(out.with_suffix(".json").read_text())
    statuses = [r["status"] for r in report["rows"]]
    assert report["rows"][0]["status"] == "pass"  # the environment row fits in 2 s
    assert any(s.startswith("not run: deadline") for s in statuses)
    assert len(statuses) == 19 and not any(s.startswith(("FAIL", "running")) for s in statuses), statuses
    assert res.returncode == 2 == report["exit_status"], res.stderr[-2000:]


def test_a_row_past_its_budget_fails_and_the_next_row_runs(gc, check):
    c, _ = check
    slow = c.run("s", "slow", "finishes in 1 s", 1, lambda r: time.sleep(30))
    ok = c.run("s", "next", "runs", 5, lambda r: None)
    assert slow.status == "FAIL: ran past its 1 s budget" and ok.status == "pass" and c.exit_code() == 1


def test_a_row_hung_where_no_time_box_reaches_is_reported_by_the_watchdog(tmp_path):
    """SIGALRM blocked (as in a C call that never returns to Python): the watchdog writes the report and exits."""
    code = f"""
import importlib.util, signal, sys, time
spec = importlib.util.spec_from_file_location("gpu_check_snippet", {str(SCRIPT)!r})
m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)
c = m.Check(m.Path({str(tmp_path / "gpu.md")!r}), ["# t"], budget=3, grace=1)
c.run("s", "first", "passes", 5, lambda r: None)
c.run("s", "hung", "returns", 5, lambda r: (signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}}), time.sleep(60)))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr[-2000:]
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert [r["status"][:40] for r in rows] == ["pass", "FAIL: still running at the global deadli"]
    assert "Stopped by the watchdog" in (tmp_path / "gpu.md").read_text()


# ---------------------------------------------------------------------------------------------- injected faults

def test_a_gradscaler_that_skips_every_step_fails_the_amp_row(gc, check, monkeypatch):
    c, ctx = check
    ok = c.run("AMP", "scaler", "", 60, lambda r: gc.row_amp(r, ctx, "bf16+scaler", 5e-2))
    assert ok.status == "pass", ok.status
    # a scale so large that every scaled loss overflows: the real GradScaler finds inf gradients and skips the step
    monkeypatch.setattr(gc, "SCALER_INIT_SCALE", 1e38)
    bad = c.run("AMP", "scaler", "", 60, lambda r: gc.row_amp(r, ctx, "bf16+scaler", 5e-2))
    assert bad.status.startswith("FAIL: the GradScaler skipped 2 of 2 steps"), bad.status
    assert bad.data["updated"] == 0


def test_a_resume_that_loses_the_optimiser_state_fails(gc, tmp_path, monkeypatch, restore_torch_flags):
    from cmemd.engine.trainer import Trainer

    real = Trainer.resume

    def forgetful(self, path):
        used = real(self, path)
        for state in self.optimizer.state.values():
            state["momentum_buffer"].zero_()
        return used

    monkeypatch.setattr(Trainer, "resume", forgetful)
    res = gc.resume_experiment(gc.SMOKE, torch.device("cpu"), tmp_path)
    assert res["crashed"] and res["resumed_at"] == res["expected_at"]  # it resumed where it should ...
    # ... but does not continue the same run: step 5's loss is computed on the restored weights, the lost momentum
    # changes step 5's update and so the loss from step 6 on
    with pytest.raises(gc.RowFailed, match="losses differ from the uninterrupted run from step 6 on"):
        gc.judge_resume(res)


def _good_resume():
    steps = [(s, 1.0 / s) for s in range(1, 7)]
    return dict(crashed=True, resumed_at=dict(epoch=1, batch=1, step=4), expected_at=dict(epoch=1, batch=1, step=4),
                steps_a=steps, steps_b=list(steps), weight_diff=0.0, total_steps=6)


@pytest.mark.parametrize("fault, message", [
    (dict(crashed=False), "did not happen"),
    (dict(resumed_at=dict(epoch=1, batch=0, step=3)), "resumed at"),
    (dict(steps_b=[(s, 1.0 / s) for s in (1, 2, 3, 4, 4, 5, 6)]), "resumed run logged steps"),
    (dict(steps_b=[(s, 1.0 / s + (s == 6) * 1e-12) for s in range(1, 7)]), "from step 6 on"),
    (dict(weight_diff=1e-9), "final weights differ"),
])
def test_resume_criteria(gc, fault, message):
    assert "bit-identical" in gc.judge_resume(_good_resume())
    with pytest.raises(gc.RowFailed, match=message):
        gc.judge_resume({**_good_resume(), **fault})


def test_a_suboptimal_emd_and_an_unconverged_sinkhorn_fail(gc, check, monkeypatch):
    from cmemd import ot

    c, ctx = check
    assert c.run("OT", "emd", "", 30, lambda r: gc.row_emd(r, ctx, 4)).status == "pass"
    assert c.run("OT", "sinkhorn", "", 30, lambda r: gc.row_sinkhorn(r, ctx)).status == "pass"

    def identity_plan(cost):  # a transport plan, but not the optimal one
        K = cost.shape[-1]
        plan = torch.eye(K).expand_as(cost) / K
        return ot.EMDResult(plan, (plan * cost).sum((-2, -1)))

    monkeypatch.setattr(ot, "emd", identity_plan)
    assert c.run("OT", "emd", "", 30, lambda r: gc.row_emd(r, ctx, 4)).status.startswith(
        "FAIL: EMD value off the brute-force optimum")
    monkeypatch.setattr(ot, "sinkhorn", functools.partial(ot.sinkhorn, max_iter=1))
    assert c.run("OT", "sinkhorn", "", 30, lambda r: gc.row_sinkhorn(r, ctx)).status.startswith(
        "FAIL: marginal L1 error")


def test_a_hung_ddp_launch_fails_within_its_budget(gc, check, monkeypatch):
    c, ctx = check
    monkeypatch.setattr(gc, "ddp_command", lambda *a, **k: [sys.executable, "-c", "import time; time.sleep(120)"])
    r = c.run("DDP", "hung", "", 16, lambda r: gc.row_ddp(r, ctx))  # 3 s per launch
    assert r.status.startswith("FAIL: first launch did not finish in 3 s (hung?)"), r.status
    assert r.seconds < 15
    assert gc.first_error("x\n[rank1]: RuntimeError: Expected to have finished reduction\nValueError: later") == \
        "RuntimeError: Expected to have finished reduction"


def test_features_that_change_with_the_cache_fail_the_extraction_row(gc, check, monkeypatch):
    import cmemd.engine.extract as extract

    c, ctx = check
    real = extract.extract_features

    def cache_bug(model, records, **kw):
        f = real(model, records, **kw)
        return f + 1e-6 if kw.get("use_cache") else f

    monkeypatch.setattr(extract, "extract_features", cache_bug)
    r = c.run("evaluation", "extract", "", 60, lambda r: gc.row_extract(r, ctx))
    assert r.status.startswith("FAIL: features with workers/cache/pinned memory differ"), r.status


# ---------------------------------------------------------------------------------------------- measurements

def test_sync_counter_counts_the_sync_warnings_per_source_line(gc, monkeypatch):
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step():
        for _ in range(4):
            warnings.warn("called a synchronizing CUDA operation")  # as set_sync_debug_mode("warn") reports one
        warnings.warn("something else")

    count, where = gc.count_syncs(step, torch.device("cuda"))
    assert count == 4 and sum(where.values()) == 4 and len(where) == 1 and modes == ["warn", 0]
    gc.judge_syncs(6, 2)
    with pytest.raises(gc.RowFailed, match="3.5 synchronisations per step"):
        gc.judge_syncs(7, 2)


def test_idle_fraction_against_a_grid(gc):
    rng = np.random.default_rng(0)
    for _ in range(50):
        busy = [tuple(sorted(rng.integers(0, 100, 2))) for _ in range(rng.integers(0, 8))]
        steps = [(10, 40), (45, 90)]
        covered = np.zeros(100, bool)
        for a, b in busy:
            covered[a:b] = True
        hi = max([90] + [b for _, b in busy])
        expected = 1 - covered[10:hi].sum() / (hi - 10)
        assert gc.idle_fraction(steps, [(float(a), float(b)) for a, b in busy]) == pytest.approx(expected, abs=1e-12)
