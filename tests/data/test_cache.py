"""Decoded-image cache: build, reuse, invalidation, atomic writes, location fallback."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

import cmemd.data.cache as cache_mod
from cmemd.data.cache import build_cache, load_cache, resolve_cache_dir
from cmemd.errors import DatasetError


def write_images(root, n=5, size=(30, 14)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def counted_decodes(monkeypatch):
    calls = []
    real = cache_mod.load_image

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(cache_mod, "load_image", counting)
    return calls


def test_build_contents_and_reuse(tmp_path, counted_decodes):
    paths = write_images(tmp_path)
    c = build_cache(paths, 16, 8, cache_dir=tmp_path / "c", progress=False)
    assert len(counted_decodes) == 5 and len(c) == 5
    for i, p in enumerate(paths):
        want = np.asarray(Image.open(p).convert("RGB").resize((8, 16), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(c.numpy(i), want)
        assert c[i].shape == (3, 16, 8) and c[i].dtype.is_floating_point is False
        np.testing.assert_array_equal(c[i].permute(1, 2, 0).numpy(), want)
    assert np.load(c.array_path, mmap_mode="r").shape == (5, 16, 8, 3)

    c2 = build_cache(paths, 16, 8, cache_dir=tmp_path / "c", progress=False)
    assert len(counted_decodes) == 5  # reused, nothing decoded
    np.testing.assert_array_equal(np.asarray(c2.array), np.asarray(c.array))
    # another size is another cache
    build_cache(paths, 12, 6, cache_dir=tmp_path / "c", progress=False)
    assert len(counted_decodes) == 10


def test_invalidated_when_a_file_changes(tmp_path, counted_decodes):
    paths = write_images(tmp_path)
    build_cache(paths, 16, 8, cache_dir=tmp_path / "c", progress=False)
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "touch"
    assert load_cache(paths, 16, 8, cache_dir=tmp_path / "c") is None
    build_cache(paths, 16, 8, cache_dir=tmp_path / "c", progress=False)
    assert len(counted_decodes) == 10

    # new content with the old mtime restored: caught by the file size
    st = os.stat(paths[0])
    Image.fromarray(np.zeros((30, 14, 3), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(paths[0]).st_size != st.st_size
    c = build_cache(paths, 16, 8, cache_dir=tmp_path / "c", progress=False)
    assert len(counted_decodes) == 15
    assert (c.numpy(0) == 0).all()


def test_invalidated_when_the_path_list_changes(tmp_path, counted_decodes):
    paths = write_images(tmp_path)
    build_cache(paths, 16, 8, cache_dir=tmp_path / "c", name="ds", progress=False)
    c = build_cache(paths[:4], 16, 8, cache_dir=tmp_path / "c", name="ds", progress=False)
    assert len(counted_decodes) == 9 and len(c) == 4
    assert sorted(os.listdir(tmp_path / "c")) == ["ds_16x8_bilinear.json", "ds_16x8_bilinear.npy"]


def test_interrupted_build_leaves_no_partial_files(tmp_path, monkeypatch):
    paths = write_images(tmp_path)
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C mid-write
        return Image.open(path).convert("RGB")

    monkeypatch.setattr(cache_mod, "load_image", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, 16, 8, cache_dir=tmp_path / "c", progress=False)
    assert os.listdir(tmp_path / "c") == []
    assert load_cache(paths, 16, 8, cache_dir=tmp_path / "c") is None


def test_interrupted_rebuild_does_not_leave_a_stale_index(tmp_path, monkeypatch):
    paths = write_images(tmp_path)
    build_cache(paths, 16, 8, cache_dir=tmp_path / "c", name="ds", progress=False)
    os.utime(paths[1], ns=(0, 10**18))

    def failing(path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cache_mod, "load_image", failing)
    with pytest.raises(RuntimeError):
        build_cache(paths, 16, 8, cache_dir=tmp_path / "c", name="ds", progress=False)
    assert not any(f.endswith(".tmp") or f.endswith(".json") for f in os.listdir(tmp_path / "c"))


def test_bad_image_raises_dataset_error(tmp_path):
    paths = write_images(tmp_path, n=2)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad.png"):
        build_cache(paths + [str(tmp_path / "bad.png")], 16, 8, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(DatasetError, match="missing.png"):
        build_cache(paths + [str(tmp_path / "missing.png")], 16, 8, cache_dir=tmp_path / "c", progress=False)


def test_every_unreadable_image_is_listed_and_nothing_is_cached(tmp_path, counted_decodes):
    paths = write_images(tmp_path, n=4)
    bad = []
    for i in range(23):  # more than the 20 a message shows
        p = tmp_path / f"bad{i:02d}.png"
        p.write_bytes(b"not an image" if i % 2 else (tmp_path / "img0.png").read_bytes()[:40])  # junk, truncated
        bad.append(str(p))
    bad.append(str(tmp_path / "missing.png"))
    mixed = paths[:2] + bad[:10] + [paths[2]] + bad[10:] + [paths[3]]
    with pytest.raises(DatasetError) as e:
        build_cache(mixed, 16, 8, cache_dir=tmp_path / "c", progress=False)
    problems = e.value.problems
    assert len(problems) == len(bad) and [p.split(":")[0] for p in problems] == bad  # all of them, in path order
    assert "24 of 28 images cannot be read" in str(e.value) and "... and 4 more" in str(e.value)
    assert "not found" in problems[-1] and all("does not decode" in p for p in problems[:-1])
    assert all(p in counted_decodes for p in paths)  # the good ones after the first bad one were still read
    assert os.listdir(tmp_path / "c") == []  # no partial array, no index
    assert load_cache(mixed, 16, 8, cache_dir=tmp_path / "c") is None
    # once the bad files are gone the same call builds the cache
    c = build_cache(paths, 16, 8, cache_dir=tmp_path / "c", progress=False)
    assert len(c) == 4


def test_default_location_and_readonly_fallback(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    root.mkdir()
    paths = write_images(root, n=2)
    c = build_cache(paths, 16, 8, dataset_root=root, progress=False)
    assert c.array_path.parent == root / ".cmemd_cache"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cache_mod, "_writable_dir", lambda d: not str(d).startswith(str(root)))
    with pytest.warns(UserWarning, match="not writable"):
        d = resolve_cache_dir(None, root)
    assert d == tmp_path / "xdg" / "cmemd"


def test_pickle_drops_the_memory_map(tmp_path):
    paths = write_images(tmp_path, n=3)
    c = build_cache(paths, 64, 32, cache_dir=tmp_path / "c", progress=False)
    _ = c[0]
    blob = pickle.dumps(c)
    assert len(blob) < 64 * 32 * 3  # the pixels are not in the pickle
    c2 = pickle.loads(blob)
    np.testing.assert_array_equal(c2.numpy(2), c.numpy(2))


def test_a_cache_from_before_exif_orientation_is_rebuilt(tmp_path, counted_decodes):
    """Version-1 caches were decoded without the EXIF orientation: one is rebuilt, not reused sideways."""
    import json

    paths = write_images(tmp_path, n=2)
    c = build_cache(paths, 16, 8, cache_dir=tmp_path / "c", name="ds", progress=False)
    index_path = c.array_path.with_suffix(".json")
    index = json.loads(index_path.read_text())
    assert index["version"] == 2
    index["version"] = 1
    index_path.write_text(json.dumps(index))
    assert load_cache(paths, 16, 8, cache_dir=tmp_path / "c", name="ds") is None
    build_cache(paths, 16, 8, cache_dir=tmp_path / "c", name="ds", progress=False)
    assert len(counted_decodes) == 4
