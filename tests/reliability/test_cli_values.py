"""Numeric command-line flags: 0, negative and out-of-range values are one-line errors naming the flag and its range,
raised before any work (issue 24: ``--trials 0`` ran 10 trials, ``--shots 0`` / ``--k1 0`` took the defaults)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from cmemd.cli import _FLAG_RANGES, app
from cmemd.config import TrainConfig
from cmemd.errors import CmemdError
from cmemd.evaluation import save_features


def _no_work(*_a, **_k):
    raise AssertionError("work started before the flags were checked")


@pytest.fixture
def guarded(monkeypatch):
    """Every first step of real work in the commands fails the test if reached."""
    for target in ("cmemd.app.evaluate.load_trained", "cmemd.app.runtime.resolve_device", "cmemd.evaluation.load_features",
                   "cmemd.app.demo.run_demo", "cmemd.api.load", "cmemd.retrieval.load_gallery",
                   "cmemd.retrieval.build_index", "cmemd.export.export_checkpoint"):
        monkeypatch.setattr(target, _no_work)


def _invoke(args):
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def _expect_rejected(args, flag, value):
    code, out = _invoke(args)
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    allowed = _FLAG_RANGES[flag][1]
    assert lines[0] == f"error: {flag}={value}: must be {allowed}"
    assert "Traceback" not in out


EVAL = ["eval", "--checkpoint", "last.pt"]
FEATS = ["eval-features", "q.npz", "g.npz", "--protocol", "sysu"]
BAD = [
    (EVAL, "--trial", ["0", "11"]),
    (EVAL, "--k1", ["0", "-20"]),
    (EVAL, "--k2", ["0"]),
    (EVAL, "--lambda-value", ["-0.1", "1.5", "nan", "inf"]),
    (FEATS, "--trial", ["0", "-1"]),
    (FEATS, "--k1", ["0"]),
    (FEATS, "--k2", ["-6"]),
    (FEATS, "--lambda-value", ["2"]),
    (["index", "--checkpoint", "c.pt", "--images", "imgs", "--modality", "visible", "--out", "g.npz"], "--batch-size", ["0", "-64"]),
    (["search", "--checkpoint", "c.pt", "--gallery", "g.npz", "--query", "q.jpg", "--query-modality", "thermal"], "--top-k", ["0", "-1"]),
    (["demo"], "--epochs", ["0", "-2"]),
    (["demo"], "--ids", ["0", "2"]),
]


@pytest.mark.parametrize("base,flag,values", BAD, ids=[f"{b[0]}{f}" for b, f, _ in BAD])
def test_out_of_range_flag_is_one_line_error_before_any_work(guarded, base, flag, values):
    for v in values:
        _expect_rejected(base + [flag, v], flag, v)


@pytest.mark.parametrize("flag,values", [("--ids", ["0", "-5"]), ("--workers", ["0", "-1"])])
def test_data_synth_flags(tmp_path, flag, values):
    for v in values:
        out = tmp_path / f"synth{v}"
        _expect_rejected(["data", "synth", "--out", str(out), flag, v], flag, v)
        assert not out.exists()


def test_every_range_accepts_its_lowest_value_and_rejects_just_below():
    # the table itself: the documented lowest value passes, the integer (or number) just below it fails
    lowest = {"--trial": 1, "--k1": 1, "--k2": 1, "--lambda-value": 0.0, "--batch-size": 1,
              "--top-k": 1, "--epochs": 1, "--ids": 3, "--workers": 1}
    assert set(lowest) == set(_FLAG_RANGES)
    for flag, lo in lowest.items():
        ok, allowed = _FLAG_RANGES[flag]
        assert ok(lo) and not ok(lo - (1e-9 if isinstance(lo, float) else 1)), flag
        assert re.search(r"\d", allowed), allowed  # the message states the range


def test_given_values_reach_the_evaluation_and_omitted_ones_keep_the_checkpoints(monkeypatch):
    seen = {}
    cfg = TrainConfig()
    cfg.eval.trials, cfg.eval.rerank_k1 = 7, 11

    def fake_evaluate(model, c, **_):
        seen["eval"] = c.eval
        raise CmemdError("stop here")

    monkeypatch.setattr("cmemd.app.evaluate.load_trained", lambda *a, **k: (object(), cfg))
    monkeypatch.setattr("cmemd.app.evaluate.evaluate_model", fake_evaluate)
    code, out = _invoke(EVAL + ["--device", "cpu", "trials=1", "--k2", "1", "--lambda-value", "0"])
    assert code == 2 and "error: stop here" in out, out
    e = seen["eval"]
    assert (e.trials, e.rerank_k2, e.rerank_lambda) == (1, 1, 0.0)  # given: used as given, even the lowest
    assert (e.rerank_k1, e.shots) == (11, cfg.eval.shots)  # omitted: the checkpoint's settings


def test_eval_features_runs_with_the_lowest_values(tmp_path):
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(4), 4)
    q = save_features(tmp_path / "q.npz", rng.normal(size=(16, 3)), pids, np.full(16, 3), [f"q{i}" for i in range(16)])
    g = save_features(tmp_path / "g.npz", rng.normal(size=(16, 3)), pids, np.tile([1, 2, 4, 5], 4),
                      [f"g{i}" for i in range(16)])
    code, out = _invoke(["eval-features", str(q), str(g), "--protocol", "sysu", "trials=1", "--per-trial",
                         "--rerank", "--k1", "1", "--k2", "1", "--lambda-value", "0"])
    assert code == 0, out
    assert len(re.findall(r"trial 0\b", out)) >= 1 and "trial 1" not in out, out


@pytest.mark.parametrize("pair, message", [
    ("trials=0", "trials=0: must be an integer >= 1"),
    ("trials=-1", "trials=-1: must be an integer >= 1"),
    ("shots=0", "shots=0: must be an integer in [1, 10]"),
    ("trials=many", "trials must be int"),
    ("directions=[t2v]", "'directions' is not an option of SYSU-MM01; its options: method, mode, rand_perm, shots, trials"),
    ("trials", "expected KEY=VALUE"),
])
def test_protocol_options_are_checked_before_any_work(guarded, pair, message):
    """The benchmark's options (KEY=VALUE, no longer per-dataset flags): the range of a numeric one, the type, and
    the key itself, each one line naming the pair before a feature file is read."""
    code, out = _invoke(FEATS + [pair])
    assert code == 2 and message in out, out
    assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1, out


def test_eval_options_are_the_checkpoints_benchmarks(monkeypatch):
    """`cmemd eval` takes the options of the benchmark the model was trained on, range-checked, before any image."""
    monkeypatch.setattr("cmemd.app.evaluate.load_trained", lambda *a, **k: (object(), TrainConfig()))
    monkeypatch.setattr("cmemd.app.evaluate.evaluate_model", _no_work)
    for pair, message in (("trials=0", "trials=0: must be an integer >= 1"), ("shots=5", "eval.shots must be 1 or 10"),
                          ("direction=t2v", "'direction' is not an option of SYSU-MM01")):
        code, out = _invoke(EVAL + ["--device", "cpu", pair])
        assert code == 2 and message in out, out
