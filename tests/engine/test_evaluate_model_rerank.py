"""evaluate_model with eval.rerank: each setting plain, then re-ranked and labelled; off by default."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cmemd.config import load_config
from cmemd.app import evaluate as run
from cmemd.app.train import model_config
from cmemd.errors import ConfigError
from cmemd.benchmarks.sysu import evaluate_sysu
from cmemd.evaluation import ReRanking
from cmemd.models import build_model

from .conftest import tiny_overrides


def test_rerank_adds_a_labelled_result_after_each_plain_one(tiny_sysu, tmp_path):
    over = tiny_overrides(tiny_sysu, tmp_path / "run", **{"eval.trials": 2, "eval.rerank": "true", "eval.rerank_k1": 5,
                                                         "eval.rerank_k2": 2, "eval.rerank_lambda": 0.4})
    cfg = load_config("configs/synth_cmemd.yaml", over)
    torch.manual_seed(0)
    model = build_model(model_config(cfg, num_classes=8)).eval()
    results, feats = run.evaluate_model(model, cfg, progress=False, return_features=True)
    label = ReRanking(5, 2, 0.4).label()
    names = list(results)
    assert names == [n for m in cfg.eval.modes for n in (f"sysu {m}-search single-shot",
                                                          f"sysu {m}-search single-shot, {label}")]
    for name, r in results.items():
        assert (r.settings["rerank"] is not None) == ("re-ranked" in name)
    # the re-ranked entry is the protocol with rerank on, on the same features
    q, g = feats["query"], feats["gallery"]
    mode = cfg.eval.modes[0]
    lib = evaluate_sysu(q.feats, q.pids, q.cams, g.feats, g.pids, g.cams, g.paths, mode=mode, trials=2,
                        rerank=ReRanking(5, 2, 0.4), feature_name=results[names[1]].settings["feature_name"])
    assert results[names[1]].mean == pytest.approx(lib.mean)
    text = run.format_all(results)
    assert text.count("** re-ranked (k-reciprocal, k1=5, k2=2, λ=0.4)") == len(cfg.eval.modes)

    plain = run.evaluate_model(model, load_config("configs/synth_cmemd.yaml", tiny_overrides(tiny_sysu, tmp_path / "r")),
                               progress=False)
    assert all("re-ranked" not in n and r.settings["rerank"] is None for n, r in plain.items())
    for a, b in zip(plain.values(), [results[n] for n in names[::2]]):
        np.testing.assert_array_equal(a.trials[0].first_hit, b.trials[0].first_hit)


def test_config_rejects_bad_rerank_parameters(tiny_sysu, tmp_path):
    with pytest.raises(ConfigError, match="eval.rerank_k1"):
        load_config("configs/synth_cmemd.yaml", tiny_overrides(tiny_sysu, tmp_path, **{"eval.rerank_k1": 0}))
    with pytest.raises(ConfigError, match="eval.rerank_lambda"):
        load_config("configs/synth_cmemd.yaml", tiny_overrides(tiny_sysu, tmp_path, **{"eval.rerank_lambda": 2}))
