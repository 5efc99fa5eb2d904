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
