"""The core's generic same-location removal rule: what it hides, what results record, what it refuses."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmemd.benchmarks.sysu import SAME_LOCATION, evaluate_sysu
from cmemd.errors import EvaluationError
from cmemd.evaluation import SameLocation, evaluate, evaluate_similarity, to_dict
from cmemd.evaluation.metrics import removed_pairs

from .test_protocols import sysu_like


def test_sysu_rule_is_cam3_queries_losing_cam2():
    assert SAME_LOCATION == SameLocation("sysu-same-location", ((3, 2),))


def test_mask_hides_exactly_the_listed_camera_pairs():
    rule = SameLocation("two-rooms", [[3, 2], (6, 1)])  # lists are accepted and stored as tuples
    assert rule.pairs == ((3, 2), (6, 1)) and hash(rule) == hash(SameLocation("two-rooms", ((3, 2), (6, 1))))
    qc, gc = torch.tensor([1, 3, 6, 2]), torch.tensor([1, 2, 3, 6, 2, 1])
    ids = torch.zeros(4, dtype=torch.int64), torch.zeros(6, dtype=torch.int64)
    mask = removed_pairs(rule, ids[0], qc, ids[1], gc)
    want = [[(int(q), int(g)) in {(3, 2), (6, 1)} for g in gc] for q in qc]
    assert mask is not None and mask.tolist() == want


def test_each_pair_is_applied_on_its_own_and_identity_does_not_matter():
    # one query of cam6; gallery (id, cam): A(1, 1) B(1, 2) C(1, 4); similarity A > B > C
    sim = np.array([[0.9, 0.8, 0.7]])
    gp, gc = [1, 1, 1], [1, 2, 4]
    only_cam3 = evaluate_similarity(sim, [1], [6], gp, gc, removal=SameLocation("a", ((3, 1),)))
    assert only_cam3.first_hit[0] == 1 and only_cam3.ap[0] == pytest.approx(1.0)  # not a cam3 query: nothing hidden
    both = SameLocation("b", ((3, 2), (6, 1), (6, 2)))
    r = evaluate_similarity(sim, [1], [6], gp, gc, removal=both)
    # A and B are hidden (their own ids!): C is the only true match left, ranked 1st of 1
    assert r.first_hit[0] == 1 and r.ap[0] == pytest.approx(1.0)
    r_cams = evaluate_similarity(sim, [1], [6], gp, [4, 1, 2], removal=both)
    assert r_cams.num_valid == 1 and r_cams.ap[0] == pytest.approx(1.0)
    hide_all = evaluate_similarity(np.vstack([sim, sim]), [1, 1], [6, 4], gp, [1, 2, 2], removal=both, cmc="standard")
    np.testing.assert_array_equal(hide_all.valid_mask, [False, True])


def test_results_record_the_rule_name_as_a_string():
    q, g = np.eye(3), np.eye(3)
    r = evaluate(q, [0, 1, 2], [3, 3, 6], g, [0, 1, 2], [1, 2, 1], removal=SAME_LOCATION)
    assert r.removal == "sysu-same-location" and type(r.removal) is str
    assert json.loads(json.dumps(to_dict(r)))["removal"] == "sysu-same-location"
    assert r.num_excluded == 1  # the cam3 query of id 1 only matches a cam2 image
    qf, qp, qc, pf, pp, pc, paths = sysu_like(n_ids=4, per_cam=2)
    res = evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, trials=2)
    d = json.loads(json.dumps(to_dict(res)))  # results.json: plain JSON, the same string as before
    assert d["settings"]["removal"] == "sysu-same-location"
    assert "removal sysu-same-location" in d["description"]
    assert {t.removal for t in res.trials} == {"sysu-same-location"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="", pairs=((3, 2),)), "non-empty name"),
        (dict(name="none", pairs=((3, 2),)), "non-empty name"),
        (dict(name="x", pairs=()), "non-empty tuple"),
        (dict(name="x", pairs=((3,),)), "non-empty tuple"),
        (dict(name="x", pairs=((3, 2.5),)), "non-empty tuple"),
        (dict(name="x", pairs=((True, 2),)), "non-empty tuple"),
        (dict(name="x", pairs="32"), "non-empty tuple"),
    ],
)
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(EvaluationError, match=match):
        SameLocation(**kwargs)


def test_the_old_string_name_points_at_the_rule_object():
    with pytest.raises(EvaluationError, match="SameLocation rule") as e:
        evaluate(np.eye(2), [0, 1], [3, 3], np.eye(2), [0, 1], [1, 2], removal="sysu-same-location")
    assert "removal='sysu-same-location' is unknown" in str(e.value)
