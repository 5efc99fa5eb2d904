"""Config values out of their range are a ConfigError naming the key and the fix, before any work (issue 24), and
``model.pretrained=imagenet`` on an offline machine fails with the fix before the data cache is built."""
from __future__ import annotations

import re
import urllib.error
from collections import Counter

import pytest
import torch

from cmemd.app.train import check_pretrained, train, training_data
from cmemd.config import RANGES, load_config, numeric_fields
from cmemd.errors import ConfigError
from tests.engine.conftest import tiny_overrides, tiny_sysu  # noqa: F401  (tiny_sysu is a fixture)

# ---------------------------------------------------------------------- ranges of the settings

ISSUE = [  # the values issue 24 lists
    ("optim.lr=inf", "optim.lr"), ("optim.lr=-1", "optim.lr"), ("loss.lambda_align=-1", "loss.lambda_align"),
    ("run.seed=-1", "run.seed"), ("data.num_workers=-1", "data.num_workers"),
    ("data.steps_per_epoch=0", "data.steps_per_epoch"),
]


@pytest.mark.parametrize("override,key", ISSUE)
def test_values_from_the_issue_are_errors_naming_key_and_fix(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(f"{key}=") and "must be" in msg and f"override it ({key}=..." in msg, msg


def test_one_identity_per_batch_with_cmdl():
    with pytest.raises(ConfigError, match=r"data.num_ids=1 with CM-DL \(loss.lambda_dl=0.1\).*set data.num_ids=2 or more, "
                                          r"or loss.lambda_dl=0"):
        load_config(None, ["data.num_ids=1"])
    assert load_config(None, ["data.num_ids=1", "loss.lambda_dl=0"]).data.num_ids == 1  # without CM-DL it is fine


def test_every_numeric_setting_has_a_range():
    fields = numeric_fields()
    assert set(fields) == set(RANGES)
    # the walk sees every section, Optional and list fields included
    assert {"data.steps_per_epoch", "model.gem_p", "loss.lambda_dl", "optim.milestones", "optim.grad_clip",
            "eval.rerank_lambda", "run.max_minutes"} <= set(fields)
    assert fields["optim.milestones"] is int and fields["optim.grad_clip"] is float


@pytest.mark.parametrize("key", sorted(numeric_fields()))
def test_no_setting_takes_a_non_finite_or_negative_value(key):
    # none of the settings has a meaning below 0, or at NaN / infinity
    for raw in ("nan", ".inf", "-.inf", "-1", "-0.5", "-1e300"):
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{key}={raw}"])
        assert key in str(e.value), (raw, str(e.value))
    load_config(None, [])  # and every default is inside its range


@pytest.mark.parametrize("override,ok", [
    ("optim.momentum=0", True), ("optim.momentum=1", False), ("optim.gamma=1", True), ("optim.gamma=0", False),
    ("loss.label_smoothing=0.99", True), ("loss.label_smoothing=1", False),
    ("data.random_erasing=1", True), ("data.random_erasing=1.01", False), ("data.channel_aug=0", True),
    ("data.trial=10", True), ("data.trial=11", False), ("data.trial=0", False),
    ("data.num_workers=0", True), ("data.pad=0", True), ("data.steps_per_epoch=null", True),
    ("data.height=0", False), ("data.num_instances=0", False),
    ("optim.lr=0", False), ("optim.backbone_lr=0", True), ("optim.weight_decay=0", True),
    ("optim.epochs=0", False), ("optim.warmup_epochs=0", True), ("optim.milestones=[1, 3]", True),
    ("optim.milestones=[0]", False), ("optim.grad_clip=0", False), ("optim.grad_clip=null", True),
    ("loss.lambda_align=0", True), ("loss.sinkhorn_eps=0", False), ("loss.sinkhorn_iters=0", False),
    ("model.gem_p=inf", False), ("model.num_stripes=0", False),
    ("eval.trials=0", False), ("eval.batch_size=0", False), ("eval.rerank_k1=0", False),
    ("eval.rerank_lambda=1", True), ("eval.rerank_lambda=1.5", False),
    (f"run.seed={2**32 - 1}", True), (f"run.seed={2**32}", False), ("run.threads=0", False), ("run.threads=null", True),
    ("run.log_every=0", False), ("run.checkpoint_every_steps=0", True), ("run.max_minutes=0", False),
    ("run.max_minutes=0.5", True), ("run.diagnostics_ids=0", True),
])
def test_range_boundaries(override, ok):
    if ok:
        load_config(None, [override])
    else:
        with pytest.raises(ConfigError, match="^" + re.escape(override.split("=")[0])):
            load_config(None, [override])


# ---------------------------------------------------------------------- the batch against the training set

def _no_work(*_a, **_k):
    raise AssertionError("the data cache / loader was built before the check")


def _most_images_of_each_modality(records) -> tuple[int, int]:
    """(largest K some identity can fill with distinct images of both modalities, identities having both)."""
    by = Counter((r.pid, r.modality) for r in records)
    pids = {r.pid for r in records}
    both = [min(by[p, "visible"], by[p, "thermal"]) for p in pids if by[p, "visible"] and by[p, "thermal"]]
    return max(both), len(both)


def test_num_instances_beyond_every_identity_before_the_cache(tiny_sysu, tmp_path, monkeypatch):  # noqa: F811
    recs = training_data(load_config(None, tiny_overrides(tiny_sysu, tmp_path / "r0"))).records
    most, ids = _most_images_of_each_modality(recs)
    monkeypatch.setattr("cmemd.data.dataset.build_train_loader", _no_work)
    cache = tmp_path / "cache"
    for k in (most + 1, 100_000):  # 100000: the run that met the OOM killer
        cfg = load_config(None, tiny_overrides(tiny_sysu, tmp_path / "run", **{
            "data.num_instances": k, "data.cache": True, "data.cache_dir": cache}))
        with pytest.raises(ConfigError, match=rf"^data.num_instances={k}: .*the most any has is {most}\).*"
                                              rf"set data.num_instances={most} or less"):
            train(cfg, progress=False)
    assert not cache.exists()
    # the largest value passes; one identity more than the set has does not
    training_data(load_config(None, tiny_overrides(tiny_sysu, tmp_path / "r1", **{"data.num_instances": most})))
    with pytest.raises(ConfigError, match=rf"^data.num_ids={ids + 1}: .*only {ids} identities.*data.num_ids={ids} or less"):
        training_data(load_config(None, tiny_overrides(tiny_sysu, tmp_path / "r2", **{"data.num_ids": ids + 1})))


# ---------------------------------------------------------------------- offline ImageNet weights

@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and a network that is down (what torch.hub raises on a machine without one)."""
    calls = []

    def unreachable(url, *_a, **_k):
        calls.append(url)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    return tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth", calls


def test_offline_imagenet_names_the_fix_before_the_data_cache(tiny_sysu, tmp_path, monkeypatch, offline):  # noqa: F811
    cached, calls = offline
    monkeypatch.setattr("cmemd.data.dataset.build_train_loader", _no_work)
    cache = tmp_path / "cache"
    cfg = load_config(None, tiny_overrides(tiny_sysu, tmp_path / "run", **{
        "model.pretrained": "imagenet", "data.cache": True, "data.cache_dir": cache}))
    with pytest.raises(ConfigError) as e:
        train(cfg, progress=False)
    msg = str(e.value)
    assert msg.startswith("model.pretrained=imagenet: ") and "Network is unreachable" in msg
    assert "model.pretrained=PATH" in msg and f"to {cached}" in msg, msg
    assert len(calls) == 1 and not cache.exists() and not cached.exists()


def test_weights_in_the_cache_or_a_local_file_need_no_network(tmp_path, offline):
    cached, calls = offline
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights copied here by hand")
    check_pretrained(load_config(None, ["model.arch=resnet18", "model.pretrained=imagenet"]))
    check_pretrained(load_config(None, ["model.arch=resnet18", f"model.pretrained={cached}"]))
    assert calls == []
    with pytest.raises(ConfigError, match=r"model.pretrained=.*nope.pth: file not found; set model.pretrained=PATH"):
        check_pretrained(load_config(None, [f"model.pretrained={tmp_path / 'nope.pth'}"]))
    with pytest.raises(ConfigError, match=r"model.pretrained=imagenet-v2: .*not available for resnet18"):
        check_pretrained(load_config(None, ["model.arch=resnet18", "model.pretrained=imagenet-v2"]))
