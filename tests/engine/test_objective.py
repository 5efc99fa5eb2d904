"""Which features the alignment sees (align_feature) and the logged feature-health terms."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from cmemd.engine.objective import Objective, aligned_features, health_terms
from cmemd.errors import ConfigError
from cmemd.losses.alignment import ALIGNMENT_LOSSES
from cmemd.models.vtreid import VTOutput


def _output(n=8, c=6, s=2, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731  (all-positive, like pooled ReLU features)
    return VTOutput(global_feat=r(n, c), global_bn=r(n, c) - 0.5, global_logits=r(n, classes),
                    local_feats=r(n, s, d), local_bn=r(n, s, d) - 0.5, local_logits=[r(n, classes) for _ in range(s)],
                    accumulated_feats=r(n, s, d), accumulated_bn=r(n, s, d) - 0.5,
                    accumulated_logits=[r(n, classes) for _ in range(s)], holistic=r(n, s * d))


def test_aligned_features_per_choice():
    out = _output()
    pooled = aligned_features(out, "all", "pooled")
    assert len(pooled) == 1 + 2 + 2 and pooled[0] is out.global_feat
    bn = aligned_features(out, "all", "bn")
    assert torch.equal(bn[0], out.global_bn) and torch.equal(bn[1], out.local_bn[:, 0])
    assert torch.equal(bn[3], out.accumulated_bn[:, 0])
    centred = aligned_features(out, "all", "centered")
    for p, c in zip(pooled, centred):
        torch.testing.assert_close(c, p - p.mean(0, keepdim=True))
        assert c.mean(0).abs().max() < 1e-6
    assert len(aligned_features(out, "global", "pooled")) == 1


def test_centred_alignment_ignores_a_shared_offset():
    """Centring removes what every feature of the batch shares: adding one vector to all of them changes nothing."""
    out = _output()
    pids, mods = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]), torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])
    obj = Objective(alignment="cmemd", align_feature="centered", lambda_dl=0.0)
    _, a = obj(out, pids, mods)
    shifted = _output()
    shifted.global_feat = shifted.global_feat + torch.linspace(1.0, 3.0, 6)
    _, b = obj(shifted, pids, mods)
    assert a["align_global"] == pytest.approx(b["align_global"], rel=1e-5)
    with pytest.raises(ConfigError, match="align_feature"):
        Objective(align_feature="raw")


def test_health_terms_count_shared_prefix_units_once():
    out = _output()
    out.accumulated_feats = torch.zeros(8, 2, 4)
    out.accumulated_feats[:, 1, :2] = 1.0  # units 0, 1 fire for prefix 2 only; units 2, 3 never
    t = health_terms(out)
    assert t["dead_accum"] == pytest.approx(2 / 4)  # shared reduction: silent for every prefix
    assert t["dead_accum_prefix"] == pytest.approx(6 / 8)  # (prefix, unit) pairs silent for every image
    assert t["dead_global"] == 0.0 and t["norm_global"] > 0


@pytest.mark.parametrize("alignment", ALIGNMENT_LOSSES)
def test_the_objective_hands_every_alignment_its_options(alignment):
    """The loss settings reach whichever alignment the objective builds; ``none`` adds no alignment term."""
    obj = Objective(alignment=alignment, emd_cost="cosine", emd_normalize=False, emd_solver="sinkhorn",
                    sinkhorn_eps=0.2, sinkhorn_iters=7, lambda_dl=0.0)
    want = {"cmemd": dict(cost="cosine", normalize=False, solver="sinkhorn", eps=0.2, sinkhorn_iters=7),
            "all-pairs": dict(cost="cosine", normalize=False), "hetero-center": dict(cost="cosine", normalize=False),
            "mmd": dict(normalize=False), "none": {}}[alignment]
    assert {k: getattr(obj.align, k) for k in want} == want
    pids, mods = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]), torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])
    _, terms = obj(_output(), pids, mods)
    assert ("align" in terms) == (alignment != "none")


def test_the_objective_never_branches_on_an_alignment_loss_name():
    """engine/objective.py compares no alignment loss name (no ``alignment == "mmd"``, no ``in ("cmemd", ..)``):
    which options a loss reads is the loss's business (AlignmentOptions)."""
    src = Path(__file__).resolve().parents[2] / "src" / "cmemd" / "engine" / "objective.py"
    compared = [(c.lineno, n.value) for c in ast.walk(ast.parse(src.read_text(encoding="utf-8")))
                if isinstance(c, ast.Compare) for n in ast.walk(c)
                if isinstance(n, ast.Constant) and n.value in ALIGNMENT_LOSSES]
    assert not compared, f"alignment loss names compared in {src}: {compared}"
    branch = ast.parse('if alignment in ("all-pairs", "hetero-center"):\n    pass\n')  # what the check catches
    assert [n.value for c in ast.walk(branch) if isinstance(c, ast.Compare) for n in ast.walk(c)
            if isinstance(n, ast.Constant)] == ["all-pairs", "hetero-center"]
