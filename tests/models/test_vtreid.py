"""The two-stream VT-ReID model: shapes, routing, parameter copies, gradients, heads, loading."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmemd.errors import CheckpointError, ConfigError
from cmemd.models import (
    ModelConfig,
    VTOutput,
    build_model,
    count_parameters,
    load_pretrained_backbone,
    resnet18,
)


def small_cfg(**kw) -> ModelConfig:
    base = dict(num_classes=7, arch="resnet18", width=8, num_stripes=3, local_dim=16)
    base.update(kw)
    return ModelConfig(**base)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
                if name.endswith("running_var"):  # keep variances positive
                    t.abs_().add_(0.5)


@pytest.mark.parametrize("arch,width,hw,C", [("resnet18", 32, (128, 64), 8 * 32),
                                             ("resnet50", 64, (64, 32), 4 * 64 * 8)])
def test_output_shapes(arch, width, hw, C):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=11, arch=arch, width=width)
    model = build_model(cfg)
    x = torch.randn(4, 3, *hw)
    mod = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        out = model(x, mod)
    assert isinstance(out, VTOutput)
    S, D = cfg.num_stripes, cfg.local_dim
    assert (S, D) == (6, 512)
    assert out.global_feat.shape == (4, C) and out.global_bn.shape == (4, C)
    assert out.global_logits.shape == (4, 11)
    assert out.local_feats.shape == (4, S, D) and out.local_bn.shape == (4, S, D)
    assert len(out.local_logits) == S and all(t.shape == (4, 11) for t in out.local_logits)
    assert out.accumulated_feats.shape == (4, S, D)
    assert out.holistic.shape == (4, S * D)
    assert model.feature_dim == C + S * D
    model.eval()
    with torch.no_grad():
        assert model(x, mod).shape == (4, C + S * D)


def test_mixed_shuffled_batch_equals_per_modality_runs():
    torch.manual_seed(0)
    model = build_model(small_cfg())
    _randomise(model.modality_parts[0], 1)
    _randomise(model.modality_parts[1], 2)  # copies differ, so wrong routing would show
    model.eval()
    x = torch.randn(7, 3, 64, 32)
    mod = torch.tensor([1, 0, 0, 1, 1, 0, 1])
    with torch.no_grad():
        mixed = model(x, mod)
        vis = model(x[mod == 0], torch.zeros(3, dtype=torch.long))
        the = model(x[mod == 1], torch.ones(4, dtype=torch.long))
        all_vis = model(x, torch.zeros(7, dtype=torch.long))
    torch.testing.assert_close(mixed[mod == 0], vis, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[mod == 1], the, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mixed[mod == 1], all_vis[mod == 1], atol=1e-3)


def _stage_counts(width: int) -> list[int]:
    r = resnet18(width=width)
    stem = sum(p.numel() for m in (r.conv1, r.bn1) for p in m.parameters())
    return [stem] + [sum(p.numel() for p in getattr(r, f"layer{i}").parameters())
                     for i in range(1, 5)]


# copies of (stem, layer1, layer2, layer3, layer4), written out from the documented semantics
_COPIES = {0: (1, 1, 1, 2, 2), 1: (2, 1, 1, 2, 2), 2: (2, 2, 1, 2, 2), 3: (2, 2, 2, 2, 2),
           4: (2, 2, 2, 2, 2)}


@pytest.mark.parametrize("m", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("use_local", [True, False])
def test_parameter_copies(m, use_local):
    cfg = small_cfg(modality_specific_stages=m, use_local=use_local,
                    test_feature="concat" if use_local else "global")
    model = build_model(cfg)
    copies = list(_COPIES[m])
    if not use_local:  # one stream: layers owned by the streams exist once
        copies = [c if i < max(m, 3) else 1 for i, c in enumerate(copies)]
    stage = _stage_counts(cfg.width)
    backbone = sum(p.numel() for n, p in model.named_parameters()
                   if n.split(".")[0] in ("modality_parts", "shared", "global_stream",
                                          "local_stream"))
    assert backbone == sum(c * s for c, s in zip(copies, stage))
    C, K, S, D = 8 * cfg.width, cfg.num_classes, cfg.num_stripes, cfg.local_dim
    heads = 2 * C + C * K  # global BN-neck + classifier
    if use_local:
        heads += S * (C * D + 2 * D) + S * 2 * D + S * D * K + (C * D + 2 * D) + S
        heads += S * 2 * D + S * D * K  # BN-neck + classifier of each accumulated feature
    assert count_parameters(model) == backbone + heads
    assert count_parameters(model, trainable_only=True) == backbone + heads - C - (
        2 * S * D if use_local else 0)  # frozen BN-neck biases
    if m == 4:  # layer3 is modality-specific, the streams own layer4 only
        assert hasattr(model.modality_parts[0], "layer3")
        assert not hasattr(model.global_stream, "layer3")
    if m == 3:
        assert hasattr(model.global_stream, "layer3") and model.shared is None


def _all_losses(out: VTOutput, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(out.global_logits, y) + out.global_feat.pow(2).mean()
    if out.local_logits is not None:
        loss = loss + sum(F.cross_entropy(lg, y) for lg in out.local_logits)
        loss = loss + out.holistic.pow(2).mean()
        if out.accumulated_feats is not None:
            loss = loss + out.accumulated_feats.pow(2).mean()
            loss = loss + sum(F.cross_entropy(lg, y) for lg in out.accumulated_logits)
    return loss


@pytest.mark.parametrize("kw", [dict(), dict(accumulate="cumsum", gem_learnable=True),
                                dict(modality_specific_stages=1, pooling="avg"),
                                dict(use_local=False, test_feature="global"),
                                dict(modality_specific_stages=1, use_local=False, test_feature="global", non_local=True)])
def test_every_parameter_gets_a_gradient_on_a_mixed_batch(kw):
    torch.manual_seed(0)
    model = build_model(small_cfg(**kw)).train()
    x = torch.randn(6, 3, 64, 32)
    mod = torch.tensor([1, 0, 1, 1, 0, 0])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    _all_losses(model(x, mod), y).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.endswith("bias") and "neck" in n for n in frozen)


def test_single_modality_batch_leaves_other_copy_unused():
    model = build_model(small_cfg()).train()
    x = torch.randn(4, 3, 64, 32)
    _all_losses(model(x, torch.zeros(4, dtype=torch.long)), torch.arange(4) % 3).backward()
    assert all(p.grad is None for p in model.modality_parts[1].parameters())
    assert all(p.grad is not None for p in model.modality_parts[0].parameters())


def test_bn_neck_bias_frozen_at_zero_through_an_sgd_step():
    torch.manual_seed(0)
    model = build_model(small_cfg()).train()
    necks = [model.global_neck, *model.local_necks]
    assert all(not n.bias.requires_grad and float(n.bias.abs().sum()) == 0 for n in necks)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(6, 3, 64, 32)
    _all_losses(model(x, torch.tensor([0, 1] * 3)), torch.arange(6) % 3).backward()
    before = model.global_classifier.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.global_classifier.weight)
    assert all(float(n.bias.abs().sum()) == 0 for n in necks)
    assert model.global_classifier.bias is None


def test_stripe_weights_and_holistic():
    torch.manual_seed(0)
    model = build_model(small_cfg(num_stripes=4)).train()
    w = model.stripe_weights()
    torch.testing.assert_close(w, torch.full((4,), 0.25))
    with torch.no_grad():
        model.stripe_logits.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
    w = model.stripe_weights()
    assert math.isclose(float(w.detach().sum()), 1.0, rel_tol=1e-6) and bool((w > 0).all())
    out = model(torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 0, 1]))
    ref = torch.cat([w[k] * out.local_feats[:, k] for k in range(4)], dim=1)
    torch.testing.assert_close(out.holistic, ref)


@pytest.mark.parametrize("pooling", ["avg", "gem"])
@pytest.mark.parametrize("hw", [(64, 32), (96, 32)])  # final H = 4 (< S=6, overlapping) and 6
def test_stripe_and_prefix_pooling_match_adaptive_pooling(pooling, hw):
    torch.manual_seed(0)
    S = 6
    model = build_model(small_cfg(num_stripes=S, pooling=pooling)).eval()
    seen = {}
    model.local_stream.register_forward_hook(lambda m, i, o: seen.__setitem__("map", o))
    for k, red in enumerate(model.local_reduce):
        red[0].register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0]))
    model.accum_reduce[0].register_forward_hook(lambda m, i, o: seen.__setitem__("acc", i[0]))
    with torch.no_grad():
        out = model.forward_output(torch.randn(3, 3, *hw), torch.tensor([0, 1, 0]))
    fmap = seen["map"]
    H = fmap.shape[2]
    p = 3.0 if pooling == "gem" else 1.0
    powered = fmap.clamp(min=1e-6).pow(p) if pooling == "gem" else fmap
    ref = F.adaptive_avg_pool2d(powered, (S, 1)).squeeze(3).pow(1 / p)  # N x C x S
    for k in range(S):
        torch.testing.assert_close(seen[k], ref[:, :, k], rtol=1e-4, atol=1e-5)
        end = math.ceil((k + 1) * H / S)
        pref = powered[:, :, :end].mean(dim=(2, 3)).pow(1 / p)
        torch.testing.assert_close(seen["acc"].reshape(3, S, -1)[:, k], pref, rtol=1e-4, atol=1e-5)
    assert out.accumulated_feats.shape == (3, S, 16)


def test_cumsum_and_none_accumulation():
    torch.manual_seed(0)
    x, mod = torch.randn(3, 3, 64, 32), torch.tensor([0, 1, 1])
    out = build_model(small_cfg(accumulate="cumsum")).eval().forward_output(x, mod)
    ref = torch.stack([out.local_feats[:, : k + 1].sum(1) for k in range(3)], dim=1)
    torch.testing.assert_close(out.accumulated_feats, ref)
    m_none = build_model(small_cfg(accumulate="none"))
    assert m_none.accum_reduce is None
    assert m_none.eval().forward_output(x, mod).accumulated_feats is None


def test_test_feature_choices():
    torch.manual_seed(0)
    x, mod = torch.randn(5, 3, 64, 32), torch.tensor([0, 1, 1, 0, 1])
    C, S, D = 64, 3, 16
    models = {}
    for tf in ("concat", "global", "local"):
        torch.manual_seed(0)
        models[tf] = build_model(small_cfg(test_feature=tf)).eval()
    with torch.no_grad():
        out = models["concat"].forward_output(x, mod)
        feats = {tf: m(x, mod) for tf, m in models.items()}
    assert {tf: m.feature_dim for tf, m in models.items()} == {
        "concat": C + S * D, "global": C, "local": S * D}
    assert {tf: f.shape[1] for tf, f in feats.items()} == {
        tf: m.feature_dim for tf, m in models.items()}
    torch.testing.assert_close(feats["concat"].norm(dim=1), torch.full((5,), math.sqrt(2)))
    torch.testing.assert_close(feats["global"], out.global_bn)
    torch.testing.assert_close(feats["local"], out.holistic)
    torch.testing.assert_close(feats["concat"][:, :C], F.normalize(out.global_bn, dim=1))
    gm = build_model(small_cfg(use_local=False, test_feature="global")).eval()
    assert gm(x, mod).shape == (5, C) and gm.local_stream is None


def test_test_global_pooled_takes_the_pre_bn_feature():
    torch.manual_seed(0)
    x, mod = torch.randn(5, 3, 64, 32), torch.tensor([0, 1, 1, 0, 1])
    C = 64
    bn = build_model(small_cfg(test_feature="concat")).eval()
    _randomise(bn.global_neck, 1)  # a BN-neck that is not the identity
    pooled = build_model(small_cfg(test_feature="concat", test_global="pooled")).eval()
    pooled.load_state_dict(bn.state_dict())  # one set of weights, two test features
    with torch.no_grad():
        out = bn.forward_output(x, mod)
        f_bn, f_pooled = bn(x, mod), pooled(x, mod)
    torch.testing.assert_close(f_pooled[:, :C], F.normalize(out.global_feat, dim=1))
    torch.testing.assert_close(f_pooled[:, C:], f_bn[:, C:])  # the holistic part is the same
    assert not torch.allclose(f_pooled[:, :C], f_bn[:, :C])
    g = build_model(small_cfg(test_feature="global", test_global="pooled")).eval()
    g.load_state_dict(bn.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(g(x, mod), out.global_feat)
    with pytest.raises(ConfigError, match="test_global"):
        small_cfg(test_global="post")


def test_test_local_bn_takes_the_stripe_weighted_local_bn_outputs():
    torch.manual_seed(0)
    x, mod = torch.randn(5, 3, 64, 32), torch.tensor([0, 1, 1, 0, 1])
    C, S, D = 64, 3, 16
    pooled = build_model(small_cfg(test_feature="concat")).eval()
    for neck in pooled.local_necks:  # BN-necks that are not the identity
        _randomise(neck, 2)
    with torch.no_grad():  # and unequal stripe weights
        pooled.stripe_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn = build_model(small_cfg(test_feature="concat", test_local="bn")).eval()
    bn.load_state_dict(pooled.state_dict())
    with torch.no_grad():
        out = pooled.forward_output(x, mod)
        f_pooled, f_bn = pooled(x, mod), bn(x, mod)
    w = out.stripe_weights
    # built by hand from the BN-neck outputs, one stripe at a time
    expected = torch.cat([w[k] * pooled.local_necks[k](out.local_feats[:, k]) for k in range(S)], dim=1)
    assert expected.shape == (5, S * D)
    torch.testing.assert_close(f_bn[:, C:], F.normalize(expected, dim=1))
    torch.testing.assert_close(f_bn[:, :C], f_pooled[:, :C])  # the global part is the same
    assert not torch.allclose(f_bn[:, C:], f_pooled[:, C:])
    loc = build_model(small_cfg(test_feature="local", test_local="bn")).eval()
    loc.load_state_dict(pooled.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loc(x, mod), expected)
    with pytest.raises(ConfigError, match="test_local"):
        small_cfg(test_local="accumulated")


def test_shared_model_needs_no_modality():
    model = build_model(small_cfg(modality_specific_stages=0)).eval()
    assert model.modality_parts is None
    x = torch.randn(2, 3, 64, 32)
    torch.testing.assert_close(model(x), model(x, torch.tensor([0, 1])))


def test_bad_config_and_inputs():
    with pytest.raises(ConfigError, match="modality_specific_stages"):
        small_cfg(modality_specific_stages=5)
    with pytest.raises(ConfigError, match="arch"):
        small_cfg(arch="resnet152")
    with pytest.raises(ConfigError, match="test_feature"):
        small_cfg(use_local=False)
    with pytest.raises(ConfigError, match="accumulate"):
        small_cfg(accumulate="sum")
    model = build_model(small_cfg()).eval()
    x = torch.randn(2, 3, 64, 32)
    with pytest.raises(ConfigError, match="modality"):
        model(x)
    with pytest.raises(ConfigError, match="0 \\(visible\\)"):
        model(x, torch.tensor([0, 2]))
    with pytest.raises(ConfigError, match="one value per image"):
        model(x, torch.tensor([0, 1, 1]))


def _tv_file(tmp_path, width, seed):
    r = resnet18(width=width)
    _randomise(r, seed)
    path = tmp_path / f"r18_w{width}.pth"
    torch.save({"state_dict": r.state_dict()}, path)
    return path, r.state_dict()


@pytest.mark.parametrize("m", [1, 3, 4])
def test_load_pretrained_backbone_fills_every_copy(tmp_path, m):
    path, sd = _tv_file(tmp_path, 8, seed=4)
    cfg = small_cfg(modality_specific_stages=m)
    model = build_model(cfg)
    load_pretrained_backbone(model, path)
    msd = model.state_dict()
    stages = {"stem": ("conv1.", "bn1."), "layer1": ("layer1.",), "layer2": ("layer2.",),
              "layer3": ("layer3.",), "layer4": ("layer4.",)}
    names = list(stages)
    # where each stage lives, from the documented semantics (prefixes written out here)
    owners = {}
    for i, st in enumerate(names):
        if i < m:
            owners[st] = ["modality_parts.0.", "modality_parts.1."]
        elif i < max(m, 3):
            owners[st] = ["shared."]
        else:
            owners[st] = ["global_stream.", "local_stream."]
    checked = 0
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        st = next(s for s in names if k.startswith(stages[s]))
        for prefix in owners[st]:
            assert torch.equal(msd[prefix + k], v), prefix + k
            checked += 1
    backbone_keys = [k for k in msd if k.split(".")[0] in
                     ("modality_parts", "shared", "global_stream", "local_stream")]
    assert checked == len(backbone_keys)
    # the file can also come from cfg.pretrained
    m2 = build_model(small_cfg(modality_specific_stages=m, pretrained=str(path)))
    assert torch.equal(m2.local_stream.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])


def test_load_pretrained_backbone_errors(tmp_path, monkeypatch):
    path, _ = _tv_file(tmp_path, 16, seed=0)
    with pytest.raises(CheckpointError, match="conv1.weight"):
        load_pretrained_backbone(build_model(small_cfg()), path)  # width 8 model, width 16 file
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="resnet18-f37072fd.pth"):
        build_model(small_cfg(pretrained="imagenet"))


@pytest.mark.parametrize("m", [1, 3])
def test_non_local_model_loads_every_backbone_key_and_keeps_its_blocks(tmp_path, m):
    """AGW's non-local blocks in every copy of layer2 and layer3; the torchvision keys all map (and load), the
    non-local ones are left to their identity init."""
    path, sd = _tv_file(tmp_path, 8, seed=6)
    model = build_model(small_cfg(modality_specific_stages=m, non_local=True))
    plain = build_model(small_cfg(modality_specific_stages=m))
    msd = model.state_dict()
    nl_keys = [k for k in msd if ".non_local." in k]
    assert set(msd) - set(nl_keys) == set(plain.state_dict())
    assert model.backbone_key_map() == plain.backbone_key_map()
    # ResNet-18 holds 2 blocks per stage: 2 in each copy of layer2 and of layer3
    copies = {"layer2": 2 if m == 3 else 1, "layer3": 2}  # per-modality copies vs shared; two streams
    for layer, n in copies.items():
        blocks = {k.split(".non_local.")[0] + "." + k.split(".non_local.")[1].split(".")[0]
                  for k in nl_keys if f"{layer}.non_local." in k}
        assert len(blocks) == 2 * n, blocks
    load_pretrained_backbone(model, path)
    for mk, tk in model.backbone_key_map().items():
        assert torch.equal(model.state_dict()[mk], sd[tk]), mk
    # the loaded non-local model computes what the loaded plain model computes (identity blocks)
    load_pretrained_backbone(plain, path)
    plain_heads = {k: v for k, v in plain.state_dict().items() if k.split(".")[0] not in
                   ("modality_parts", "shared", "global_stream", "local_stream")}
    model.load_state_dict(plain_heads, strict=False)
    x, mod = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, mod), plain.eval()(x, mod), rtol=0, atol=0)
