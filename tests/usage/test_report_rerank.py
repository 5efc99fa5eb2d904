"""The report shows a re-ranked result beside the plain one, labelled; a plain-only report is unchanged."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from cmemd.benchmarks.sysu import SAME_LOCATION, evaluate_sysu  # noqa: E402
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
        index = write_report(tmp_path / ("rr" if rerank else "plain"), results, q, g, removal=SAME_LOCATION,
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
    assert "(removal sysu-same-location)" in page  # the rule's name, as results record it


def test_plain_report_has_no_re_ranked_table(tmp_path):
    page = _report(tmp_path, rerank=False)
    assert "class='pair'" not in page and "class='rerank'" not in page and page.count("mean ± std") == 1


def test_cli_eval_rerank_prints_saves_and_reports_both(tiny_checkpoint, tmp_path):
    import json

    from typer.testing import CliRunner

    from cmemd.cli import app

    out, report = tmp_path / "r.json", tmp_path / "report"
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "trials=2",
                                 "modes=[all]", "--rerank", "--k1", "6", "--k2", "2", "--out", str(out),
                                 "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert "plain and re-ranked (k-reciprocal, k1=6, k2=2, λ=0.3)" in r.output
    assert r.output.index("== sysu all-search single-shot\n") < r.output.index("** re-ranked (k-reciprocal, k1=6")
    data = json.loads(out.read_text())
    label = "re-ranked (k-reciprocal, k1=6, k2=2, λ=0.3)"
    assert [k for k in data if k.startswith("sysu")] == ["sysu all-search single-shot",
                                                         f"sysu all-search single-shot, {label}"]
    assert data["sysu all-search single-shot"]["settings"]["rerank"] is None
    assert data[f"sysu all-search single-shot, {label}"]["settings"]["rerank"]["k1"] == 6
    page = (report / "index.html").read_text()
    assert page.count("<div class='pair'>") == 1 and f"{label}: transductive" in page
    # without the flag: no re-ranking anywhere, and the header says so
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "trials=1",
                                 "modes=[all]"])
    assert r.exit_code == 0 and "no re-ranking" in r.output and "re-ranked (" not in r.output
