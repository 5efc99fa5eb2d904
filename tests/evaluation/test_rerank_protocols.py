"""Re-ranking inside the SYSU-MM01 and RegDB protocols: per-trial equivalence with re-ranking the
trial's gallery by hand, labelling, and query-query distances computed once."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cmemd.evaluation import (
    ReRanking,
    combine_results,
    evaluate_similarity,
    format_results,
    re_ranking,
    to_json,
)
from cmemd.benchmarks.regdb import evaluate_regdb, evaluate_regdb_directions
from cmemd.benchmarks.sysu import SAME_LOCATION, evaluate_sysu
from cmemd.errors import EvaluationError
import cmemd.evaluation.protocol as protocols

from .rerank_reference import re_ranking_brute
from .test_protocols import stand_in_draw, sysu_like


def euclid(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))


def unit(f):
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_sysu_trials_equal_re_ranking_each_gallery_by_hand(metric):
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=2, n_ids=6, per_cam=4)
    params = ReRanking(k1=6, k2=3, lambda_value=0.3)
    res = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, mode="all", shots=1, trials=3, draw=stand_in_draw,
                        metric=metric, rerank=params)
    plain = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, mode="all", shots=1, trials=3, draw=stand_in_draw, metric=metric)
    assert res.settings["rerank"] == params.to_dict() and plain.settings["rerank"] is None
    q = unit(qf) if metric == "cosine" else qf
    p = unit(pf) if metric == "cosine" else pf
    for t, r in enumerate(res.trials):
        g = stand_in_draw(pp, pc, paths, mode="all", shots=1, trial=t, method="python-random", rand_perm=None)
        # the mapping: Euclidean distances of the ranked features (squared inside re-ranking)
        dist = re_ranking_brute(euclid(q, p[g]), euclid(q, q), euclid(p[g], p[g]), 6, 3, 0.3)
        direct = evaluate_similarity(-dist, qp, qc, pp[g], pc[g], removal=SAME_LOCATION, cmc="identity-dedup")
        np.testing.assert_array_equal(r.first_hit, direct.first_hit)
        np.testing.assert_allclose(r.ap, direct.ap, atol=1e-6)
        assert r.info["gallery_size"] == len(g)
    assert any(a.mAP != b.mAP for a, b in zip(res.trials, plain.trials))  # re-ranking changed something


def test_sysu_query_query_distances_once_and_shared_equals_per_trial(monkeypatch):
    """The query-query matrix is computed once for all trials; the per-trial fallback (pool matrix too large
    for the budget) gives the same numbers."""
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=3, n_ids=5, per_cam=3)
    calls = []
    real = protocols.squared_euclidean

    def spy(a, b):
        calls.append((a.shape[0], b.shape[0], a is b))
        return real(a, b)

    monkeypatch.setattr(protocols, "squared_euclidean", spy)
    kw = dict(mode="indoor", shots=1, trials=4, draw=stand_in_draw, rerank=True)  # gallery 2 x ids, queries 4 x ids
    shared = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, **kw)
    Q = len(qp)
    assert sum(1 for c in calls if c == (Q, Q, True)) == 1
    calls.clear()
    per_trial = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, memory_budget=64, **kw)
    assert sum(1 for c in calls if c == (Q, Q, True)) == 1
    assert sum(1 for c in calls if c[0] == Q and not c[2]) == 4  # query x gallery, once per trial
    for a, b in zip(shared.trials, per_trial.trials):
        np.testing.assert_array_equal(a.first_hit, b.first_hit)
        np.testing.assert_allclose(a.ap, b.ap, atol=1e-6)


def test_regdb_directions_with_re_ranking():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(8, 10))
    vp = np.repeat(np.arange(8), 3)
    tp = np.repeat(np.arange(8), 2)
    vf = (centres[vp] + 0.8 * rng.normal(size=(len(vp), 10))).astype(np.float32)
    tf = (centres[tp] + 0.8 * rng.normal(size=(len(tp), 10)) + 0.5).astype(np.float32)
    both = evaluate_regdb_directions(vf, vp, tf, tp, trial=2, rerank=ReRanking(5, 2, 0.4))
    v, t = unit(vf), unit(tf)
    for d, (q, qpids, g, gpids) in {"v2t": (v, vp, t, tp), "t2v": (t, tp, v, vp)}.items():
        dist = re_ranking_brute(euclid(q, g), euclid(q, q), euclid(g, g), 5, 2, 0.4)
        direct = evaluate_similarity(-dist, qpids, np.zeros(len(qpids)), gpids, np.ones(len(gpids)))
        r = both[d].trials[0]
        np.testing.assert_array_equal(r.first_hit, direct.first_hit)
        np.testing.assert_allclose(r.ap, direct.ap, atol=1e-6)
        assert both[d].settings["rerank"] == {"method": "k-reciprocal", "k1": 5, "k2": 2, "lambda": 0.4}
    one = evaluate_regdb(vf, vp, tf, tp, direction="t2v", trial=2, rerank={"k1": 5, "k2": 2, "lambda": 0.4})
    np.testing.assert_allclose(one.trials[0].ap, both["t2v"].trials[0].ap, atol=0)


def test_the_table_and_json_say_whether_re_ranking_was_used():
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=5, n_ids=5, per_cam=3)
    kw = dict(mode="all", shots=1, trials=2, draw=stand_in_draw)
    plain = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, **kw)
    rr = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, rerank=True, **kw)
    assert "no re-ranking" in format_results(plain) and "re-ranked" not in format_results(plain)
    text = format_results(rr)
    assert text.splitlines()[0].startswith("** re-ranked (k-reciprocal, k1=20, k2=6, λ=0.3)")
    assert "compare only with re-ranked numbers" in text
    assert json.loads(to_json(plain))["settings"]["rerank"] is None
    data = json.loads(to_json(rr))
    assert data["settings"]["rerank"] == {"method": "k-reciprocal", "k1": 20, "k2": 6, "lambda": 0.3}
    assert "re-ranked (k-reciprocal" in data["description"]
    with pytest.raises(EvaluationError, match="settings differ"):
        combine_results([plain, rr])  # a plain and a re-ranked trial are never averaged together


def test_default_is_off_and_bad_options_are_errors():
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=6, n_ids=4, per_cam=2)
    res = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, trials=1, draw=stand_in_draw)
    assert res.settings["rerank"] is None
    with pytest.raises(EvaluationError, match="rerank="):
        evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, trials=1, draw=stand_in_draw, rerank="yes")
    with pytest.raises(EvaluationError, match="k2=0"):
        evaluate_regdb(qf, qp, pf[:10], pp[:10], rerank={"k2": 0})


def test_public_function_matches_protocol_mapping():
    """re_ranking on Euclidean distances of normalised features = what the protocol ranks for cosine."""
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=7, n_ids=4, per_cam=2)
    g = stand_in_draw(pp, pc, paths, mode="all", shots=1, trial=0, method="python-random", rand_perm=None)
    q, p = unit(qf), unit(pf[g])
    dist = re_ranking(euclid(q, p), euclid(q, q), euclid(p, p))
    res = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, trials=1, draw=stand_in_draw, rerank=True)
    direct = evaluate_similarity(-dist, qp, qc, pp[g], pc[g], removal=SAME_LOCATION, cmc="identity-dedup")
    np.testing.assert_array_equal(res.trials[0].first_hit, direct.first_hit)
    np.testing.assert_allclose(res.trials[0].ap, direct.ap, atol=1e-6)


def test_cli_eval_features_rerank_prints_both_and_saves_both(tmp_path):
    from typer.testing import CliRunner

    from cmemd.cli import app
    from cmemd.evaluation import save_features

    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=8, n_ids=6, per_cam=3)
    save_features(tmp_path / "q.npz", qf, qp, qc, [f"q{i}.jpg" for i in range(len(qp))])
    save_features(tmp_path / "g.npz", pf, pp, pc, paths)
    out = tmp_path / "r.json"
    args = ["eval-features", str(tmp_path / "q.npz"), str(tmp_path / "g.npz"), "--protocol", "sysu", "trials=2"]
    res = CliRunner().invoke(app, args + ["--rerank", "--k1", "5", "--k2", "2", "--lambda-value", "0.2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    plain_at = res.output.index("no re-ranking")
    rr_at = res.output.index("** re-ranked (k-reciprocal, k1=5, k2=2, λ=0.2)")
    assert plain_at < rr_at and res.output.count("mean ± std") == 2
    data = json.loads(out.read_text())
    assert set(data) == {"plain", "reranked"}
    assert data["plain"]["settings"]["rerank"] is None
    assert data["reranked"]["settings"]["rerank"] == {"method": "k-reciprocal", "k1": 5, "k2": 2, "lambda": 0.2}
    lib = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, trials=2, rerank=ReRanking(5, 2, 0.2))
    assert data["reranked"]["mean"]["mAP"] == pytest.approx(lib.mean["mAP"])
    # default: off, one table, the JSON of one result saying so
    res = CliRunner().invoke(app, args + ["--out", str(out)])
    assert res.exit_code == 0 and "re-ranked" not in res.output and "no re-ranking" in res.output
    assert json.loads(out.read_text())["settings"]["rerank"] is None
    res = CliRunner().invoke(app, args + ["--rerank", "--k1", "0"])
    assert res.exit_code == 2 and "k1=0" in res.output
