"""SYSU-MM01 and RegDB protocols: trial draws, per-trial equivalence, aggregation, output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cmemd.benchmarks.regdb import evaluate_regdb, evaluate_regdb_directions
from cmemd.benchmarks.sysu import SAME_LOCATION, evaluate_sysu
from cmemd.errors import EvaluationError
from cmemd.evaluation import (
    combine_results,
    evaluate,
    format_results,
    metric_row,
    save_json,
    to_json,
)
from cmemd.evaluation.metrics import DEFAULT_MEMORY_BUDGET


def sysu_like(seed=0, n_ids=12, per_cam=10, dim=16):
    """A small SYSU-shaped pool: ids x visible cams x images, and thermal queries."""
    rng = np.random.default_rng(seed)
    proto = rng.normal(size=(n_ids + 1, dim))
    pp, pc, paths = [], [], []
    for p in range(1, n_ids + 1):
        for c in (1, 2, 4, 5):
            for k in range(1, per_cam + 1 + (p + c) % 3):
                pp.append(p), pc.append(c), paths.append(f"cam{c}/{p:04d}/{k:04d}.jpg")
    pp, pc = np.array(pp), np.array(pc)
    pf = proto[pp] + 1.2 * rng.normal(size=(len(pp), dim))
    qp = np.repeat(np.arange(1, n_ids + 1), 4)
    qc = np.tile([3, 6], len(qp) // 2)
    qf = proto[qp] + 1.2 * rng.normal(size=(len(qp), dim))
    return qf.astype(np.float32), qp, qc, pf.astype(np.float32), pp, pc, paths


def stand_in_draw(pids, cams, paths, *, mode, shots, trial, method, rand_perm):
    """Deterministic in the trial: for each (id, camera) of the mode, ``shots`` images."""
    rng = np.random.default_rng(1000 + trial)
    gcams = (1, 2, 4, 5) if mode == "all" else (1, 2)
    out = []
    for p in sorted(set(pids.tolist())):
        for c in gcams:
            members = np.nonzero((pids == p) & (cams == c))[0]
            out.extend(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
    return np.array(out)


@pytest.mark.parametrize("draw", [None, stand_in_draw], ids=["cmemd.benchmarks.sysu", "stand-in"])
@pytest.mark.parametrize("mode, shots", [("all", 1), ("indoor", 10)])
def test_each_trial_equals_evaluating_its_gallery_directly(draw, mode, shots):
    qf, qp, qc, pf, pp, pc, paths = sysu_like()
    if draw is None:
        from cmemd.benchmarks.sysu import draw_gallery as real
    res = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, mode=mode, shots=shots, trials=4, draw=draw)
    assert res.trial_ids == [0, 1, 2, 3]
    d = draw or real
    galleries = [d(pp, pc, paths, mode=mode, shots=shots, trial=t, method="python-random", rand_perm=None) for t in range(4)]
    assert len({tuple(g) for g in galleries}) == 4  # the trials draw different galleries
    allowed = {1, 2, 4, 5} if mode == "all" else {1, 2}
    for g, r in zip(galleries, res.trials):
        assert set(pc[g]) == allowed and r.info["gallery_size"] == len(g)
        direct = evaluate(qf, qp, qc, pf[g], pp[g], pc[g], removal=SAME_LOCATION, cmc="identity-dedup")
        np.testing.assert_array_equal(r.first_hit, direct.first_hit)
        np.testing.assert_allclose(r.ap, direct.ap, atol=1e-12)
        np.testing.assert_allclose(r.inp, direct.inp, atol=1e-12)
        np.testing.assert_array_equal(r.cmc, direct.cmc)
    rows = [metric_row(r) for r in res.trials]
    for k in ("R1", "mAP", "mINP"):
        assert res.mean[k] == pytest.approx(np.mean([row[k] for row in rows]))
        assert res.std[k] == pytest.approx(np.std([row[k] for row in rows], ddof=0))
    assert len({row["mAP"] for row in rows}) > 1  # different galleries, different numbers


def test_same_trial_gives_the_same_result_and_trial_lists_select():
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=1)
    a = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, shots=10, trials=[3, 5])
    b = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, shots=10, trials=[5])
    assert a.trial_ids == [3, 5]
    np.testing.assert_array_equal(a.trials[1].ap, b.trials[0].ap)
    np.testing.assert_array_equal(a.trials[1].first_hit, b.trials[0].first_hit)


def test_large_problem_fallback_evaluates_per_trial_identically():
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=2)
    shared = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, trials=3)
    per_trial = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, trials=3, memory_budget=64)
    for x, y in zip(shared.trials, per_trial.trials):
        np.testing.assert_array_equal(x.first_hit, y.first_hit)
        np.testing.assert_allclose(x.ap, y.ap, atol=1e-12)
    assert DEFAULT_MEMORY_BUDGET > 64


def test_sysu_option_errors():
    qf, qp, qc, pf, pp, pc, paths = sysu_like()
    with pytest.raises(EvaluationError, match="mode='both' is unknown"):
        evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, mode="both")
    with pytest.raises(EvaluationError, match="shots=5"):
        evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, shots=5)
    with pytest.raises(EvaluationError, match="needs rand_perm"):
        evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, method="official")
    with pytest.raises(EvaluationError, match=r"pool_cams: camera numbers \[0, 3\]"):
        evaluate_sysu(qf, qp, qc, pf, pp, pc - 1, paths)
    with pytest.raises(EvaluationError, match="pool_paths: length 3"):
        evaluate_sysu(qf, qp, qc, pf, pp, pc, paths[:3])


def test_table_and_json_say_what_was_evaluated(tmp_path):
    qf, qp, qc, pf, pp, pc, paths = sysu_like()
    res = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, mode="indoor", shots=10, trials=2, feature_name="bn-neck")
    table = format_results(res, per_trial=True)
    for word in ("SYSU-MM01 indoor-search", "multi-shot", "python-random", "bn-neck", "trial 1", "mINP", "±", "ddof=0"):
        assert word in table
    assert f"{100 * res.mean['R1']:.2f} ± {100 * res.std['R1']:.2f}" in table
    data = json.loads(to_json(res))
    assert data["settings"]["mode"] == "indoor" and data["settings"]["shots"] == 10
    assert data["trial_ids"] == [0, 1] and data["std_ddof"] == 0
    assert data["mean"]["mAP"] == pytest.approx(res.mean["mAP"])
    out = save_json(res, tmp_path / "r.json")
    assert json.loads(out.read_text())["trials"][1]["R1"] == pytest.approx(res.trials[1].cmc[0])


def test_regdb_directions_and_combining_trials():
    rng = np.random.default_rng(5)
    ids = np.repeat(np.arange(20), 10)
    proto = rng.normal(size=(20, 8))
    vis = proto[ids] + rng.normal(size=(200, 8))
    th = proto[ids] + rng.normal(size=(200, 8))
    v2t = evaluate_regdb(vis, ids, th, ids, direction="v2t", trial=1)
    t2v = evaluate_regdb(vis, ids, th, ids, direction="t2v", trial=1)
    ref_v = evaluate(vis, ids, np.zeros(200), th, ids, np.ones(200))
    ref_t = evaluate(th, ids, np.zeros(200), vis, ids, np.ones(200))
    np.testing.assert_array_equal(v2t.trials[0].first_hit, ref_v.first_hit)
    np.testing.assert_array_equal(t2v.trials[0].first_hit, ref_t.first_hit)
    assert v2t.trials[0].mAP != t2v.trials[0].mAP
    assert "visible->thermal" in format_results(v2t) and "thermal->visible" in format_results(t2v)
    v2t_2 = evaluate_regdb(th, ids, vis, ids, direction="v2t", trial=2)
    both = combine_results([v2t, v2t_2])
    assert both.trial_ids == [1, 2]
    assert both.mean["mAP"] == pytest.approx((v2t.trials[0].mAP + v2t_2.trials[0].mAP) / 2)
    with pytest.raises(EvaluationError, match="settings differ"):
        combine_results([v2t, t2v])
    with pytest.raises(EvaluationError, match="trial ids repeat"):
        combine_results([v2t, v2t])
    with pytest.raises(EvaluationError, match="thermal_pids: length 3"):
        evaluate_regdb(vis, ids, th, ids[:3])
    with pytest.raises(EvaluationError, match="direction='vt' is unknown"):
        evaluate_regdb(vis, ids, th, ids, direction="vt")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("budget", [DEFAULT_MEMORY_BUDGET, 64])  # one shared matrix / per-direction streaming
def test_regdb_both_directions_from_one_matrix_equal_separate_evaluations(dtype, budget):
    rng = np.random.default_rng(7)
    ids = np.repeat(np.arange(15), 6)
    proto = rng.normal(size=(15, 6))
    # Integer features and squared Euclidean distances: every similarity is exact whatever the summation order,
    # so the many exact ties (ranked by gallery index, which differs between rows and columns) must agree exactly.
    vis = np.round(proto[ids] + rng.normal(size=(90, 6)), 0).astype(dtype)
    th = np.round(proto[ids] + rng.normal(size=(90, 6)), 0).astype(dtype)
    th[5] = th[4]
    out = evaluate_regdb_directions(vis, ids, th, ids, trial=3, metric="euclidean", memory_budget=budget)
    assert list(out) == ["v2t", "t2v"]
    for d, (q, g) in {"v2t": (vis, th), "t2v": (th, vis)}.items():
        ref = evaluate(q, ids, np.zeros(90), g, ids, np.ones(90), metric="euclidean", chunk_size=7)
        got = out[d].trials[0]
        np.testing.assert_array_equal(got.first_hit, ref.first_hit)
        np.testing.assert_allclose(got.ap, ref.ap, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.inp, ref.inp, rtol=0, atol=1e-12)
        assert out[d].settings["direction"] == d and out[d].trial_ids == [3]
        single = evaluate_regdb(vis, ids, th, ids, direction=d, trial=3, metric="euclidean")
        assert single.mean == pytest.approx(out[d].mean)
    with pytest.raises(EvaluationError, match="directions"):
        evaluate_regdb_directions(vis, ids, th, ids, directions="v2t")
    with pytest.raises(EvaluationError, match="dimension"):
        evaluate_regdb_directions(vis, ids, th[:, :3], ids)
