from __future__ import annotations

import json

import pytest
import torch

from cmemd.config import load_config
from cmemd.engine.checkpoint import read_checkpoint
from cmemd.engine.objective import Objective
from cmemd.app.evaluate import load_trained
from cmemd.app.train import train
from cmemd.errors import CheckpointError, ConfigError, TrainingError
from cmemd.models import ModelConfig, build_model
from tests.engine.conftest import tiny_overrides


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=4, arch="resnet18", width=8, num_stripes=2, local_dim=16))
    objective = Objective(alignment="cmemd", lambda_align=0.5, lambda_dl=0.1, lambda_triplet=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(16, 3, 32, 16)
    pids = torch.arange(4).repeat_interleave(2).repeat(2)
    mods = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    losses = []
    for _ in range(8):
        total, terms = objective(model(x, mods), pids, mods)
        assert set(terms) >= {"loss", "ce_global", "ce_local", "align", "align_global", "align_local", "align_accum", "cmdl", "triplet"}
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(terms["loss"])
    assert losses[-1] < 0.7 * losses[0]


def test_resume_equals_uninterrupted(tiny_sysu, tmp_path):
    """2 epochs in one go == 1 epoch + resume, and == a run stopped mid-epoch and resumed (same parameters)."""
    full = train(load_config(None, tiny_overrides(tiny_sysu, tmp_path / "full")), progress=False, evaluate_after=False)
    ref = _params(full.model)

    first = load_config(None, tiny_overrides(tiny_sysu, tmp_path / "split", **{"optim.epochs": 1}))
    train(first, progress=False, evaluate_after=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(first, progress=False, evaluate_after=False)  # never overwrite a run silently
    resumed = train(load_config(None, tiny_overrides(tiny_sysu, tmp_path / "split")), resume=True, progress=False,
                    evaluate_after=False)
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, ref[k]), k
    # ...but never under settings that change training: that would silently mix two configurations
    changed = load_config(None, tiny_overrides(tiny_sysu, tmp_path / "split", **{"optim.epochs": 3, "optim.lr": 0.1,
                                                                                  "run.log_every": 5}))
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.05 -> 0\.1") as err:
        train(changed, resume=True, progress=False, evaluate_after=False)
    assert "optim.epochs" not in str(err.value) and "run.log_every" not in str(err.value)
    assert "lr: 0.05" in (tmp_path / "split" / "config.yaml").read_text()  # the run's record is left as it was

    # checkpointing every step must not perturb training (no RNG drawn, no state changed)
    mid = tiny_overrides(tiny_sysu, tmp_path / "mid", **{"run.checkpoint_every_steps": 1})
    train(load_config(None, mid), progress=False, evaluate_after=False)
    steps = read_checkpoint(tmp_path / "full" / "last.pt")["step"]
    metrics = [json.loads(x) for x in (tmp_path / "mid" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "step"] == list(range(1, steps + 1))
    mid_model, _ = load_trained(tmp_path / "mid" / "last.pt")
    for k, v in _params(mid_model).items():
        assert torch.equal(v, ref[k]), k


def test_mid_epoch_resume(tiny_sysu, tmp_path, monkeypatch):
    """Stop inside epoch 2 (after a mid-epoch checkpoint) and resume: same parameters as uninterrupted."""
    ref_run = train(load_config(None, tiny_overrides(tiny_sysu, tmp_path / "ref")), progress=False, evaluate_after=False)
    ref = _params(ref_run.model)
    steps = read_checkpoint(tmp_path / "ref" / "last.pt")["step"]
    stop_at = steps // 2 + 1  # inside the second epoch
    from cmemd.engine import trainer as trainer_mod

    original = trainer_mod.Trainer.forward_backward

    def crash_after(self, batch):
        if self.step == stop_at:
            raise KeyboardInterrupt  # what a kill looks like to the loop: no more steps, nothing else written
        return original(self, batch)

    out = tmp_path / "killed"
    cfg = load_config(None, tiny_overrides(tiny_sysu, out, **{"run.checkpoint_every_steps": 1}))
    monkeypatch.setattr(trainer_mod.Trainer, "forward_backward", crash_after)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, evaluate_after=False)
    monkeypatch.setattr(trainer_mod.Trainer, "forward_backward", original)
    ck = read_checkpoint(out / "last.pt")
    assert ck["step"] == stop_at and ck["epoch"] == 1 and ck["batches_done"] == stop_at - steps // 2
    resumed = train(cfg, resume=True, progress=False, evaluate_after=False)
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, ref[k]), k
    logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in x and '"kind": "step"' in x]
    assert logged == list(range(1, steps + 1))  # no duplicated or missing log lines after the resume


