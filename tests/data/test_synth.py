"""The synthetic benchmark: layout facts, determinism, and the two raw-pixel sanity properties."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cmemd.data.synth import SYSU_CAMERAS, SynthConfig, generate_regdb, generate_sysu
from cmemd.errors import ConfigError

VISIBLE_CAMS, THERMAL_CAMS = (1, 2, 4, 5), (3, 6)


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "synth_summary.json"}


def _ids_line(path: Path) -> list[int]:
    text = path.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"{path} must be one line"
    return [int(v) for v in lines[0].split(",")]


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu")
    cfg = SynthConfig(ids=36, images_per_camera=(3, 4), seed=3)
    return root, cfg, generate_sysu(root, cfg)


@pytest.fixture(scope="module")
def regdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb")
    cfg = SynthConfig(ids=12, seed=5)
    return root, cfg, generate_regdb(root, cfg)


# --------------------------------------------------------------------------- SYSU layout


def test_sysu_counts_match_summary_and_files(sysu):
    root, cfg, summary = sysu
    assert json.loads((root / "synth_summary.json").read_text()) == summary
    split_of = {p: s for s, ids in summary["ids"].items() for p in ids}
    counted = {s: {f"cam{c}": 0 for c in range(1, 7)} for s in ("train", "val", "test")}
    for c in range(1, 7):
        for d in (root / f"cam{c}").iterdir():
            files = sorted(p.name for p in d.iterdir())
            # numbered 0001..n inside each (camera, id) folder
            assert files == [f"{k:04d}.jpg" for k in range(1, len(files) + 1)]
            assert len(d.name) == 4
            counted[split_of[int(d.name)]][f"cam{c}"] += len(files)
    assert counted == summary["images"]
    vis = sum(v for s in counted.values() for k, v in s.items() if int(k[3:]) in VISIBLE_CAMS)
    thr = sum(v for s in counted.values() for k, v in s.items() if int(k[3:]) in THERMAL_CAMS)
    assert (summary["visible"], summary["thermal"]) == (vis, thr)


def test_sysu_splits_are_single_lines_disjoint_and_covering(sysu):
    root, cfg, summary = sysu
    exp = root / "exp"
    tr, va, te = (_ids_line(exp / f"{n}_id.txt") for n in ("train", "val", "test"))
    avail = _ids_line(exp / "available_id.txt")
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert sorted(tr + va + te) == sorted(avail) == list(range(1, cfg.ids + 1))
    assert [tr, va, te] == [summary["ids"][s] for s in ("train", "val", "test")]
    # roughly SYSU's 60/20/20
    assert abs(len(tr) / cfg.ids - 0.6) < 0.1 and abs(len(te) / cfg.ids - 0.2) < 0.1


def test_sysu_coverage_rules(sysu):
    root, cfg, summary = sysu
    has = {c: {int(d.name) for d in (root / f"cam{c}").iterdir()} for c in range(1, 7)}
    some_missing = False
    for pid in range(1, cfg.ids + 1):
        cams = {c for c in range(1, 7) if pid in has[c]}
        some_missing |= len(cams) < 6
        assert cams & set(VISIBLE_CAMS) and cams & set(THERMAL_CAMS), pid
        if pid in summary["ids"]["test"]:
            assert cams & {3, 6} and cams & {1, 2}, f"test id {pid} lacks query or indoor gallery"
    assert some_missing, "not every id should be in every camera"


def test_sysu_modalities(sysu):
    root, _, _ = sysu
    for c in range(1, 7):
        for p in sorted((root / f"cam{c}").rglob("*.jpg"))[:6]:
            a = np.asarray(Image.open(p).convert("RGB")).astype(int)
            assert a.shape == (128, 64, 3)
            gap = np.abs(a[..., 0] - a[..., 1]).max() + np.abs(a[..., 1] - a[..., 2]).max()
            if SYSU_CAMERAS[c][0] == "thermal":
                assert gap <= 2, f"{p}: thermal image must be grey"  # JPEG may leave +-1
            else:
                assert gap > 30, f"{p}: visible image must carry colour"


def test_sysu_rand_perm_mat(sysu, shared_dir):
    root, cfg, _ = sysu
    ours = scipy.io.loadmat(str(root / "exp" / "rand_perm_cam.mat"))["rand_perm_cam"]
    real = scipy.io.loadmat(str(shared_dir / "data" / "sysu_official" / "rand_perm_cam.mat"))["rand_perm_cam"]
    assert ours.shape == real.shape == (6, 1)
    assert real[0, 0][0, 0].shape[0] == 10  # same indexing as the authors' file
    for c in range(6):
        assert ours[c, 0].shape == (cfg.ids, 1)
        for pid in range(1, cfg.ids + 1):
            m = ours[c, 0][pid - 1, 0]
            d = root / f"cam{c + 1}" / f"{pid:04d}"
            n = len(list(d.iterdir())) if d.is_dir() else 0
            if n == 0:
                assert m.size == 0
                continue
            assert m.shape == (10, n)
            for row in m:
                assert sorted(row.tolist()) == list(range(1, n + 1))


# --------------------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_different_seed_differs(tmp_path):
    cfg = SynthConfig(ids=5, images_per_camera=(2, 2), seed=11)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_sysu(a, cfg)
    generate_sysu(b, cfg, workers=2)  # parallelism must not change a byte
    generate_sysu(c, SynthConfig(ids=5, images_per_camera=(2, 2), seed=12))
    da, db, dc = _tree_digest(a), _tree_digest(b), _tree_digest(c)
    assert da == db
    shared = set(da) & set(dc)
    assert sum(da[k] != dc[k] for k in shared if k.endswith(".jpg")) > 0.9 * sum(k.endswith(".jpg") for k in shared)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="variation"):
        SynthConfig(variation=1.5)
    with pytest.raises(ConfigError, match="images_per_camera"):
        SynthConfig(images_per_camera=(5, 2))


# --------------------------------------------------------------------------- RegDB layout


def test_regdb_files_and_alignment(regdb):
    root, cfg, summary = regdb
    for pid in range(1, cfg.ids + 1):
        vis = sorted((root / "Visible" / str(pid)).iterdir())
        thr = sorted((root / "Thermal" / str(pid)).iterdir())
        assert len(vis) == len(thr) == 10
        assert all("_v_" in p.name and p.suffix == ".bmp" for p in vis)
        assert all("_t_" in p.name for p in thr)
        # aligned rig: same frame name except the modality tag
        assert [p.name.replace("_v_", "_t_") for p in vis] == [p.name for p in thr]
        t = np.asarray(Image.open(thr[0]))
        assert t.ndim == 3 and (t[..., 0] == t[..., 1]).all() and (t[..., 1] == t[..., 2]).all()
    assert summary["visible"] == summary["thermal"] == 10 * cfg.ids


def test_regdb_idx_files(regdb):
    root, cfg, summary = regdb
    splits = []
    for t in range(1, 11):
        sets = {}
        for part in ("train", "test"):
            for mod in ("visible", "thermal"):
                lines = (root / "idx" / f"{part}_{mod}_{t}.txt").read_text().splitlines()
                assert len(lines) == 10 * (cfg.ids // 2 if part == "train" else cfg.ids - cfg.ids // 2)
                pids, labels = [], []
                for ln in lines:
                    path, lab = ln.split(" ")
                    assert (root / path).is_file(), path
                    assert ("_v_" if mod == "visible" else "_t_") in path
                    pids.append(int(Path(path).parent.name))
                    labels.append(int(lab))
                if part == "train":  # contiguous 0..N-1, in pid order
                    assert sorted(set(labels)) == list(range(cfg.ids // 2))
                    assert [sorted(set(pids)).index(p) for p in pids] == labels
                else:  # test lines carry the person id
                    assert labels == pids
                sets[(part, mod)] = set(pids)
        assert sets[("train", "visible")] == sets[("train", "thermal")]
        assert not sets[("train", "visible")] & sets[("test", "visible")]
        assert sets[("train", "visible")] | sets[("test", "visible")] == set(range(1, cfg.ids + 1))
        assert sorted(sets[("train", "visible")]) == summary["trials"][str(t)]["train_ids"]
        splits.append(frozenset(sets[("train", "visible")]))
    assert len(set(splits)) > 1, "trials must differ"


# --------------------------------------------------------------------------- benchmark sanity


def _load(paths, size=(16, 32), grey=False):
    x = []
    for p in paths:
        im = Image.open(p).convert("L" if grey else "RGB").resize(size, Image.Resampling.BILINEAR)
        x.append(np.asarray(im, np.float64).ravel())
    x = np.stack(x)
    x -= x.mean(1, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)


def _rank1(q, qid, g, gid) -> float:
    """Brute force: the id of the most cosine-similar gallery image is the query's id."""
    hits = 0
    for i in range(len(q)):
        best, best_s = -1, -np.inf
        for j in range(len(g)):
            s = float(q[i] @ g[j])
            if s > best_s:
                best, best_s = j, s
        hits += gid[best] == qid[i]
    return hits / len(q)


