"""experiments/alignment_study/test_space.py: the paired pooled-vs-bn summary over runs (the runs are the pairs)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from scipy import stats

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "alignment_study"
sys.path.insert(0, str(STUDY))  # test_space imports its sibling report
spec = importlib.util.spec_from_file_location("alignment_test_space", STUDY / "test_space.py")
test_space = importlib.util.module_from_spec(spec)
spec.loader.exec_module(test_space)


def row(run: str, feature: str, form: str, r1: float, gap: float) -> dict:
    return {"run": run, "feature": feature, "form": form, "R1": r1, "mAP": r1 + 5, "gap": gap, "probe": 90.0}


def test_summary_matches_scipy_paired_t_per_test_feature():
    bn = {"a": 18.0, "b": 20.5, "c": 25.0}
    pooled = {"a": 27.0, "b": 22.0, "c": 24.0}
    rows = [row(r, "global", f, (bn if f == "bn" else pooled)[r], 2.0) for r in bn for f in ("bn", "pooled")]
    rows += [row(r, "concat", "bn", 30.0, 2.3) for r in bn] + [row("a", "concat", "pooled", 25.0, 0.7)]
    lines = test_space.summary(rows)
    glob = next(line for line in lines if line.startswith("| global"))
    concat = next(line for line in lines if line.startswith("| concat"))
    d = [pooled[r] - bn[r] for r in bn]
    ci = stats.ttest_rel(list(pooled.values()), list(bn.values())).confidence_interval(0.95)
    assert f"| global | 3 | {', '.join(f'{x:+.2f}' for x in d)} |" in glob
    assert f"[{ci.low:+.2f}, {ci.high:+.2f}]" in glob
    assert "not resolved" in glob  # the interval spans 0 for these numbers
    assert "+0.00 [+0.00, +0.00]" in glob  # the gap column: equal gaps in both forms
    # only run "a" has both forms for concat: one pair, no interval
    assert concat.startswith("| concat | 1 | -5.00 |") and "too few" in concat


def test_missing_checkpoint_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["test_space.py", str(tmp_path)])
    with pytest.raises(SystemExit):
        test_space.main()
    assert "last.pt" in capsys.readouterr().err
