"""LLCM reader and per-trial draws, on hand-built trees (independent of the synthetic generator)."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

from cmemd.data.images import load_image
from cmemd.benchmarks.llcm import draw_one_per_camera
from cmemd.benchmarks.registry import get_benchmark
from cmemd.data.llcm import LLCM, camera_of, read_train_list, train_records
from cmemd.errors import DatasetError
from tests.data.builders import make_llcm

VIS_CAMS = range(1, 10)
NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)


def _counts(pids=(3, 7, 12), seed=0):
    rng = np.random.default_rng(seed)
    counts = {}
    for p in pids:
        for c in VIS_CAMS:
            if rng.random() < 0.7:
                counts[("visible", p, c)] = int(rng.integers(1, 5))
        for c in NIR_CAMS:
            if rng.random() < 0.7:
                counts[("thermal", p, c)] = int(rng.integers(1, 5))
    return counts


def test_records_come_from_folders_even_when_the_root_path_contains_cam(tmp_path):
    counts = _counts()
    root = make_llcm(tmp_path / "cam3_scans" / "camera" / "LLCM", counts)
    ds = LLCM(root)
    assert ds.test_ids == [3, 7, 12]
    for m in ("visible", "thermal"):
        recs = ds.test(m)
        assert len(recs) == sum(n for (mm, _, _), n in counts.items() if mm == m)
        assert all(r.modality == m for r in recs)
        # ids and cameras are the folder numbers, whatever the root path holds
        for r in recs:
            cam_dir, pid_dir = os.path.normpath(r.path).split(os.sep)[-3:-1]
            assert (r.camid, r.pid) == (int(cam_dir[3:]), int(pid_dir))
        # the authors' order: ids ascending, cameras ascending, files sorted
        keys = [(r.pid, r.camid, os.path.basename(r.path)) for r in recs]
        assert keys == sorted(keys)


def test_single_channel_nir_images_load_as_rgb(tmp_path):
    root = make_llcm(tmp_path / "l", {("visible", 1, 1): 1, ("thermal", 1, 2): 2}, nir_mode="L")
    recs = LLCM(root).test("thermal")
    from PIL import Image

    assert Image.open(recs[0].path).mode == "L"
    im = load_image(recs[0].path)
    assert im.mode == "RGB" and len(im.getbands()) == 3


def test_every_structural_problem_is_reported_at_once(tmp_path):
    counts = {("visible", 1, 1): 2, ("thermal", 1, 2): 2, ("visible", 2, 3): 1}
    root = make_llcm(tmp_path / "l", counts, test_ids=(1, 2, 5))  # id 5 has no images
    os.rmdir(root / "test_vis" / "cam9")  # camera folder missing
    (root / "test_nir" / "cam4" / "0002").mkdir()  # empty id folder
    (root / "test_vis" / "cam1" / "0001" / "notes.txt").write_text("x")  # non-image file
    with pytest.raises(DatasetError) as e:
        LLCM(root)
    text = "\n".join(e.value.problems)
    assert len(e.value.problems) == 4, text
    assert "test_vis/cam9: camera folder missing" in text
    assert "test_nir/cam4/0002: empty id folder" in text
    assert "notes.txt" in text
    assert "test id 5" in text


def test_malformed_id_file(tmp_path):
    root = make_llcm(tmp_path / "l", {("visible", 1, 1): 1})
    (root / "idx" / "test_id.txt").write_text("1;2\n")
    with pytest.raises(DatasetError, match="test_id.txt"):
        LLCM(root)
    (root / "idx" / "test_id.txt").unlink()
    with pytest.raises(DatasetError, match="idx/test_id.txt"):
        LLCM(root)


def test_training_lists(tmp_path):
    root = make_llcm(tmp_path / "cam_root", {("visible", 9, 1): 1}, train_ids=(4, 6, 8))
    recs = LLCM(root).train()
    assert len(recs) == 2 * 3 * 2 * 2
    assert sorted({r.pid for r in recs}) == [0, 1, 2]
    assert {r.camid for r in recs} == {1, 2}
    assert [r.modality for r in recs] == ["visible"] * 12 + ["thermal"] * 12
    assert camera_of("cam7x/nir/cam3/0001/a.jpg") == 3 and camera_of("nir/0001/a.jpg") is None
    # every bad line at once: wrong field count, bad label, no camera folder, missing file
    lst = root / "idx" / "train_nir.txt"
    lst.write_text(lst.read_text() + "just-a-path\nnir/cam1/0004/0004_c01_001.jpg x\nnir/0004/a.jpg 0\n"
                   "nir/cam1/0004/missing.jpg 0\n")
    with pytest.raises(DatasetError) as e:
        read_train_list(lst, root, "thermal")
    assert len(e.value.problems) == 4 and all("train_nir.txt:" in p for p in e.value.problems)
    lst.write_text("nir/cam1/0004/0004_c01_001.jpg 0\n")  # label 0 only: visible has 0..2
    with pytest.raises(DatasetError, match="only one of train_vis.txt / train_nir.txt"):
        LLCM(root).train()


def _authors_style_draw(root, folder, cams, ids, trial):
    """The rule, written out: seed the global random with the trial, ids ascending, cameras in the
    listed order, random.choice over the sorted full paths of each existing (camera, id) folder."""
    random.seed(trial)
    chosen = []
    for pid in sorted(f"{i:04d}" for i in ids):
        for c in cams:
            d = os.path.join(str(root), folder, f"cam{c}", pid)
            if os.path.isdir(d):
                chosen.append(random.choice(sorted(d + "/" + f for f in os.listdir(d))))
    return chosen


@pytest.mark.parametrize("modality,folder,cams", [("visible", "test_vis", VIS_CAMS), ("thermal", "test_nir", NIR_CAMS)])
def test_draw_matches_the_rule_for_ten_trials(tmp_path, modality, folder, cams):
    counts = _counts(pids=(2, 5, 11, 40), seed=1)
    root = make_llcm(tmp_path / "l", counts)
    ds = LLCM(root)
    recs = ds.test(modality)
    rng = np.random.default_rng(0)
    shuffled = [recs[i] for i in rng.permutation(len(recs))]  # the draw must not depend on the pool's order
    for trial in range(10):
        idx = draw_one_per_camera([r.pid for r in shuffled], [r.camid for r in shuffled], [r.path for r in shuffled],
                                  trial=trial)
        got = [os.path.normpath(shuffled[i].path) for i in idx]
        want = [os.path.normpath(p) for p in _authors_style_draw(root, folder, cams, ds.test_ids, trial)]
        assert got == want
    draws = [tuple(draw_one_per_camera([r.pid for r in recs], [r.camid for r in recs], [r.path for r in recs], trial=t))
             for t in range(10)]
    assert len(set(draws)) > 1  # trials differ


def test_draw_rejects_bad_input():
    with pytest.raises(DatasetError, match="differ in length"):
        draw_one_per_camera([1, 2], [1], ["a", "b"], trial=0)
    with pytest.raises(DatasetError, match="trial must be >= 0"):
        draw_one_per_camera([1], [1], ["a"], trial=-1)



def test_root_of_another_layout_is_named(tmp_path):
    """The benchmark names the layout a root has when it is another benchmark's (the readers know only their own)."""
    from tests.data.builders import make_sysu

    sysu = make_sysu(tmp_path / "s", {(1, 1): 1, (1, 3): 1}, train=(1,), test=(1,))
    llcm = make_llcm(tmp_path / "l", {("visible", 1, 1): 1})
    with pytest.raises(DatasetError, match="looks like a SYSU-MM01 root.*data.dataset=sysu"):
        get_benchmark("llcm").test_sets(sysu)
    with pytest.raises(DatasetError, match="looks like a SYSU-MM01 root"):  # the training lists check it too
        get_benchmark("llcm").train_records(sysu)
    with pytest.raises(DatasetError, match="looks like a LLCM root.*data.dataset=llcm"):
        get_benchmark("sysu").train_records(llcm)
    with pytest.raises(DatasetError, match="camera folder missing"):  # the reader alone lists what it misses
        LLCM(sysu)