def _split_by_cams(root, cams):
    paths = sorted(p for c in cams for p in (root / f"cam{c}").rglob("*.jpg"))
    return paths, np.array([int(p.parent.name) for p in paths])


def test_raw_pixels_do_not_match_across_modalities_but_do_within(sysu):
    root, cfg, _ = sysu
    tq, tid = _split_by_cams(root, (3,))
    tg, tgid = _split_by_cams(root, (6,))
    vq, vid = _split_by_cams(root, (1, 2))
    vg, vgid = _split_by_cams(root, (4, 5))
    chance = 1.0 / cfg.ids
    # thermal query -> visible gallery, in greyscale (the fairest raw-pixel comparison)
    cross = _rank1(_load(tq + tg, grey=True), np.r_[tid, tgid], _load(vq + vg, grey=True), np.r_[vid, vgid])
    vv = _rank1(_load(vq), vid, _load(vg), vgid)
    tt = _rank1(_load(tq), tid, _load(tg), tgid)
    print(f"raw-pixel R1: T->V {cross:.3f}  V->V {vv:.3f}  T->T {tt:.3f}  chance {chance:.3f}")
    assert cross < 3 * chance
    assert vv > 2 * cross and tt > 1.5 * cross


# --------------------------------------------------------------------------- CLI


