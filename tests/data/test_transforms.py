"""Transforms against hand computations and properties."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cmemd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    channel_exchange,
    hflip,
    normalize,
    pad_random_crop,
    random_erasing,
    resize,
    thermal_jitter,
    to_uint8_chw,
)
from cmemd.errors import ConfigError


def rand_u8(h=20, w=12, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_inputs_agree_pil_array_tensor():
    arr = np.random.default_rng(1).integers(0, 256, (20, 12, 3), dtype=np.uint8)
    t = to_uint8_chw(Image.fromarray(arr))
    assert t.dtype == torch.uint8 and t.shape == (3, 20, 12)
    assert torch.equal(t, to_uint8_chw(arr))
    assert torch.equal(t[1], torch.from_numpy(arr[:, :, 1]))
    # PIL path (resize then convert) and tensor path agree in shape; same-size is a no-op
    assert resize(Image.fromarray(arr), 40, 24).shape == resize(t, 40, 24).shape == (3, 40, 24)
    assert torch.equal(resize(t, 20, 12), t)


def test_normalize_matches_hand_computation():
    t = rand_u8()
    out = normalize(t)
    x = t.numpy().astype(np.float64) / 255.0
    want = (x - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(out.numpy(), want, atol=1e-5)
    assert out.dtype == torch.float32


def test_test_pipeline_is_resize_and_normalize():
    arr = np.random.default_rng(2).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    tf = build_transforms(32, 16, train=False, modality="visible")
    out = tf(Image.fromarray(arr))
    ref = np.asarray(Image.fromarray(arr).resize((16, 32), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_flip_is_exact_mirror():
    t = rand_u8()
    f = hflip(t)
    for j in range(t.shape[2]):
        assert torch.equal(f[:, :, j], t[:, :, t.shape[2] - 1 - j])
    assert torch.equal(hflip(f), t)


@pytest.mark.parametrize("seed", range(10))
def test_crop_is_a_window_of_the_padded_image(seed):
    t = rand_u8(15, 9, seed)
    pad = 4
    out = pad_random_crop(t, pad, gen(seed))
    assert out.shape == t.shape
    padded = torch.zeros(3, 15 + 2 * pad, 9 + 2 * pad, dtype=torch.uint8)
    padded[:, pad:-pad, pad:-pad] = t
    hits = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1) if torch.equal(padded[:, i : i + 15, j : j + 9], out)]
    assert hits  # a window fully inside the padded image


def test_crop_offsets_cover_range():
    t = torch.full((3, 6, 6), 255, dtype=torch.uint8)
    # the number of zero rows on top reveals the vertical offset: pad - top when top < pad
    tops = set()
    for s in range(200):
        out = pad_random_crop(t, 2, gen(s))
        rows = out[0, :, 2] == 0
        tops.add(int(rows.sum()) * (1 if rows[0] else -1) if rows.any() else 0)
    assert tops == {-2, -1, 0, 1, 2}


@pytest.mark.parametrize("seed", range(10))
def test_erasing_changes_only_one_rectangle(seed):
    x = torch.randn(3, 40, 20, generator=gen(100 + seed)) + 5.0  # no value equals the fill
    out = random_erasing(x, 1.0, gen(seed), value=0.0)
    changed = (out != x).any(0)
    assert changed.any()
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    assert changed[r0 : r1 + 1, c0 : c1 + 1].all() and int(changed.sum()) == (r1 - r0 + 1) * (c1 - c0 + 1)
    assert (out[:, r0 : r1 + 1, c0 : c1 + 1] == 0).all()
    area = (r1 - r0 + 1) * (c1 - c0 + 1) / (40 * 20)
    assert 0.01 <= area <= 0.45  # the (0.02, 0.4) range up to rounding of the sides
    assert torch.equal(random_erasing(x, 0.0, gen(seed)), x)


def test_channel_exchange_gives_equal_channels():
    x = torch.rand(3, 8, 6, generator=gen(0))
    outcomes = set()
    for s in range(100):
        out = channel_exchange(x, 1.0, gen(s))
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        for c in range(3):
            if torch.equal(out[0], x[c]):
                outcomes.add(c)
        gray = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        if torch.allclose(out[0], gray, atol=1e-6):
            outcomes.add("gray")
    assert outcomes == {0, 1, 2, "gray"}
    assert torch.equal(channel_exchange(x, 0.0, gen(0)), x)


def test_thermal_jitter_is_gray_or_linear():
    x = torch.rand(3, 8, 6, generator=gen(1)) * 0.5 + 0.25  # no clipping for strength 0.2
    kinds = set()
    for s in range(60):
        out = thermal_jitter(x, 1.0, 0.2, gen(s))
        if torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]):
            kinds.add("gray")
            continue
        # a * x + b: fit a, b on the flattened values and check the residual and ranges
        A = torch.stack([x.flatten(), torch.ones(x.numel())], 1).double()
        sol = torch.linalg.lstsq(A, out.flatten().double()[:, None]).solution.flatten()
        assert torch.allclose(A @ sol, out.flatten().double(), atol=1e-5)
        assert 0.8 - 1e-6 <= sol[0] <= 1.2 + 1e-6 and abs(sol[1]) <= 0.1 + 1e-6
        kinds.add("linear")
    assert kinds == {"gray", "linear"}


@pytest.mark.parametrize("modality", ["visible", "thermal"])
def test_train_pipeline_shapes_and_determinism(modality):
    tf = build_transforms(32, 16, train=True, modality=modality, random_erasing=0.5, channel_aug=0.5)
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 25, 3), dtype=np.uint8))
    a, b = tf(img, gen(5)), tf(img, gen(5))
    assert a.shape == (3, 32, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    outs = {tf(img, gen(s)).sum().item() for s in range(8)}
    assert len(outs) > 1
    # cached uint8 tensor at the target size goes through the same path as the PIL image
    cached = resize(img, 32, 16)
    assert torch.equal(tf(cached, gen(9)), tf(img, gen(9)))


def test_flip_only_pipeline_is_identity_or_mirror():
    tf = build_transforms(16, 8, train=True, modality="visible", pad=0, random_erasing=0.0)
    t = rand_u8(16, 8)
    base = normalize(t)
    seen = set()
    for s in range(20):
        out = tf(t, gen(s))
        if torch.equal(out, base):
            seen.add("id")
        elif torch.equal(out, base.flip(-1)):
            seen.add("flip")
        else:
            raise AssertionError("flip-only pipeline produced something else")
    assert seen == {"id", "flip"}


def test_bad_config():
    with pytest.raises(ConfigError, match="random_erasing"):
        build_transforms(32, 16, train=True, modality="visible", random_erasing=1.5)
    with pytest.raises(ConfigError, match="modality"):
        build_transforms(32, 16, train=True, modality="depth")
    with pytest.raises(ConfigError, match="TransformConfig"):
        build_transforms(32, 16, train=True, modality="visible", bogus=1)


# ---------------------------------------------------------------- CAJ's channel augmentations (ICCV 2021)

def _outcome(out: torch.Tensor, x: torch.Tensor) -> str:
    """Which CAJ channel operation produced ``out`` from ``x`` (brute force over the candidates)."""
    if torch.equal(out, x):
        return "same"
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]), "channels differ after a channel operation"
    for c, name in enumerate("RGB"):
        if torch.equal(out[0], x[c]):
            return name
    gray = 0.2989 * x[0] + 0.5870 * x[1] + 0.1140 * x[2]
    assert torch.allclose(out[0], gray, atol=1e-6), "neither a channel, grayscale nor the input"
    return "gray"


def _frequencies(fn, x, n=4000):
    counts: dict[str, int] = {}
    for s in range(n):
        k = _outcome(fn(x, gen(s)), x)
        counts[k] = counts.get(k, 0) + 1
    return {k: v / n for k, v in counts.items()}


def test_caj_channel_exchange_picks_r_g_b_uniformly_never_gray():
    """ChannelExchange(gray=2): randint(0, 2) -> R, G or B replicated, 1/3 each (4000 draws: +-0.03 is > 4 sd)."""
    from cmemd.data.transforms import caj_channel_exchange

    x = torch.randn(3, 6, 4, generator=gen(0))
    freq = _frequencies(lambda img, g: caj_channel_exchange(img, g), x)
    assert set(freq) == {"R", "G", "B"}
    assert all(abs(f - 1 / 3) < 0.03 for f in freq.values()), freq


def test_caj_channel_adap_gray_probabilities():
    """ChannelAdapGray(0.5): R, G, B 1/4 each; grayscale 1/8; unchanged 1/8 (+-0.03)."""
    from cmemd.data.transforms import caj_channel_adap_gray

    x = torch.randn(3, 6, 4, generator=gen(1))
    freq = _frequencies(lambda img, g: caj_channel_adap_gray(img, 0.5, g), x)
    expected = {"R": 0.25, "G": 0.25, "B": 0.25, "gray": 0.125, "same": 0.125}
    assert set(freq) == set(expected)
    assert all(abs(freq[k] - p) < 0.03 for k, p in expected.items()), freq
    assert _frequencies(lambda img, g: caj_channel_adap_gray(img, 0.0, g), x, n=400).get("gray", 0) == 0


@pytest.mark.parametrize("seed", range(5))
def test_caj_random_erasing_fills_one_rectangle_per_channel(seed):
    """ChannelRandomErasing: one rectangle, the same in every channel, channel c filled with fill[c]."""
    from cmemd.data.transforms import CAJ_ERASE_FILL, caj_random_erasing

    x = torch.randn(3, 40, 20, generator=gen(200 + seed)) + 5.0  # no value equals a fill value
    out = caj_random_erasing(x, 1.0, gen(seed))
    changed = out != x
    assert changed.any() and torch.equal(changed[0], changed[1]) and torch.equal(changed[1], changed[2])
    rows, cols = changed[0].any(1).nonzero().flatten(), changed[0].any(0).nonzero().flatten()
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    assert int(changed[0].sum()) == (r1 - r0 + 1) * (c1 - c0 + 1)
    for c in range(3):
        assert torch.allclose(out[c, r0 : r1 + 1, c0 : c1 + 1], torch.tensor(CAJ_ERASE_FILL[c]))
    assert 0.01 <= (r1 - r0 + 1) * (c1 - c0 + 1) / (40 * 20) <= 0.45
    assert torch.equal(caj_random_erasing(x, 1.0, gen(seed)), out)  # determinism per seed
    assert torch.equal(caj_random_erasing(x, 0.0, gen(seed)), x)


def test_caj_random_erasing_probability():
    from cmemd.data.transforms import caj_random_erasing

    x = torch.randn(3, 24, 12, generator=gen(3)) + 5.0
    rate = sum(not torch.equal(caj_random_erasing(x, 0.5, gen(s)), x) for s in range(2000)) / 2000
    assert abs(rate - 0.5) < 0.04


def test_caj_pipeline():
    """kind caj: thermal images always go through ChannelAdapGray, visible ones through the exchange with
    probability channel_aug; the same generator seed gives the same tensor; with both probabilities 0 the
    pipeline is our plain crop + flip + normalise."""
    img = rand_u8(32, 16, seed=4)
    th = build_transforms(32, 16, train=True, modality="thermal", random_erasing=0.0, channel_aug=0.5,
                          channel_aug_kind="caj")
    equal = [bool(torch.equal(o[0], o[1]) and torch.equal(o[1], o[2])) for o in (th(img, gen(s)) for s in range(800))]
    assert abs(sum(equal) / len(equal) - 7 / 8) < 0.04  # all but ChannelAdapGray's "unchanged" branch
    vis = build_transforms(32, 16, train=True, modality="visible", random_erasing=0.5, channel_aug=0.5,
                           channel_aug_kind="caj")
    equal = [bool(torch.equal(o[0], o[1]) and torch.equal(o[1], o[2])) for o in (vis(img, gen(s)) for s in range(800))]
    assert abs(sum(equal) / len(equal) - 0.5) < 0.05
    assert torch.equal(vis(img, gen(7)), vis(img, gen(7)))
    plain = dict(train=True, random_erasing=0.0, channel_aug=0.0)
    for m in ("visible", "thermal"):
        a = build_transforms(32, 16, modality=m, channel_aug_kind="caj", **plain)
        b = build_transforms(32, 16, modality=m, **plain)
        assert all(torch.equal(a(img, gen(s)), b(img, gen(s))) for s in range(5))
    with pytest.raises(ConfigError, match="channel_aug_kind"):
        build_transforms(32, 16, train=True, modality="visible", channel_aug_kind="other")
