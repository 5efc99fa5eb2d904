"""Regression: the default alignment cost cannot be lowered by shrinking the features.

The first default (Euclidean on the pooled, pre-BN features) could: the BN-neck hides the feature scale from
the identity loss, so the alignment shrank the features and killed units (issue 13; docs/method.md). A tiny
model trains a few dozen steps with and without alignment; the aligned run's feature norms must stay above
half of the unaligned run's at every granularity, with under 30% dead units. The old cost is run too, to show
the check catches the failure it is for.
"""
from __future__ import annotations

import pytest

from cmemd.config import load_config
from cmemd.app.train import train

from .conftest import tiny_overrides

GRANULARITIES = ("global", "local", "accum")


def _last_epoch_health(root, out, *extra: str) -> dict[str, float]:
    overrides = tiny_overrides(root, out, **{
        "data.num_instances": 4, "data.random_erasing": 0.0, "data.steps_per_epoch": 25, "optim.epochs": 6,
        "optim.warmup_epochs": 0, "optim.milestones": "[10]", "run.threads": 1, "run.diagnostics_ids": 0,
        "run.log_every": 1000})
    cfg = load_config("configs/synth_cmemd.yaml", overrides + list(extra))
    history = train(cfg, progress=False, evaluate_after=False).history
    return history[-1]


@pytest.fixture(scope="module")
def unaligned(tiny_sysu, tmp_path_factory):
    return _last_epoch_health(tiny_sysu, tmp_path_factory.mktemp("none"), "loss.lambda_align=0")


def _collapsed(aligned: dict, reference: dict) -> list[str]:
    bad = []
    for g in GRANULARITIES:
        if aligned[f"norm_{g}"] < 0.5 * reference[f"norm_{g}"]:
            bad.append(f"{g} norm {aligned[f'norm_{g}']:.2f} < half of {reference[f'norm_{g}']:.2f}")
        if aligned[f"dead_{g}"] > 0.3:  # accumulated: units of their shared reduction silent for every prefix
            bad.append(f"{g} dead units {aligned[f'dead_{g}']:.0%}")
    return bad


def test_default_alignment_keeps_feature_scale(tiny_sysu, tmp_path, unaligned):
    aligned = _last_epoch_health(tiny_sysu, tmp_path)  # the shipped default cost and weight
    assert aligned["align"] > 0  # the alignment loss was on
    assert not _collapsed(aligned, unaligned)


def test_old_euclidean_cost_is_caught(tiny_sysu, tmp_path, unaligned):
    old = _last_epoch_health(tiny_sysu, tmp_path, "loss.emd_cost=euclidean", "loss.emd_normalize=false",
                             "loss.align_feature=pooled")
    assert _collapsed(old, unaligned), "the raw Euclidean cost no longer shrinks the features: revisit this test"