def test_cli_synth_refuses_non_empty_and_preview_writes_png(tmp_path):
    from typer.testing import CliRunner

    from cmemd.cli import app

    runner = CliRunner()
    out = tmp_path / "rg"
    res = runner.invoke(app, ["data", "synth", "--layout", "regdb", "--out", str(out), "--ids", "4", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "wrote 80 images" in res.output
    res = runner.invoke(app, ["data", "synth", "--layout", "regdb", "--out", str(out), "--ids", "4"])
    assert res.exit_code == 2 and "--force" in res.output
    png = tmp_path / "grid.png"
    res = runner.invoke(app, ["data", "preview", str(out), "--out", str(png), "--ids", "3"])
    assert res.exit_code == 0, res.output
    im = Image.open(png)
    assert im.width == 34 + 8 * (64 + 2) and im.height == 14 + 3 * (128 + 2)  # 4 V/T pairs x 3 ids


def test_preview_of_sysu_layout(sysu, tmp_path):
    from cmemd.benchmarks.stats import preview_grid

    root, _, _ = sysu
    im = Image.open(preview_grid(root, tmp_path / "p.png", ids=4, per_camera=1))
    assert im.width == 34 + 6 * (64 + 2) and im.height == 14 + 4 * (128 + 2)


# --------------------------------------------------------------------------- the real readers on generated data


def test_sysu_reader_counts_equal_generator_summary(sysu):
    from cmemd.benchmarks.sysu import gallery
    from cmemd.data.sysu import SYSUMM01

    root, cfg, summary = sysu
    ds = SYSUMM01(root)
    assert {s: sorted(v) for s, v in ds.split_ids.items()} == {s: sorted(v) for s, v in summary["ids"].items()}
    train = ds.train()
    for c in range(1, 7):
        expected = summary["images"]["train"][f"cam{c}"] + summary["images"]["val"][f"cam{c}"]
        assert sum(r.camid == c for r in train) == expected
    assert len({r.pid for r in train}) == len(summary["ids"]["train"]) + len(summary["ids"]["val"])
    test = summary["images"]["test"]
    assert len(ds.thermal()) == test["cam3"] + test["cam6"]
    assert len(ds.visible()) == sum(test[f"cam{c}"] for c in VISIBLE_CAMS)
    assert len(ds.visible(cams=(1, 2))) == test["cam1"] + test["cam2"]
    # single-shot: one image per (test id, gallery camera) present; multi-shot: min(10, n) each
    present = {(r.pid, r.camid) for r in ds.visible()}
    assert len(gallery(ds, "all", 1, 0)) == len(present)
    assert len(gallery(ds, "indoor", 1, 5)) == len({p for p in present if p[1] in (1, 2)})


def test_sysu_official_draw_on_generated_mat(sysu):
    """The generated rand_perm_cam.mat drives the 'official' draw: row t, first column (single-shot)."""
    from cmemd.benchmarks.sysu import gallery, load_rand_perm
    from cmemd.data.sysu import SYSUMM01

    root, cfg, summary = sysu
    ds = SYSUMM01(root)
    rp = load_rand_perm(root / "exp" / "rand_perm_cam.mat")
    for trial in (0, 7):
        g = gallery(ds, "all", 1, trial, method="official", rand_perm=rp)
        for r in g:
            pid, cam = int(Path(r.path).parent.name), r.camid
            assert int(Path(r.path).stem) == rp.perm[cam - 1][pid - 1][trial, 0]
        assert len(g) == len({(r.pid, r.camid) for r in ds.visible()})


def test_regdb_reader_on_generated_trials(regdb):
    from cmemd.data.regdb import RegDB

    root, cfg, summary = regdb
    ds = RegDB(root)
    for t in range(1, 11):
        train = ds.train(t)
        vis, th = ds.test(t)
        info = summary["trials"][str(t)]
        assert len({r.pid for r in train}) == len(info["train_ids"])
        assert len(train) == 20 * len(info["train_ids"]) and len(vis) == len(th) == 10 * len(info["test_ids"])
        assert {r.pid for r in vis} == set(info["test_ids"])


def test_nuisance_sidecar_describes_every_image_and_the_readers_ignore_it(sysu):
    from cmemd.benchmarks.stats import check_dataset
    from cmemd.data.synth import NUISANCE_FILE, VIEWS, read_nuisance

    sysu = sysu[0]
    table = read_nuisance(sysu)
    images = {p.relative_to(sysu).as_posix() for p in sysu.glob("cam*/*/*.jpg")}
    assert set(table) == images  # one row per written image, nothing else
    for path, row in table.items():
        cam, pid = path.split("/")[:2]
        assert row["cam"] == int(cam[3:]) and row["pid"] == int(pid)
        assert row["view"] in VIEWS and 0 <= row["phase"] < 2 * np.pi and 0.5 < row["scale"] < 1.2
        assert row["occlusion"] in ("", "bottom", "left", "right")
    assert check_dataset(sysu, decode=False) == []  # the sidecar sits outside the real layout
    assert (sysu / NUISANCE_FILE).is_file() and read_nuisance(sysu / "exp") is None


def test_nuisance_is_the_rendered_shot(tmp_path):
    """The sidecar re-draws each image's shot from its seed; rendering that shot gives the written image."""
    from cmemd.data import synth

    cfg = synth.SynthConfig(ids=3, images_per_camera=(2, 2), height=32, width=16, seed=5, occlusion_rate=0.5)
    synth.generate_sysu(tmp_path / "d", cfg)
    row = synth.read_nuisance(tmp_path / "d")["cam3/0002/0002.jpg"]
    r = synth._rng(cfg.seed, synth._T_SHOT, 2, 3, 2)
    look = synth.camera_look(cfg.seed, 3, True, cfg.camera_gap, cfg.width)
    shot = synth.sample_shot(r, cfg, look.view_bias)
    assert (shot.view, round(shot.phase, 6), round(shot.scale, 6)) == (row["view"], row["phase"], row["scale"])
    scene = synth.make_scene(cfg.seed, 2, True, cfg.height, cfg.width)
    img = synth.render_image(synth.sample_identity(cfg.seed, 2, cfg.palette_size), shot, "thermal", scene, look, cfg, r)
    rendered = np.asarray(img, dtype=float)
    written = np.asarray(Image.open(tmp_path / "d" / "cam3/0002/0002.jpg").convert("RGB"), dtype=float)
    other = np.asarray(Image.open(tmp_path / "d" / "cam3/0002/0001.jpg").convert("RGB"), dtype=float)
    assert rendered.shape == written.shape
    # the same image up to JPEG noise, much closer than the same person's other image
    assert np.abs(written - rendered).mean() < 0.3 * np.abs(other - rendered).mean()


# --------------------------------------------------------------------------- LLCM layout


def test_llcm_layout_cli_deterministic_and_low_light(tmp_path):
    import hashlib

    from typer.testing import CliRunner

    from cmemd.cli import app
    from cmemd.data.llcm import LLCM

    runner = CliRunner()
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = runner.invoke(app, ["data", "synth", "--layout", "llcm", "--out", str(out), "--ids", "6", "--seed", "1",
                                  "--height", "32", "--width", "16", "--images-min", "1", "--images-max", "2"])
        assert res.exit_code == 0, res.output
        outs.append(out)
    summary = json.loads((outs[0] / "synth_summary.json").read_text())
    assert f"wrote {summary['total']} images" in res.output
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.jpg"))
    assert len(files) == summary["total"]
    digest = [hashlib.sha256((o / f).read_bytes()).hexdigest() for o in outs for f in files[:20]]
    assert digest[:20] == digest[20:]  # same seed, same bytes
    ds = LLCM(outs[0])
    assert ds.test_ids == summary["ids"]["test"]
    nir = ds.test("thermal")
    assert Image.open(nir[0].path).mode == "L"  # NIR written single-channel
    # every test id is seen by two cameras of each modality: every query keeps a match after the removal
    for m in ("visible", "thermal"):
        for pid in ds.test_ids:
            assert len({r.camid for r in ds.test(m) if r.pid == pid}) >= 2
    # preview: a column per camera and sensor (9 VIS + 8 NIR), per_camera images each
    png = tmp_path / "llcm.png"
    res = runner.invoke(app, ["data", "preview", str(outs[0]), "--out", str(png), "--ids", "3", "--per-camera", "1"])
    assert res.exit_code == 0, res.output
    im = Image.open(png)
    assert im.width == 34 + 17 * (64 + 2) and (im.height - 14) % (128 + 2) == 0 and im.height > 14


def test_low_light_is_darker_noisier_and_faded():
    from cmemd.data.synth import low_light

    rng = np.random.default_rng(0)
    img = np.zeros((32, 16, 3), np.uint8)
    img[:, :8] = (220, 40, 40)
    img[:, 8:] = (40, 40, 220)
    out = low_light(img, rng).astype(np.float64)
    assert out.mean() < 0.6 * img.astype(np.float64).mean()  # darker
    spread = lambda a: (a.max(2) - a.min(2)).mean()  # noqa: E731  colourfulness
    assert spread(out) < 0.5 * spread(img.astype(np.float64))  # colour-faded
    assert out[:, :8, 0].std() > 1.0  # flat input, noisy output
