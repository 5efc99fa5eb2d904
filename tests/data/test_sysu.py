from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cmemd.benchmarks.sysu import GALLERY_CAMS, draw_gallery, gallery, load_rand_perm
from cmemd.data.fs import read_id_file
from cmemd.data.sysu import SYSUMM01
from cmemd.errors import DatasetError
from tests.data.builders import make_sysu, write_image

TRAIN, VAL, TEST = (1, 2, 5), (3,), (7, 8, 9)


def _counts():
    rng = np.random.default_rng(1)
    counts = {}
    for pid in TRAIN + VAL + TEST:
        for cam in range(1, 7):
            if pid == 9 and cam in (4, 5):  # an id absent from the outdoor visible cameras
                continue
            counts[(pid, cam)] = int(rng.integers(1, 13))
    counts[(7, 2)] = 12  # enough for a full multi-shot draw
    return counts


@pytest.fixture
def sysu(tmp_path):
    counts = _counts()
    root = make_sysu(tmp_path / "SYSU-MM01", counts, TRAIN, VAL, TEST)
    return root, counts


def field_gallery(root: Path, mode: str, trial: int, shots: int) -> list[str]:
    """The field's public process_gallery_sysu, rewritten from its description (filesystem walk)."""
    random.seed(trial)
    cams = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    ids = open(root / "exp" / "test_id.txt").read().splitlines()
    ids = ["%04d" % int(y) for y in ids[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cams:
            d = os.path.join(root, cam, pid)
            if os.path.isdir(d):
                new_files = sorted([d + "/" + i for i in os.listdir(d)])
                if shots == 1:
                    files.append(random.choice(new_files))
                else:
                    files.extend(random.sample(new_files, min(10, len(new_files))))
    return files


def test_counts_and_relabelling(sysu):
    root, counts = sysu
    ds = SYSUMM01(root)
    train = ds.train()
    assert sorted({r.pid for r in train}) == list(range(len(TRAIN + VAL)))
    assert len(train) == sum(n for (p, _), n in counts.items() if p in TRAIN + VAL)
    for cam in range(1, 7):
        assert sum(r.camid == cam for r in train) == sum(n for (p, c), n in counts.items() if c == cam and p in TRAIN + VAL)
    # label order follows id order
    first = {r.pid: int(Path(r.path).parent.name) for r in train}
    assert first == {i: pid for i, pid in enumerate(sorted(TRAIN + VAL))}
    query = ds.thermal()
    assert {r.camid for r in query} == {3, 6} and {r.modality for r in query} == {"thermal"}
    assert len(query) == sum(n for (p, c), n in counts.items() if p in TEST and c in (3, 6))
    for mode, cams in (("all", {1, 2, 4, 5}), ("indoor", {1, 2})):
        pool = ds.visible(cams=GALLERY_CAMS[mode])
        assert {r.camid for r in pool} <= cams and {r.modality for r in pool} == {"visible"}
        assert len(pool) == sum(n for (p, c), n in counts.items() if p in TEST and c in cams)


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("shots", [1, 10])
def test_python_random_matches_field_code(sysu, mode, shots):
    root, counts = sysu
    ds = SYSUMM01(root)
    for trial in range(10):
        ours = [r.path for r in gallery(ds, mode, shots, trial)]
        assert [os.path.normpath(p) for p in ours] == [os.path.normpath(p) for p in field_gallery(root, mode, trial, shots)]
    cams = (1, 2, 4, 5) if mode == "all" else (1, 2)
    g = gallery(ds, mode, shots, 0)
    expected = sum(min(shots, n) for (p, c), n in counts.items() if p in TEST and c in cams)
    assert len(g) == expected


def test_trials_differ_and_repeat(sysu):
    root, _ = sysu
    ds = SYSUMM01(root)
    draws = [tuple(r.path for r in gallery(ds, "all", 1, t)) for t in range(10)]
    assert len(set(draws)) > 1
    assert draws[3] == tuple(r.path for r in gallery(ds, "all", 1, 3))


def _write_rand_perm(path: Path, counts, trials=10, seed=0, max_pid=12):
    rng = np.random.default_rng(seed)
    cell = np.empty((6, 1), dtype=object)
    table = {}
    for c in range(1, 7):
        entries = np.empty((max_pid, 1), dtype=object)
        for pid in range(1, max_pid + 1):
            n = counts.get((pid, c), 0)
            a = np.stack([rng.permutation(n) + 1 for _ in range(trials)]).astype(np.uint8) if n else np.zeros((trials, 0), np.uint8)
            entries[pid - 1, 0] = a
            table[(pid, c)] = a
        cell[c - 1, 0] = entries
    scipy.io.savemat(path, {"rand_perm_cam": cell})
    return table


@pytest.mark.parametrize("shots", [1, 10])
def test_official_method_follows_mat_rows(sysu, tmp_path, shots):
    root, counts = sysu
    table = _write_rand_perm(tmp_path / "rand_perm_cam.mat", counts)
    ds = SYSUMM01(root)
    for trial in (0, 4, 9):
        g = gallery(ds, "all", shots, trial, method="official", rand_perm=tmp_path / "rand_perm_cam.mat")
        expected = []
        for pid in sorted(TEST):
            for c in (1, 2, 4, 5):
                if (pid, c) in counts:
                    expected += [str(root / f"cam{c}" / f"{pid:04d}" / f"{k:04d}.jpg") for k in table[(pid, c)][trial, :shots]]
        assert [r.path for r in g] == expected


def test_official_mat_mismatch_is_an_error(sysu, tmp_path):
    root, counts = sysu
    bad = dict(counts)
    bad[(7, 1)] = counts[(7, 1)] + 5  # the file names images the pool does not have
    _write_rand_perm(tmp_path / "r.mat", bad)
    with pytest.raises(DatasetError, match="not in the gallery pool"):
        gallery(SYSUMM01(root), "all", 10, 0, method="official", rand_perm=tmp_path / "r.mat")
    with pytest.raises(DatasetError, match="rand_perm_cam.mat"):
        gallery(SYSUMM01(root), "all", 1, 0, method="official")


def test_real_official_file_structure(shared_dir):
    """The authors' file: 6 cameras, 10 trials, each row a permutation of 1..n; draws index it as specified."""
    rp = load_rand_perm(shared_dir / "data/sysu_official/rand_perm_cam.mat")
    assert len(rp.perm) == 6 and rp.num_trials == 10
    test_ids = [int(x) for x in scipy.io.loadmat(shared_dir / "data/sysu_official/test_id.mat")["id"].ravel()]
    assert len(test_ids) == 96
    # a pool described by the file's own index structure: n files 0001..000n per (camera, id)
    pids, cams, paths = [], [], []
    for pid in test_ids:
        for c in (1, 2, 4, 5):
            a = rp.perm[c - 1][pid - 1] if pid - 1 < len(rp.perm[c - 1]) else np.zeros((10, 0))
            for row in a:
                assert sorted(row) == list(range(1, a.shape[1] + 1))
            for k in range(1, a.shape[1] + 1):
                pids.append(pid), cams.append(c), paths.append(f"cam{c}/{pid:04d}/{k:04d}.jpg")
    for trial in (0, 9):
        idx = draw_gallery(pids, cams, paths, mode="all", shots=1, trial=trial, method="official", rand_perm=rp)
        expected = [
            f"cam{c}/{pid:04d}/{int(rp.perm[c - 1][pid - 1][trial, 0]):04d}.jpg"
            for pid in sorted(test_ids) for c in (1, 2, 4, 5)
            if pid - 1 < len(rp.perm[c - 1]) and rp.perm[c - 1][pid - 1].size
        ]
        assert [paths[i] for i in idx] == expected
        # single-shot gallery of all-search: one image per (id, camera) present
        assert len(idx) == len({(pids[i], cams[i]) for i in range(len(pids))})
    multi = draw_gallery(pids, cams, paths, mode="indoor", shots=10, trial=2, method="official", rand_perm=rp)
    assert all(cams[i] in (1, 2) for i in multi)


# ---------------------------------------------------------------------- errors

def test_missing_root():
    with pytest.raises(DatasetError, match="root not found"):
        SYSUMM01("/nonexistent/SYSU")


def test_every_structural_problem_reported_at_once(sysu):
    root, _ = sysu
    import shutil

    shutil.rmtree(root / "cam4")
    (root / "exp" / "val_id.txt").write_text("3,x\n")
    (root / "cam1" / "0099").mkdir()
    (root / "exp" / "train_id.txt").write_text("1,2,5,42\n")  # 42 has no images
    (root / "cam2" / "0001" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError) as e:
        SYSUMM01(root)
    msg = str(e.value)
    for needle in ("cam4: camera folder missing", "val_id.txt: id #2 is 'x'", "id 42 is listed", "notes.txt"):
        assert needle in msg, needle
    assert len(e.value.problems) == 4


def test_empty_id_folder_and_missing_split(sysu):
    root, _ = sysu
    for f in (root / "cam3" / "0007").iterdir():
        f.unlink()
    (root / "exp" / "test_id.txt").unlink()
    with pytest.raises(DatasetError) as e:
        SYSUMM01(root)
    assert any("test_id.txt: split file not found" in p for p in e.value.problems)


@pytest.mark.parametrize("text,needle", [("1,2\n3,4\n", "exactly one"), ("", "exactly one"), ("1,,2", "id #2"), ("1,2,1", "listed twice"), ("0,1", "id #1")])
def test_malformed_id_lines(tmp_path, text, needle):
    p = tmp_path / "test_id.txt"
    p.write_text(text)
    with pytest.raises(DatasetError, match=needle):
        read_id_file(p, "the test")


def test_id_file_tolerates_whitespace(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text(" 1, 2 ,33 \n\n")
    assert read_id_file(p, "the test") == [1, 2, 33]


def test_bad_draw_arguments(sysu):
    root, _ = sysu
    ds = SYSUMM01(root)
    with pytest.raises(DatasetError, match="shots"):
        gallery(ds, "all", 5, 0)
    with pytest.raises(DatasetError, match="mode"):
        gallery(ds, "outdoor", 1, 0)
    with pytest.raises(DatasetError, match="method"):
        gallery(ds, "all", 1, 0, method="matlab")
