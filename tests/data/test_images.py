from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cmemd.data.images import load_image
from cmemd.errors import DatasetError


def test_modes_are_converted_to_rgb(tmp_path):
    gray = np.arange(32, dtype=np.uint8).reshape(8, 4) * 8
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    im = load_image(tmp_path / "l.png")
    assert im.mode == "RGB" and np.array_equal(np.asarray(im)[..., 0], gray) and np.array_equal(np.asarray(im)[..., 2], gray)

    rgba = np.zeros((8, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # transparent pixel composites to black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(load_image(tmp_path / "a.png"))
    assert tuple(a[1, 1]) == (200, 0, 0) and tuple(a[0, 0]) == (0, 0, 0)

    sixteen = (np.arange(32, dtype=np.uint16).reshape(8, 4) * 100 + 1000)  # a 12-bit-like sensor range
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    s = np.asarray(load_image(tmp_path / "s.png"))[..., 0].astype(int)
    assert s.min() == 0 and s.max() == 255
    assert np.all(np.diff(s.ravel()) >= 0)  # order of intensities kept

    pal = Image.fromarray(gray, "L").convert("P")
    pal.save(tmp_path / "p.bmp")
    assert load_image(tmp_path / "p.bmp").mode == "RGB"


def test_corrupt_and_truncated(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"junk\.jpg: image does not decode"):
        load_image(tmp_path / "junk.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut\.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(DatasetError, match="not found"):
        load_image(tmp_path / "missing.jpg")
