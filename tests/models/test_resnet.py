"""The project's ResNet against torchvision's state-dict layout, written out independently here."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from cmemd.errors import CheckpointError
from cmemd.models import resnet as R
from cmemd.models.resnet import load_pretrained, resnet18, resnet34, resnet50, resnet101

# torchvision's architecture table: block type and blocks per stage.
_ARCH = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
         50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


def torchvision_keys(depth: int, width: int = 64, num_classes: int = 1000):
    """Ordered (key, shape) list of torchvision's resnet<depth> state dict, from its description:
    stem conv 7x7 + BN; four stages of blocks with planes width*2^i; the first block of a stage
    has a 1x1-conv+BN downsample when its stride or channels change; fc last."""
    kind, layers = _ARCH[depth]
    exp = 4 if kind == "bottleneck" else 1
    out: list[tuple[str, tuple[int, ...]]] = []

    def conv(name, cout, cin, k):
        out.append((f"{name}.weight", (cout, cin, k, k)))

    def bn(name, c):
        out.extend([(f"{name}.weight", (c,)), (f"{name}.bias", (c,)),
                    (f"{name}.running_mean", (c,)), (f"{name}.running_var", (c,)),
                    (f"{name}.num_batches_tracked", ())])

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    inp = width
    for i, n in enumerate(layers):
        planes = width * 2 ** i
        stride = 1 if i == 0 else 2
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            if kind == "bottleneck":
                conv(f"{p}.conv1", planes, inp, 1); bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3); bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1); bn(f"{p}.bn3", planes * 4)
            else:
                conv(f"{p}.conv1", planes, inp, 3); bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3); bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inp != planes * exp):
                conv(f"{p}.downsample.0", planes * exp, inp, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inp = planes * exp
    out.append(("fc.weight", (num_classes, 8 * width * exp)))
    out.append(("fc.bias", (num_classes,)))
    return out


def random_state_dict(depth: int, width: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in torchvision_keys(depth, width):
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7, dtype=torch.long)
        else:
            sd[k] = torch.randn(shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = random_state_dict(50, seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "resnet50_tv.pth"
    torch.save(sd, path)
    return path, sd


def test_resnet50_key_list_counts_are_torchvisions():
    keys = torchvision_keys(50)
    assert len(keys) == 320  # torchvision resnet50 state dict, num_batches_tracked included
    n_params = sum(1 for k, _ in keys if not k.endswith(("running_mean", "running_var",
                                                          "num_batches_tracked")))
    assert n_params == 161
    assert sum(1 for k, s in keys if len(s) == 4) == 53  # 53 convs (49 + 4 downsample)
    assert sum(torch.Size(s).numel() for k, s in keys
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
               ) == 25_557_032  # torchvision's published parameter count for resnet50


@pytest.mark.parametrize("depth,ctor", [(18, resnet18), (34, resnet34), (50, resnet50),
                                        (101, resnet101)])
def test_state_dict_layout_matches_torchvision(depth, ctor):
    width = 64 if depth == 50 else 8  # full size once; narrow elsewhere (keys unchanged)
    model = ctor(width=width)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == torchvision_keys(depth, width)
    if depth == 50:
        assert len(list(model.parameters())) == 161


def test_load_pretrained_strict_copies_every_tensor(r50_file):
    path, sd = r50_file
    model = resnet50()
    load_pretrained(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_wrong_shape_names_key_and_file(tmp_path):
    sd = random_state_dict(18, width=8)
    sd["layer2.0.conv2.weight"] = torch.zeros(16, 16, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv2\.weight") as e:
        load_pretrained(resnet18(width=8), path)
    assert "bad.pth" in str(e.value)
    # shape mismatches raise even when not strict
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv2\.weight"):
        load_pretrained(resnet18(width=8), path, strict=False)


def test_width_mismatch_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "w8.pth"
    torch.save(random_state_dict(18, width=8), path)
    with pytest.raises(CheckpointError, match="conv1.weight"):
        load_pretrained(resnet18(width=16), path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = random_state_dict(18, width=8)
    del sd["layer3.1.bn2.weight"]
    sd["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(resnet18(width=8), path)
    assert "layer3.1.bn2.weight" in str(e.value) and "extra.head.weight" in str(e.value)
    model = resnet18(width=8)
    before = model.layer3[1].bn2.weight.clone()
    load_pretrained(model, path, strict=False)  # loads the rest, keeps the missing one
    assert torch.equal(model.layer3[1].bn2.weight, before)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


@pytest.mark.parametrize("wrap", ["state_dict", "module", "both", "no_nbt"])
def test_wrapped_and_old_checkpoints_load(tmp_path, wrap):
    sd = random_state_dict(18, width=8, seed=3)
    obj: object = sd
    if wrap in ("module", "both"):
        obj = {"module." + k: v for k, v in sd.items()}
    if wrap in ("state_dict", "both"):
        obj = {"state_dict": obj, "epoch": 3}
    if wrap == "no_nbt":  # old torchvision files have no num_batches_tracked
        obj = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    model = resnet18(width=8)
    load_pretrained(model, path)
    assert torch.equal(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert torch.equal(model.fc.bias, sd["fc.bias"])


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(resnet18(width=8), tmp_path / "nope.pth")
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_pretrained(resnet18(width=8), bad)


def test_imagenet_offline_fails_with_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(resnet50(width=8), "imagenet")
    msg = str(e.value)
    expected = Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-0676ba61.pth"
    assert str(expected) in msg and "local path" in msg


def test_imagenet_uses_torchvision_url_with_hash_check(monkeypatch):
    calls = []
    sd = random_state_dict(18, width=8, seed=5)
    sd50 = random_state_dict(50, width=8, seed=6)

    def fake(url, **kw):
        calls.append((url, kw))
        return sd if "resnet18" in url else sd50

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    model = resnet18(width=8)
    load_pretrained(model, "imagenet", progress=False)
    assert calls[0][0] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert calls[0][1]["check_hash"] is True
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])
    load_pretrained(resnet50(width=8), "imagenet-v2", progress=False)
    assert calls[1][0].endswith("resnet50-11ad3fa6.pth")
    load_pretrained(resnet50(width=8), "imagenet", progress=False)
    assert calls[2][0].endswith("resnet50-0676ba61.pth")
    for arch, name in [("resnet34", "resnet34-b627a593.pth"), ("resnet101", "resnet101-63fe2227.pth")]:
        assert R.IMAGENET_URLS[arch]["imagenet"].endswith(name)


@pytest.mark.parametrize("last_stride,expected_hw", [(2, (2, 1)), (1, (4, 2))])
def test_forward_shapes_and_last_stride(last_stride, expected_hw):
    model = resnet18(width=8, last_stride=last_stride, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 32)
    assert model.forward_features(x).shape == (2, 64, *expected_hw)
    assert model(x).shape == (2, 5)


def test_zero_init_residual():
    m50 = resnet50(width=8, zero_init_residual=True)
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for layer in
               (m50.layer1, m50.layer2, m50.layer3, m50.layer4) for b in layer)
    m18 = resnet18(width=8, zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in m18.layer3)
    assert float(resnet18(width=8).layer3[0].bn2.weight.detach().sum()) > 0


# ------------------------------------------------------------------ non-local blocks (AGW)

def _positive_var(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)


def test_non_local_keeps_every_torchvision_key_and_loads_a_torchvision_file(tmp_path):
    """AGW's layout (2 in layer2, 3 in layer3): torchvision's keys and shapes are all there, the extra keys are
    only under layer2.non_local / layer3.non_local, and a torchvision-format file loads strictly."""
    model = resnet50(width=8, non_local=R.AGW_NON_LOCAL)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tv = dict(torchvision_keys(50, width=8))
    extra = sorted(set(got) - set(tv))
    assert all(got[k] == shape for k, shape in tv.items())
    assert extra and all(k.startswith(("layer2.non_local.", "layer3.non_local.")) for k in extra)
    assert all(R.is_non_local_key(k) for k in extra) and not any(R.is_non_local_key(k) for k in tv)
    assert {k.split(".")[2] for k in extra if k.startswith("layer2.")} == {"0", "1"}
    assert {k.split(".")[2] for k in extra if k.startswith("layer3.")} == {"0", "1", "2"}
    assert len(model.layer2) == 4 and len(model.layer3) == 6  # indexing goes over the residual blocks
    sd = random_state_dict(50, width=8, seed=2)
    torch.save(sd, tmp_path / "tv.pth")
    load_pretrained(model, tmp_path / "tv.pth")
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_non_local_blocks_follow_the_last_blocks_of_their_stage():
    """AGW inserts them after blocks layers[i] - n .. layers[i] - 1 (ResNet-50: layer2 blocks 2, 3; layer3 3, 4, 5)."""
    model = resnet50(width=8, non_local=R.AGW_NON_LOCAL)
    order: list[str] = []
    for name, m in model.named_modules():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] in ("layer2", "layer3") or len(parts) == 3 and parts[1] == "non_local":
            m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
    model.eval()(torch.randn(1, 3, 64, 32))
    assert order == ["layer2.0", "layer2.1", "layer2.2", "layer2.non_local.0", "layer2.3", "layer2.non_local.1",
                     "layer3.0", "layer3.1", "layer3.2", "layer3.3", "layer3.non_local.0", "layer3.4",
                     "layer3.non_local.1", "layer3.5", "layer3.non_local.2"]


def test_new_non_local_blocks_are_the_identity():
    """Zero-initialised BN in each block's output branch: the pretrained network's outputs are unchanged."""
    plain = resnet18(width=8)
    _positive_var(plain, seed=3)
    nl = resnet18(width=8, non_local=R.agw_non_local("resnet18"))
    assert R.agw_non_local("resnet18") == (0, 2, 2, 0)
    nl.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(nl.eval()(x), plain.eval()(x), rtol=0, atol=0)


def test_non_local_block_equals_a_brute_force_sum():
    """y_i = (1/N) sum_j <theta(x_i), phi(x_j)> g(x_j); z = x + BN(W y) (BN in eval mode), written out per position."""
    block = R.NonLocal(6)
    _positive_var(block, seed=5)
    block.eval()
    x = torch.randn(2, 6, 3, 2)
    with torch.no_grad():
        got = block(x)
        ref = _brute_force_non_local(block, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _brute_force_non_local(block, x):
    def conv(c, v):  # a 1x1 conv on one position's vector
        return c.weight[:, :, 0, 0] @ v + c.bias
    bn = block.W[1]
    ref = torch.empty_like(x)
    for n in range(x.shape[0]):
        pos = [x[n, :, h, w] for h in range(3) for w in range(2)]
        N = len(pos)
        for i, (h, w) in enumerate((h, w) for h in range(3) for w in range(2)):
            y = sum(float(conv(block.theta, pos[i]) @ conv(block.phi, pos[j])) * conv(block.g, pos[j])
                    for j in range(N)) / N
            v = conv(block.W[0], y)
            v = (v - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
            ref[n, :, h, w] = pos[i] + v
    return ref


def test_bad_non_local_counts():
    from cmemd.errors import ConfigError

    with pytest.raises(ConfigError, match="non_local"):
        resnet18(width=8, non_local=(0, 3, 0, 0))  # layer2 of ResNet-18 has 2 blocks
    with pytest.raises(ConfigError, match="non_local"):
        resnet18(width=8, non_local=(0, 1))
