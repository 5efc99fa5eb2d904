"""Images and dataset folders from the wild (docs/reliability.md, section "inputs"): phone photos with an
EXIF orientation, decompression bombs, symlink loops, every problem listed at once, bad preview arguments."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cmemd.api import ReIDModel
from cmemd.cli import app
from cmemd.data.cache import build_cache
from cmemd.data.dataset import build_test_loader, build_train_loader
from cmemd.data.images import load_image
from cmemd.data.records import ImageRecord
from cmemd.benchmarks.registry import resolve
from cmemd.benchmarks.stats import check_dataset, dataset_stats
from cmemd.errors import DatasetError
from cmemd.retrieval import build_index, search
from tests.data.builders import make_llcm, make_regdb, make_sysu

# PIL's own warning for the 10000 x 10000 bomb (asserted where it matters) would clutter the summary elsewhere
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

ORIENTATION = 0x0112  # the EXIF tag


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for stored pixels (rows x cols x 3) with an EXIF orientation, from the EXIF
    definition of where the stored row 0 / column 0 belong (not from PIL)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # upside down
        4: lambda a: a[::-1, :],  # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # stored row 0 is the displayed left column, top to bottom
        6: lambda a: np.rot90(a, k=-1),  # stored row 0 is the displayed right column: turn clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # stored row 0 is the right column, bottom to top
        8: lambda a: np.rot90(a, k=1),  # stored row 0 is the left column, bottom to top: turn anticlockwise
    }[orientation](stored)


def write_oriented(path, stored: np.ndarray, orientation: int, fmt: str = "PNG") -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored).save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


def write_png_of_size(path, width: int, height: int) -> None:
    """A valid all-black 1-bit PNG of any size; rows of zeros compress ~1000:1, so 30000 x 30000 is ~110 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = (b"\x00" + bytes((width + 7) // 8)) * 1000
    z = zlib.compressobj(6)
    body = b"".join(z.compress(rows) for _ in range(height // 1000)) + z.compress(rows[: (height % 1000) * (len(rows) // 1000)]) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def bombs(tmp_path_factory):
    """Two decompression bombs, written once: 30000 x 30000 (PIL refuses it) and 10000 x 10000 (PIL only warns)."""
    d = tmp_path_factory.mktemp("bombs")
    write_png_of_size(d / "huge.png", 30000, 30000)
    write_png_of_size(d / "big.png", 10000, 10000)
    return d / "huge.png", d / "big.png"


# --------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 4, 3), dtype=np.uint8)  # not square
    p = tmp_path / "photo.png"
    write_oriented(p, stored, orientation)
    assert Image.open(p).getexif()[ORIENTATION] == orientation  # the tag is really in the file
    np.testing.assert_array_equal(np.asarray(load_image(p)), displayed(stored, orientation))

    # the phone case: a JPEG (its decoded pixels are the stored ones, turned as the tag says)
    j = tmp_path / "photo.jpg"
    write_oriented(j, np.random.default_rng(orientation).integers(0, 256, (16, 8, 3), dtype=np.uint8), orientation, "JPEG")
    with Image.open(j) as raw:  # Image.open itself ignores the tag
        stored_j = np.asarray(raw.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(j)), displayed(stored_j, orientation))


def test_exif_orientation_reaches_the_cache_and_the_loaders(tmp_path):
    """End to end: the decoded-image cache and the test loader (with and without cache) see upright pixels."""
    rng = np.random.default_rng(0)
    stored = {o: rng.integers(0, 256, (6, 4, 3), dtype=np.uint8) for o in range(1, 9)}
    paths = {}
    for o, a in stored.items():
        paths[o] = tmp_path / f"o{o}.png"
        write_oriented(paths[o], a, o)
    # stored 6 x 4; orientations 5-8 display 4 x 6. One cache per displayed size, so that the cache's resize
    # is the identity and its rows must equal the displayed pixels exactly.
    for group, (h, w) in (((1, 2, 3, 4), (6, 4)), ((5, 6, 7, 8), (4, 6))):
        cache = build_cache([paths[o] for o in group], h, w, cache_dir=tmp_path / "c", progress=False)
        for i, o in enumerate(group):
            np.testing.assert_array_equal(cache.numpy(i), displayed(stored[o], o))
        recs = [ImageRecord(str(paths[o]), o, 1, "visible") for o in group]
        plain = next(iter(build_test_loader(recs, height=h, width=w, batch_size=4)))[0]
        cached = next(iter(build_test_loader(recs, height=h, width=w, batch_size=4, use_cache=True,
                                             cache_dir=tmp_path / "c2")))[0]
        assert plain.shape == (4, 3, h, w)
        assert np.allclose(plain.numpy(), cached.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- decompression bombs


def test_decompression_bomb_is_a_dataset_error(bombs):
    huge, big = bombs
    for bomb, pixels in ((huge, "900,000,000"), (big, "100,000,000")):
        with pytest.warns(Image.DecompressionBombWarning) if bomb == big else contextlib.nullcontext():
            with pytest.raises(DatasetError) as e:  # PIL raises on the huge one, only warns on the big one
                load_image(bomb)
        msg = str(e.value)
        assert str(bomb) in msg and f"{pixels} pixels" in msg and "MAX_IMAGE_PIXELS = 89,478,485" in msg
        assert "resize the image" in msg
    with warnings.catch_warnings():  # a process that turns warnings into errors gets the same message
        warnings.simplefilter("error")
        with pytest.raises(DatasetError, match=r"big\.png: image too large .*100,000,000 pixels"):
            load_image(big)
    # the limit is PIL's, in force when the image is read: lowered, it refuses a 40 x 40 image but not 30 x 30
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(bombs[0].parent / "40.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(bombs[0].parent / "30.png")
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1000
        with pytest.raises(DatasetError, match=r"40\.png: image too large .*1,600 pixels.*MAX_IMAGE_PIXELS = 1,000"):
            load_image(bombs[0].parent / "40.png")
        assert load_image(bombs[0].parent / "30.png").size == (30, 30)
    finally:
        Image.MAX_IMAGE_PIXELS = old


@pytest.fixture
def sysu_with_bombs(tmp_path, bombs):
    """A tiny SYSU root where a training image and a query image are bombs and a gallery image is corrupt."""
    counts = {(pid, cam): 2 for pid in (1, 2, 3) for cam in range(1, 7)}
    root = make_sysu(tmp_path / "sysu", counts, train=[1], val=[2], test=[3])
    bad = [root / "cam1/0001/0002.jpg", root / "cam3/0003/0001.jpg"]
    shutil.copy(bombs[0], bad[0])  # a PNG named .jpg: PIL reads the content, not the name
    shutil.copy(bombs[1], bad[1])
    (root / "cam2/0003/0001.jpg").write_bytes(b"not an image")
    return root, bad, root / "cam2/0003/0001.jpg"


def test_data_check_lists_bombs_and_goes_on(sysu_with_bombs):
    root, bombs_in_root, corrupt = sysu_with_bombs
    problems = check_dataset(root)
    assert len(problems) == 3
    for p in bombs_in_root:
        assert any(str(p) in x and "too large to decode safely" in x for x in problems)
    assert any(str(corrupt) in x and "does not decode" in x for x in problems)  # listed after the bombs
    res = CliRunner().invoke(app, ["data", "check", str(root)])
    assert res.exit_code == 1 and "3 problem(s)" in res.output and "Traceback" not in res.output
    assert all(str(p) in res.output for p in [*bombs_in_root, corrupt])


def test_bomb_in_training_is_named(sysu_with_bombs):
    root, bombs_in_root, _ = sysu_with_bombs
    recs = [ImageRecord(str(p), i // 2, 1 if i % 2 == 0 else 3, "visible" if i % 2 == 0 else "thermal")
            for i, p in enumerate([bombs_in_root[0], root / "cam3/0001/0001.jpg", root / "cam1/0001/0001.jpg",
                                   root / "cam3/0001/0002.jpg"])]
    loader = build_train_loader(recs, height=16, width=8, P=2, K=1, seed=0)
    loader.batch_sampler.set_epoch(0)
    with pytest.raises(DatasetError, match=r"0001/0002\.jpg: image too large"):
        list(loader)


class _PixelNet(torch.nn.Module):
    """A stand-in network whose feature is the preprocessed image itself, so equal features mean equal pixels."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.feature_dim = 3 * h * w

    def forward(self, x, modality=None):
        return x.flatten(1)


def test_exif_orientation_reaches_index_and_search(tmp_path):
    """`cmemd index` / `search` read images through the same decoder: a phone photo stored sideways with
    orientation 6 gets the feature of the same photo saved upright, and finds it first."""
    rng = np.random.default_rng(1)
    upright = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    folder = tmp_path / "gallery"
    folder.mkdir()
    write_oriented(folder / "a_phone.png", np.rot90(upright, k=1).copy(), 6)  # stored sideways, tag says turn it
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)).save(folder / f"b{i}.png")
    Image.fromarray(upright).save(tmp_path / "query.png")
    cfg = SimpleNamespace(data=SimpleNamespace(height=8, width=4), eval=SimpleNamespace(flip=False),
                          model=SimpleNamespace())
    model = ReIDModel(_PixelNet(8, 4), cfg)
    gallery = build_index(model, folder, tmp_path / "g.npz", modality="visible", progress=False)
    q = model.encode([tmp_path / "query.png"], "visible")
    np.testing.assert_array_equal(gallery.feats[0], q[0])
    best = search(gallery, q, top_k=1)[0][0]
    assert best.path.endswith("a_phone.png") and best.score == pytest.approx(1.0)


def test_bomb_given_to_index_and_search_is_named(tmp_path, bombs):
    folder = tmp_path / "gallery"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(folder / "a.png")
    shutil.copy(bombs[0], folder / "b.png")
    cfg = SimpleNamespace(data=SimpleNamespace(height=8, width=4), eval=SimpleNamespace(flip=False),
                          model=SimpleNamespace())
    model = ReIDModel(_PixelNet(8, 4), cfg)
    with pytest.raises(DatasetError, match=r"b\.png: image too large"):
        build_index(model, folder, tmp_path / "g.npz", modality="visible", progress=False)
    assert not (tmp_path / "g.npz").exists()
    with pytest.raises(DatasetError, match=r"b\.png: image too large"):
        model.encode([folder / "b.png"], "thermal")  # what `cmemd search --query` does with the query


# --------------------------------------------------------------------------- symlinks


def _sysu(root):
    counts = {(pid, cam): 2 for pid in (1, 2, 3) for cam in range(1, 7)}
    return make_sysu(root, counts, train=[1], val=[2], test=[3])


def _loops_in(layout, root):
    """Symlink loops in a tiny dataset of ``layout``: a self-link, a two-link cycle, and a looping folder;
    returns the looping paths (each must be named among the problems)."""
    if layout == "sysu":
        _sysu(root)
        loops = [root / "cam1/0001/0009.jpg", root / "cam4/0003", root / "exp/val_id.txt"]
        os.symlink("0009.jpg", loops[0])
        shutil.rmtree(loops[1])
        os.symlink("0003", loops[1])  # a listed id's folder
        loops[2].unlink()
        os.symlink("val_b.txt", loops[2])
        os.symlink("val_id.txt", root / "exp/val_b.txt")  # two links pointing at each other
    elif layout == "regdb":
        make_regdb(root, num_ids=4, per_id=2)
        loops = [root / "Visible/1/male_front_v_00001_1.bmp", root / "idx/test_thermal_2.txt"]
        for p in loops:
            p.unlink()
            os.symlink(p.name, p)
    else:
        make_llcm(root, {(m, pid, cam): 2 for m in ("visible", "thermal") for pid in (3, 4) for cam in (1, 2)})
        loops = [root / "test_vis/cam1/0003/loop.jpg", root / "test_nir/cam5", root / "vis/cam1/0001/0001_c01_001.jpg"]
        os.symlink("loop.jpg", loops[0])
        shutil.rmtree(loops[1])
        os.symlink("cam5", loops[1])
        loops[2].unlink()
        os.symlink(loops[2].name, loops[2])
    return loops


@pytest.mark.parametrize("layout", ["sysu", "regdb", "llcm"])
def test_symlink_loops_are_layout_problems(tmp_path, layout):
    root = tmp_path / layout
    loops = _loops_in(layout, root)
    problems = check_dataset(root, layout)
    for p in loops:
        assert any(x.find(f"{p}: symlink loop") >= 0 for x in problems), (p, problems)
    assert not any("does not exist" in x or "not found" in x or "missing" in x for x in problems)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "check", str(root), "--layout", layout])
    assert res.exit_code == 1 and "symlink loop" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # not an OSError
    res = runner.invoke(app, ["data", "stats", str(root), "--layout", layout])
    assert res.exit_code == 2 and "symlink loop" in res.output and "Traceback" not in res.output
    with pytest.raises(DatasetError, match="symlink loop"):  # what `cmemd train` reads first
        resolve(root, layout).train_records(root)


def test_a_looping_root_is_named(tmp_path):
    os.symlink("root", tmp_path / "root")
    for layout in (None, "sysu", "regdb", "llcm"):
        with pytest.raises(DatasetError, match=f"{tmp_path / 'root'}: symlink loop"):
            dataset_stats(tmp_path / "root", layout)
    with pytest.raises(DatasetError, match="symlink loop"):
        load_image(tmp_path / "root")
    with pytest.raises(DatasetError, match="symlink loop"):
        build_cache([tmp_path / "root"], 8, 4, cache_dir=tmp_path / "c", progress=False)


def test_links_to_data_elsewhere_are_followed(tmp_path):
    """Users link datasets in from other disks: a linked root, camera folder, id folder and image read as the
    real ones; a link back to an enclosing folder is a stray entry, listed, and the scan ends."""
    plain = _sysu(tmp_path / "plain")
    real = _sysu(tmp_path / "elsewhere" / "sysu")
    store = tmp_path / "other_disk"
    store.mkdir()
    shutil.move(real / "cam3", store / "cam3")
    os.symlink(store / "cam3", real / "cam3")
    shutil.move(real / "cam1/0002", store / "0002")
    os.symlink(store / "0002", real / "cam1/0002")
    shutil.move(real / "cam5/0003/0001.jpg", store / "img.jpg")
    os.symlink(store / "img.jpg", real / "cam5/0003/0001.jpg")
    os.symlink(real, tmp_path / "linked")
    root = tmp_path / "linked"
    assert check_dataset(root) == []
    want = dataset_stats(plain)
    got = dataset_stats(root)
    assert got["splits"] == want["splits"] and got["totals"] == want["totals"]
    strip = len(str(root))
    assert [r.path[strip:] for r in resolve(root).train_records(root)] == \
        [r.path[len(str(plain)):] for r in resolve(plain).train_records(plain)]

    os.symlink("..", real / "cam2/0001/up")  # a cycle: cam2/0001/up/0001/up/... never ends if walked
    problems = check_dataset(root)
    assert problems == [f"{root / 'cam2/0001'}: non-image files ['up']; move them out of the dataset"]


# --------------------------------------------------------------------------- data preview arguments


@pytest.mark.parametrize("args, message", [
    (["--out", "{d}/p.txt"], r"unsupported file type '\.txt'; name a \.png, \.jpg, \.jpeg, \.bmp file"),
    (["--out", "{d}/p"], r"unsupported file type '\(no suffix\)'"),
    (["--out", "{d}"], r"is a folder"),
    (["--ids", "0"], r"--ids\) must be >= 1.*got 0"),
    (["--ids", "-3"], r"--ids\) must be >= 1.*got -3"),
    (["--per-camera", "0"], r"--per-camera\) must be >= 1"),
    (["--out", "{d}/no/such/folder/p.png"], r"--out .*p\.png: folder .*folder does not exist; create it first"),
])
def test_preview_arguments_are_checked_before_any_work(tmp_path, monkeypatch, args, message):
    import cmemd.data.preview as preview_mod

    root = _sysu(tmp_path / "sysu")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def no_work(*a, **k):
        raise AssertionError("an image was read before the arguments were checked")

    monkeypatch.setattr(preview_mod, "load_image", no_work)
    monkeypatch.setattr(preview_mod, "resolve", no_work, raising=False)
    args = [a.format(d=out_dir) for a in args]
    if "--out" not in args:
        args += ["--out", str(out_dir / "p.png")]
    res = CliRunner().invoke(app, ["data", "preview", str(root), *args])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert re.search(message, res.output), res.output
    assert list(out_dir.iterdir()) == []


def test_preview_writes_the_chosen_format_and_names_a_bad_image(tmp_path, bombs):
    root = _sysu(tmp_path / "sysu")
    runner = CliRunner()
    for name, fmt in (("p.jpg", "JPEG"), ("p.BMP", "BMP"), ("p.png", "PNG")):
        res = runner.invoke(app, ["data", "preview", str(root), "--out", str(tmp_path / name), "--ids", "2"])
        assert res.exit_code == 0, res.output
        assert Image.open(tmp_path / name).format == fmt
    shutil.copy(bombs[0], root / "cam1/0001/0001.jpg")
    res = runner.invoke(app, ["data", "preview", str(root), "--out", str(tmp_path / "q.png"), "--ids", "3"])
    assert res.exit_code == 2 and "0001.jpg: image too large" in res.output and not (tmp_path / "q.png").exists()
