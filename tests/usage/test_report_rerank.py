"""The report shows a re-ranked result beside the plain one, labelled; a plain-only report is unchanged."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from cmemd.evaluation import evaluate_sysu  # noqa: E402
from cmemd.evaluation.features import FeatureSet  # noqa: E402
from cmemd.report import write_report  # noqa: E402
from tests.evaluation.test_protocols import stand_in_draw, sysu_like  # noqa: E402


def _report(tmp_path, rerank: bool):
    qf, qp, qc, pf, pp, pc, paths = sysu_like(seed=1, n_ids=6, per_cam=3)
    kw = dict(mode="all", shots=1, trials=2, draw=stand_in_draw)
    results = {"sysu all-search": evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, **kw)}
    if rerank:
        results["sysu all-search, re-ranked"] = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, rerank=True, **kw)
    q = FeatureSet(qf, qp, qc, np.array([f"missing/q{i}.jpg" for i in range(len(qp))]))
    g = FeatureSet(pf, pp, pc, np.array([f"missing/{p}" for p in paths]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # grey tiles for the missing images
        index = write_report(tmp_path / ("rr" if rerank else "plain"), results, q, g, removal="sysu-same-location",
                             embedding="pca", num_queries=2, top_k=3)
    return index.read_text()


def test_re_ranked_table_beside_the_plain_one(tmp_path):
    page = _report(tmp_path, rerank=True)
    assert page.count("<div class='pair'>") == 1
    pair = page[page.index("<div class='pair'>"):]
    assert pair.index("<div class='plain'>") < pair.index("<div class='rerank'>")
    assert "re-ranked (k-reciprocal, k1=20, k2=6, λ=0.3): transductive" in page
    assert page.count("mean ± std") == 2 and page.count("<td>trial 1</td>") == 2
    assert "no re-ranking" in page  # the plain table's description says so


def test_plain_report_has_no_re_ranked_table(tmp_path):
    page = _report(tmp_path, rerank=False)
    assert "class='pair'" not in page and "class='rerank'" not in page and page.count("mean ± std") == 1