def test_non_finite_loss_stops_with_last_good_checkpoint(tiny_sysu, tmp_path, monkeypatch):
    from cmemd.engine import objective as objective_mod

    cfg = load_config(None, tiny_overrides(tiny_sysu, tmp_path / "nan", **{"optim.epochs": 2}))
    train(load_config(None, tiny_overrides(tiny_sysu, tmp_path / "nan", **{"optim.epochs": 1})), progress=False,
          evaluate_after=False)
    good = read_checkpoint(tmp_path / "nan" / "last.pt")
    original = objective_mod.Objective.forward

    def poisoned(self, out, pids, mods):
        total, terms = original(self, out, pids, mods)
        return total * float("nan"), {**terms, "loss": float("nan")}

    monkeypatch.setattr(objective_mod.Objective, "forward", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss.*last good checkpoint"):
        train(cfg, resume=True, progress=False, evaluate_after=False)
    after = read_checkpoint(tmp_path / "nan" / "last.pt")
    assert after["step"] == good["step"]
    for k, v in after["model"].items():
        assert torch.equal(v, good["model"][k])


def test_train_then_evaluate_writes_the_run(tiny_sysu, tmp_path):
    out = tmp_path / "run"
    outcome = train(load_config(None, tiny_overrides(tiny_sysu, out, **{"optim.epochs": 1})), progress=False)
    for name in ("last.pt", "config.yaml", "environment.json", "metrics.jsonl", "results.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"sysu all-search single-shot", "sysu indoor-search single-shot", "modality_gap"}
    result = outcome.results["sysu all-search single-shot"]
    assert len(result.trials) == 2 and 0.0 <= result.mean["R1"] <= 1.0
    model, cfg = load_trained(out / "last.pt")
    assert cfg.data.height == 32 and not model.training
    with pytest.raises(CheckpointError):
        torch.save({"model": {}}, tmp_path / "x.pt")
        load_trained(tmp_path / "x.pt")


def test_validation_selection_keeps_best_and_never_uses_test(tiny_sysu, tmp_path, monkeypatch):
    import cmemd.app.evaluate as app_evaluate
    import cmemd.benchmarks.registry as registry
    from cmemd.data.sysu import SYSUMM01

    out = tmp_path / "val"
    cfg = load_config(None, tiny_overrides(tiny_sysu, out, **{"run.selection": "val"}))
    looked_up = []
    real_lookup = registry.get_benchmark
    for module in (registry, app_evaluate):  # a lookup by name anywhere (function-level imports read the registry's)
        monkeypatch.setattr(module, "get_benchmark", lambda name: looked_up.append(name) or real_lookup(name))
    outcome = train(cfg, progress=False)
    # training data, validation hook, diagnostics hook and the final evaluation share one registry lookup
    assert looked_up == ["sysu"] and outcome.results
    ds = SYSUMM01(tiny_sysu)
    held_out = {int(r.path.split("/")[-2]) for r in ds.thermal("val")}
    trained_ids = sorted(ds.split_ids["train"])
    assert outcome.model.cfg.num_classes == len(trained_ids) and not held_out & set(trained_ids)
    vals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "val"' in x]
    assert [v["epoch"] for v in vals] == [0, 1]
    best = read_checkpoint(out / "best.pt")
    assert best["best_val_mAP"] == max(v["val_mAP"] for v in vals)
    assert vals[best["best_epoch"]]["val_mAP"] == best["best_val_mAP"]
    assert "val ids" in best["selection"] and "test set is never used" in best["selection"]
    diags = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "diag"' in x]
    assert [d["epoch"] for d in diags] == [0, 1]  # the diagnostics hook logs through Trainer.log too


def test_tensorboard_events_when_installed(tiny_sysu, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    train(load_config(None, tiny_overrides(tiny_sysu, out, **{"optim.epochs": 1})), progress=False, evaluate_after=False)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_resume_check_reads_a_key_missing_from_an_older_run_as_its_default(tmp_path):
    """A run recorded before a config key existed (e.g. model.non_local) resumes under that key's default;
    a non-default value is still a refused change."""
    import yaml

    from cmemd.config import dump_config
    from cmemd.app.train import _check_resume_config

    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    dump_config(cfg, tmp_path / "config.yaml")
    old = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del old["model"]["non_local"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _check_resume_config(tmp_path / "config.yaml", cfg)
    with pytest.raises(ConfigError, match=r"model\.non_local: False -> True"):
        _check_resume_config(tmp_path / "config.yaml", load_config(None, [f"run.out_dir={tmp_path}", "model.non_local=true"]))
