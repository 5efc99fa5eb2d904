"""evaluate_model on SYSU: only the pool images some trial draws are featurised, with unchanged results."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cmemd.config import load_config
from cmemd.app import evaluate as run
from cmemd.app.train import model_config
from cmemd.benchmarks.sysu import gallery_draws as sysu_gallery_draws
from cmemd.models import build_model

from .conftest import tiny_overrides


def test_sysu_evaluation_encodes_only_drawn_images_and_matches_full_pool(tiny_sysu, tmp_path, monkeypatch):
    cfg = load_config("configs/synth_cmemd.yaml", tiny_overrides(tiny_sysu, tmp_path / "run", **{"eval.trials": 3}))
    torch.manual_seed(0)
    model = build_model(model_config(cfg, num_classes=8)).eval()
    encoded: dict[str, int] = {}
    real = run.extract_features

    def counting(model, records, **kw):
        encoded[kw["desc"]] = len(records)
        return real(model, records, **kw)

    monkeypatch.setattr(run, "extract_features", counting)
    lean = run.evaluate_model(model, cfg, progress=False)
    full, feats = run.evaluate_model(model, cfg, progress=False, return_features=True)

    query, pool = run.evaluation_records(cfg, None)
    ids, cams, paths = [r.pid for r in pool], [r.camid for r in pool], [r.path for r in pool]
    drawn = set()
    for mode in cfg.eval.modes:
        for idx in sysu_gallery_draws(ids, cams, paths, mode=mode, trials=3):
            drawn |= set(idx.tolist())
    assert encoded["gallery (drawn images)"] == len(drawn) < len(pool)
    assert encoded["gallery pool"] == len(pool)
    assert lean.keys() == full.keys()
    for name in lean:
        for a, b in zip(lean[name].trials, full[name].trials):
            np.testing.assert_array_equal(a.first_hit, b.first_hit)
            assert a.mAP == pytest.approx(b.mAP, abs=1e-9) and a.mINP == pytest.approx(b.mINP, abs=1e-9)
