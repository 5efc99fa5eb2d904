"""experiments/alignment_study/report.py: the paired intervals and the feature-health table the alignment study reports.

The study's verdicts ("a better", "not resolved") rest on these numbers, so they are checked against scipy's own
paired t-test and against hand-computed norm ratios.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "alignment_study" / "report.py"
spec = importlib.util.spec_from_file_location("alignment_report", SCRIPT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def run(seed: int, r1: float, **last_epoch: float) -> dict:
    return {"seed": seed, "results": {report.ALL: {"mean": {"R1": r1 / 100, "mAP": 0.0}}},
            "test_diagnostics": {"gap_centre_ratio": 1.0}, "last_epoch": last_epoch}


values = st.floats(min_value=-50, max_value=50, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(values, values), min_size=2, max_size=8))
@example([(0.0, 0.0), (0.0, 1e-12)])  # a spread of 1e-12 still has a t interval 13x wider than it
def test_paired_interval_is_scipys_paired_t_interval(pairs):
    a = [run(k, x) for k, (x, _) in enumerate(pairs)]
    b = [run(k, y) for k, (_, y) in enumerate(pairs)]
    d, m, lo, hi = report.paired(a, b, report.r1)
    x = np.array([p[0] for p in pairs]) / 100 * 100  # the same float path as r1()
    y = np.array([p[1] for p in pairs]) / 100 * 100
    np.testing.assert_allclose(d, x - y, atol=1e-9)
    assert m == pytest.approx(float(np.mean(x - y)), abs=1e-9)
    if np.std(x - y) > 0:  # any spread: scipy's interval (its half-width can be far above the spread itself)
        ci = stats.ttest_rel(x, y).confidence_interval(0.95)
        assert (lo, hi) == (pytest.approx(ci.low, abs=1e-6), pytest.approx(ci.high, abs=1e-6))
    else:
        assert lo == pytest.approx(m) and hi == pytest.approx(m)


def test_paired_uses_only_the_seeds_both_rows_have():
    a = [run(0, 30), run(1, 40), run(2, 50)]
    b = [run(1, 35), run(2, 41), run(7, 0)]
    d, m, lo, hi = report.paired(a, b, report.r1)
    assert d == pytest.approx([5.0, 9.0])
    assert m == pytest.approx(7.0)
    assert lo < 7.0 < hi


def test_one_pair_gives_no_interval_and_the_verdict_says_so():
    d, m, lo, hi = report.paired([run(0, 30)], [run(0, 20)], report.r1)
    assert d == pytest.approx([10.0]) and np.isnan(lo) and np.isnan(hi)
    assert report.verdict(lo, hi) == "too few seeds"
    assert report.verdict(0.5, 2.0).startswith("**a better")
    assert report.verdict(-2.0, -0.5).startswith("**b better")
    assert report.verdict(-1.0, 1.0).startswith("not resolved")


def test_health_table_divides_by_the_same_seeds_unaligned_run():
    rows = {"full_none": ("unaligned", []), "full": ("aligned", []), "emd_global": ("global", []),
            "baseline": ("base", [])}
    runs = {
        "full_none": [run(0, 0, norm_global=40.0, norm_local=10.0), run(1, 0, norm_global=20.0, norm_local=10.0)],
        "full": [run(0, 0, norm_global=20.0, norm_local=10.0, dead_global=0.0, dead_local=0.1),
                 run(1, 0, norm_global=20.0, norm_local=5.0, dead_global=0.0, dead_local=0.3)],
        "emd_global": [run(3, 0, norm_global=1.0)],  # no baseline run of seed 3: no ratio
        "baseline": [run(0, 0, norm_global=10.0)],
    }
    lines = report.budget_health_table(rows, runs, report.health_reference)
    body = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(body) == {"aligned", "global"}  # the unaligned rows are references, not rows
    # seed 0: 20/40 = 0.5, seed 1: 20/20 = 1 -> mean 0.75; local 1.0 and 0.5 -> 0.75
    assert "0.75x / 0.75x / -" in body["aligned"]
    assert "20.0% (30.0%)" in body["aligned"]
    assert "0 of 1" in body["global"] and "- / - / -" in body["global"]


def test_health_table_leaves_out_per_prefix_counts_of_old_runs():
    rows = {"full_none": ("unaligned", []), "full": ("aligned", [])}
    old = run(0, 0, norm_accum=5.0, dead_accum=0.4)  # before dead_accum_prefix: dead_accum was per prefix
    new = run(1, 0, norm_accum=5.0, dead_accum=0.02, dead_accum_prefix=0.4)
    lines = report.budget_health_table(rows, {"full": [old, new], "full_none": []}, report.health_reference)
    assert lines[-1].endswith("2.0% (2.0%) |")


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.1, max_value=20), st.floats(min_value=0.5, max_value=5))
def test_seeds_for_is_the_smallest_n_whose_interval_fits(sd, half):
    n = report.seeds_for(sd, half)
    assert n >= 2

    def width(k: int) -> float:
        return stats.t.ppf(0.975, k - 1) * sd / np.sqrt(k)

    assert width(n) <= half + 1e-12
    assert n == 2 or width(n - 1) > half


def test_verdict_words_follow_the_measure():
    # for the gap ratio lower is better: an interval above 0 must not read "a better"
    assert report.verdict(0.1, 0.3, "a leaves the larger gap", "a closes more of the gap").startswith("**a leaves")
    assert report.verdict(-0.3, -0.1, "a leaves the larger gap", "a closes more of the gap").startswith("**a closes")


def test_variation_points_pair_by_seed_and_take_the_default_level_from_its_group():
    def pr(seed: int, r1: float, purity: float) -> dict:
        r = run(seed, r1)
        r["test_diagnostics"]["purity_ratio"] = purity
        return r

    store = {
        "variation_bn": {"bn1_global_v0.2": [pr(0, 30, 1.1), pr(1, 34, 1.3)],
                         "bn1_allpairs_global_v0.2": [pr(0, 29, 1.0), pr(1, 30, 1.0), pr(2, 99, 1.0)]},
        "space": {"bn1_global": [pr(0, 20, 1.2)], "bn1_allpairs_global": [pr(0, 25, 1.0)]},
    }
    series = report.variation_points({"variation_bn": {}}, lambda g: store.get(g, {}), default=0.4)
    assert [label for label, _ in series] == ["baseline + alignment, BN-neck cost"]
    (v1, adv1, half1, pur1, _, n1), (v2, adv2, half2, pur2, _, n2) = series[0][1]
    assert (v1, n1, v2, n2) == (0.2, 2, 0.4, 1)  # seed 2 has no CM-EMD run: not a pair
    assert adv1 == pytest.approx((1 + 4) / 2) and pur1 == pytest.approx(1.2)
    half = stats.t.ppf(0.975, 1) * np.std([1.0, 4.0], ddof=1) / np.sqrt(2)
    assert half1 == pytest.approx(half)
    assert adv2 == pytest.approx(-5.0) and half2 == 0.0 and pur2 == pytest.approx(1.2)


def test_mixing_cell_averages_the_runs_that_recorded_it_and_says_how_many():
    a, b, c = run(0, 30.0), run(1, 31.0), run(2, 32.0)
    a["test_diagnostics"]["gap_mixing"], b["test_diagnostics"]["gap_mixing"] = 0.1, 0.3
    assert report.mixing_cell([a, b]) == "0.200 ± 0.100"  # np.std, as the other cells
    assert report.mixing_cell([a, b, c]) == "0.200 ± 0.100 (2 of 3 seeds)"
    assert report.mixing_cell([c]) == "-"


def test_paired_skips_seeds_whose_measure_is_missing_in_either_row():
    a = [run(k, 30.0 + k) for k in range(4)]
    b = [run(k, 30.0) for k in range(4)]
    a[1]["test_diagnostics"]["gap_centre_ratio"] = float("nan")  # not recorded for that run
    d, m, lo, hi = report.paired(a, b, lambda r: report.diag(r, "gap_centre_ratio") + report.r1(r))
    assert d == [0.0, 2.0, 3.0] and m == pytest.approx(5 / 3)
