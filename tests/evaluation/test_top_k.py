"""top_k: the ranked lists of the report and `cmemd search` rank exactly as the evaluation does."""
from __future__ import annotations

import numpy as np
import pytest

from cmemd.errors import EvaluationError
from cmemd.benchmarks.sysu import SAME_LOCATION
from cmemd.evaluation.metrics import SameLocation, top_k
from tests.evaluation.eval_reference import similarity


def _brute(qf, gf, k, removal, qp, qc, gp, gc):
    sim = similarity(qf, gf, "cosine")
    out = []
    for i in range(len(qf)):
        if removal == "same-pid-same-cam":
            hidden = (gp == qp[i]) & (gc == qc[i])
        elif isinstance(removal, SameLocation):
            hidden = np.zeros(len(gf), bool)
            for q, g in removal.pairs:
                hidden |= (qc[i] == q) & (gc == g)
        else:
            hidden = np.zeros(len(gf), bool)
        kept = [j for j in np.argsort(-sim[i], kind="stable") if not hidden[j]]
        out.append((kept + [j for j in range(len(gf)) if hidden[j]])[:k])
    return np.array(out)


@pytest.mark.parametrize(
    "removal", ["none", "same-pid-same-cam", SAME_LOCATION, SameLocation("two-rooms", ((3, 2), (6, 1)))]
)
@pytest.mark.parametrize("k", [1, 3, 40])
def test_matches_a_stable_sort_with_ties(removal, k):
    rng = np.random.default_rng(k)
    protos = np.array([v for v in np.ndindex(2, 2, 2, 2) if 1 <= sum(v) <= 2], np.float32)  # exact ties
    qf, gf = protos[rng.integers(0, len(protos), 9)], protos[rng.integers(0, len(protos), 30)]
    qp, qc = rng.integers(0, 4, 9), rng.integers(1, 7, 9)
    gp, gc = rng.integers(0, 4, 30), rng.integers(1, 7, 30)
    idx, scores = top_k(qf, gf, k, removal=removal, query_pids=qp, query_cams=qc, gallery_pids=gp, gallery_cams=gc)
    want = _brute(qf, gf, k, removal, qp, qc, gp, gc)
    np.testing.assert_array_equal(idx, want)
    assert idx.shape == (9, min(k, 30))
    sim = similarity(qf, gf, "cosine")
    for i in range(9):
        for r, j in enumerate(idx[i]):
            if np.isfinite(scores[i, r]):
                assert scores[i, r] == pytest.approx(sim[i, j], abs=1e-6)


def test_a_tie_across_the_cut_keeps_the_earlier_item():
    # gallery items 0..5 all tie; the first k by index must be listed (a partial sort may pick others)
    g = np.ones((6, 3), np.float32)
    idx, _ = top_k(np.ones((1, 3), np.float32), g, 2)
    assert idx.tolist() == [[0, 1]]


def test_removal_needs_labels():
    with pytest.raises(EvaluationError, match="needs query_pids"):
        top_k(np.ones((1, 2)), np.ones((2, 2)), 1, removal="same-pid-same-cam")
    with pytest.raises(EvaluationError, match="k=0"):
        top_k(np.ones((1, 2)), np.ones((2, 2)), 0)
