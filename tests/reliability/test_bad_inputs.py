"""Bad inputs that the per-module tests do not already cover (docs/reliability.md maps every case).

Each one either loads correctly (odd image modes are converted) or raises the project's own
error naming the file or object, the field and the fix.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cmemd.config import load_config
from cmemd.data.dataset import build_test_loader, build_train_loader
from cmemd.data.images import load_image
from cmemd.data.records import ImageRecord
from cmemd.data.synth import SynthConfig, generate_regdb
from cmemd.app.train import train, training_data
from cmemd.benchmarks.registry import get_benchmark
from cmemd.errors import CheckpointError, ConfigError, DatasetError, TrainingError
from tests.engine.conftest import tiny_overrides, tiny_sysu  # noqa: F401  (tiny_sysu is a fixture)


@pytest.fixture(scope="module")
def tiny_regdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb") / "regdb"
    generate_regdb(root, SynthConfig(ids=12, images_per_camera=(2, 2), height=32, width=16, seed=4))
    return root


def test_root_of_the_other_layout_is_named(tiny_sysu, tiny_regdb):  # noqa: F811
    with pytest.raises(DatasetError, match="looks like a RegDB root.*data.dataset=regdb") as e:
        get_benchmark("sysu").test_sets(tiny_regdb)
    assert str(tiny_regdb) in str(e.value)
    with pytest.raises(DatasetError, match="looks like a SYSU-MM01 root.*data.dataset=sysu") as e:
        get_benchmark("regdb").train_records(tiny_sysu)
    assert str(tiny_sysu) in str(e.value)
    # the same through a training config that names the wrong dataset
    with pytest.raises(DatasetError, match="looks like a RegDB root"):
        training_data(load_config(None, [f"data.root={tiny_regdb}", "data.dataset=sysu"]))
    with pytest.raises(DatasetError, match="looks like a SYSU-MM01 root"):
        training_data(load_config(None, [f"data.root={tiny_sysu}", "data.dataset=regdb"]))


def _odd_mode_images(root) -> list[ImageRecord]:
    """Two ids; visible images RGB/RGBA/palette, thermal images L/16-bit/LA/1-bit."""
    rng = np.random.default_rng(0)
    recs = []
    for pid in range(2):
        gray = rng.integers(0, 256, (24, 12), dtype=np.uint8)
        rgb = rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)
        files = {
            "visible": [("rgb.jpg", Image.fromarray(rgb)), ("rgba.png", Image.fromarray(np.dstack([rgb, gray]), "RGBA")),
                        ("pal.bmp", Image.fromarray(rgb).convert("P"))],
            "thermal": [("l.bmp", Image.fromarray(gray, "L")),
                        ("i16.png", Image.fromarray(gray.astype(np.uint16) * 16 + 3000)),  # 12-bit sensor range
                        ("la.png", Image.fromarray(np.dstack([gray, gray]), "LA")),
                        ("bw.bmp", Image.fromarray(gray > 128))],
        }
        for mod, items in files.items():
            for name, im in items:
                p = root / f"{pid}_{mod}_{name}"
                im.save(p)
                recs.append(ImageRecord(str(p), pid, 1 if mod == "visible" else 3, mod))
    return recs


def test_odd_image_modes_train_through_loader_and_cache(tmp_path):
    recs = _odd_mode_images(tmp_path)
    for r in recs:
        assert load_image(r.path).mode == "RGB"
    plain = torch.cat([b[0] for b in build_test_loader(recs, height=16, width=8)])
    cached = torch.cat([b[0] for b in build_test_loader(recs, height=16, width=8, use_cache=True, cache_dir=tmp_path / "c")])
    assert plain.shape == (len(recs), 3, 16, 8) and torch.isfinite(plain).all()
    assert torch.allclose(plain, cached, atol=1e-5)
    # grey/16-bit inputs become three equal channels before normalisation, so they differ only by mean/std
    for use_cache in (False, True):
        loader = build_train_loader(recs, height=16, width=8, P=2, K=2, seed=0, use_cache=use_cache,
                                    cache_dir=tmp_path / "c")
        loader.batch_sampler.set_epoch(0)
        batches = list(loader)
        assert batches and all(b[0].shape == (8, 3, 16, 8) and torch.isfinite(b[0]).all() for b in batches)


@pytest.mark.parametrize("fmt", ["BMP", "JPEG", "PNG"])
def test_truncated_image_is_named_by_the_loader(tmp_path, fmt):
    rng = np.random.default_rng(1)
    recs = []
    for pid in range(2):
        for mod, cam in (("visible", 1), ("thermal", 3)):
            p = tmp_path / f"{pid}_{mod}.{fmt.lower()}"
            Image.fromarray(rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)).save(p, fmt)
            recs.append(ImageRecord(str(p), pid, cam, mod))
    bad = recs[2].path
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=rf"{recs[2].path.split('/')[-1]}.*(corrupt or truncated)"):
        load_image(bad)
    loader = build_train_loader(recs, height=16, width=8, P=2, K=1, seed=0)
    loader.batch_sampler.set_epoch(0)
    with pytest.raises(DatasetError, match=recs[2].path.split("/")[-1]):
        list(loader)
    with pytest.raises(DatasetError, match=recs[2].path.split("/")[-1]):
        build_test_loader(recs, height=16, width=8, use_cache=True, cache_dir=tmp_path / "c")


def test_resume_with_a_different_configuration(tiny_sysu, tmp_path):  # noqa: F811
    """--resume with another architecture, another number of classes or another batch layout is refused."""
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(tiny_sysu, out, **{"optim.epochs": 1})), progress=False, evaluate_after=False)
    # First line of defence: the run's config.yaml, compared key by key.
    for key, value in (("model.width", 16), ("data.num_ids", 2), ("optim.optimizer", "adamw")):
        with pytest.raises(ConfigError, match=rf"{key}: .* -> {value!r}"):
            train(load_config(None, tiny_overrides(tiny_sysu, out, **{key: value})), resume=True, progress=False,
                  evaluate_after=False)
    # Second line, for a run without its config.yaml: the checkpoint's own contents.
    (out / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match=r"last.pt: the checkpoint does not fit this model.*same configuration"):
        train(load_config(None, tiny_overrides(tiny_sysu, out, **{"model.width": 16})), resume=True, progress=False,
              evaluate_after=False)
    # one training id fewer: the classifier has another number of classes
    fewer = tmp_path / "sysu_fewer"
    shutil.copytree(tiny_sysu, fewer)
    ids = (fewer / "exp" / "train_id.txt").read_text().strip().split(",")
    (fewer / "exp" / "train_id.txt").write_text(",".join(ids[:-1]) + "\n")
    with pytest.raises(CheckpointError, match=r"last.pt: the checkpoint does not fit this model"):
        train(load_config(None, tiny_overrides(fewer, out)), resume=True, progress=False, evaluate_after=False)
    with pytest.raises(TrainingError, match="sampler state: P=3 in the checkpoint but 2 now"):
        train(load_config(None, tiny_overrides(tiny_sysu, out, **{"data.num_ids": 2})), resume=True, progress=False,
              evaluate_after=False)
    with pytest.raises(CheckpointError, match=r"last.pt: .*optimi[sz]er"):
        train(load_config(None, tiny_overrides(tiny_sysu, out, **{"optim.optimizer": "adamw"})), resume=True,
              progress=False, evaluate_after=False)
