"""ReIDModel.encode and cmemd.load arguments: every unsupported type, shape or value is one InputError naming the
argument and what is accepted, raised before any forward pass (issue 24); the accepted forms agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cmemd
from cmemd.api import ReIDModel
from cmemd.config import load_config
from cmemd.errors import ConfigError, InputError
from cmemd.models import ModelConfig, build_model

H, W = 32, 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(ModelConfig(num_classes=3, arch="resnet18", width=8, num_stripes=2, local_dim=16))
    return ReIDModel(net, load_config(None, [f"data.height={H}", f"data.width={W}"]))


def _pixels(seed: int, shape=(40, 20, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _no_forward(*_a, **_k):
    raise AssertionError("a forward pass ran before the arguments were checked")


GOOD = _pixels(0)
BAD_IMAGES = [  # (images, what the message must say)
    (torch.zeros(1, 3, 1, 1), rf"images: a float \(preprocessed\) batch must be N x 3 x {H} x {W}"),
    (torch.zeros(2, 3, 500, 500), rf"must be N x 3 x {H} x {W}, this model's input size"),
    (torch.full((1, 3, H, W), float("nan")), r"images: the float batch holds NaN"),
    (torch.zeros(2, 4, H, W), r"images: a tensor of images must be N x 3 x H x W"),
    (torch.zeros(2, 3, H, W, dtype=torch.int32), r"images: an image tensor must be float \(preprocessed\) or uint8"),
    ("person.jpg", r"images: got one str, not a list of images; pass a list \(\[image\]\)"),
    (Path("person.jpg"), r"images: got one .*Path, not a list"),
    (b"\x89PNG", r"images: got one bytes, not a list"),
    (Image.fromarray(GOOD), r"images: got one Image, not a list"),
    (GOOD[:, :, 0], r"images: a 2-D array is not accepted \(one image\? pass a list"),
    (GOOD, r"images: a 3-D array is not accepted"),
    ({"a": 1}, r"images: dict is not accepted; accepted: a list of image paths"),
    ([GOOD, np.dstack([GOOD, GOOD[:, :, :1]])], r"images\[1\]: an array of shape \(40, 20, 4\) is not an image.*RGBA"),
    ([GOOD.astype(np.float32) / 255], r"images\[0\]: an array of dtype float32 is not accepted; images are uint8"),
    ([GOOD, b"\xff\xd8"], r"images\[1\]: raw bytes are not decoded here"),
    ([None], r"images\[0\]: NoneType is not an image"),
    ([np.zeros((0, 5, 3), np.uint8)], r"images\[0\]: an array of shape \(0, 5, 3\) is not an image"),
    ([torch.zeros(3, H, W)], r"images\[0\]: a torch.float32 tensor of shape \(3, 32, 16\) is not an image"),
]


@pytest.mark.parametrize("images,message", BAD_IMAGES, ids=range(len(BAD_IMAGES)))
def test_unsupported_images_are_one_clear_error_before_any_work(model, monkeypatch, images, message):
    monkeypatch.setattr("cmemd.engine.extract.encode_batch", _no_forward)
    with pytest.raises(InputError, match=message) as e:
        model.encode(images, "visible")
    assert isinstance(e.value, ValueError) and isinstance(e.value, ConfigError)  # either except catches it


@pytest.mark.parametrize("kwargs,message", [
    (dict(modality=0.7), r"modality 0.7 \(float\) is not accepted: use 'visible' / 'thermal' or 0"),
    (dict(modality=True), r"modality True \(bool\) is not accepted"),
    (dict(modality=None), r"modality None \(NoneType\) is not accepted"),
    (dict(modality="ir"), r"modality 'ir' is unknown"),
    (dict(modality=2), r"modality 2 is unknown"),
    (dict(modality=np.array([0.0, 1.0])), r"modality: an array of dtype float64"),
    (dict(modality=torch.tensor([[0, 1]])), r"modality: an array of dtype torch.int64 and shape \(1, 2\)"),
    (dict(modality=[0, 1, 1]), r"modality: 3 values for 2 images"),
    (dict(modality=0, batch_size=0), r"batch_size=0 must be an integer >= 1"),
    (dict(modality=0, batch_size=2.5), r"batch_size=2.5 must be an integer >= 1"),
    (dict(modality=0, batch_size=True), r"batch_size=True must be an integer >= 1"),
    (dict(modality=0, flip="no"), r"flip='no' must be True, False or None"),
])
def test_unsupported_arguments(model, monkeypatch, kwargs, message):
    monkeypatch.setattr("cmemd.engine.extract.encode_batch", _no_forward)
    with pytest.raises(InputError, match=message):
        model.encode([GOOD, GOOD], **kwargs)


def test_accepted_forms_give_the_same_features(model):
    # at the model's input size, so that no form is resized (PIL and tensors resize with different filters)
    gray = _pixels(1, (H, W))
    rgb = _pixels(2, (H, W, 3))
    base = model.encode([np.repeat(gray[:, :, None], 3, 2), rgb], "thermal")
    assert base.shape == (2, model.feature_dim) and np.isfinite(base).all()
    # a 2-D (or HxWx1) array is one grayscale image: the same as its channel repeated, or a PIL 'L' image
    np.testing.assert_array_equal(model.encode([gray, rgb], "thermal"), base)
    np.testing.assert_array_equal(model.encode([gray[:, :, None], rgb], "thermal"), base)
    np.testing.assert_array_equal(model.encode([Image.fromarray(gray, "L"), Image.fromarray(rgb)], "thermal"), base)
    np.testing.assert_array_equal(model.encode([torch.from_numpy(gray), torch.from_numpy(rgb).permute(2, 0, 1)],
                                               "thermal"), base)
    # batches: N x H x W x 3 and N x 3 x H x W pixels, and the preprocessed float batch of the right size
    batch = np.stack([_pixels(3), _pixels(4)])
    ref = model.encode(list(batch), [0, 1])
    np.testing.assert_array_equal(model.encode(batch, [0, 1]), ref)
    np.testing.assert_array_equal(model.encode(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), [0, 1]), ref)
    pre = model.preprocess(list(batch), [0, 1])
    assert pre.shape == (2, 3, H, W)
    np.testing.assert_allclose(model.encode(pre, np.array([0, 1])), ref, atol=1e-6)
    np.testing.assert_allclose(model.encode(pre.numpy(), torch.tensor([0, 1])), ref, atol=1e-6)
    np.testing.assert_allclose(model.encode(list(batch), ("visible", "thermal"), batch_size=np.int64(1)), ref, atol=1e-6)
    assert model.encode([], "visible").shape == (0, model.feature_dim)


def test_load_checks_device_and_checkpoint_before_reading(tmp_path):
    missing = tmp_path / "nope.pt"  # the argument error comes first: nothing is read
    for device in ("tpu", "cuda:x", "", 3):
        with pytest.raises(InputError, match=r"device=.* (is not supported|is not accepted): use 'auto', 'cpu', 'cuda'"):
            cmemd.load(missing, device=device)
    with pytest.raises(InputError, match=r"checkpoint=None \(NoneType\) is not accepted"):
        cmemd.load(None)
    with pytest.raises(cmemd.CheckpointError):  # a good device reaches the checkpoint
        cmemd.load(missing, device=torch.device("cpu"))
