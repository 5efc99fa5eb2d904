"""Fuzzing the dataset readers, the split-file parsers and the config loader.

Whatever hypothesis writes (split lines, folder trees, YAML), each reader either loads it, and
then what it returns agrees with a direct reading of the input, or raises the project's own
error (:class:`cmemd.errors.CmemdError`); never an unrelated exception.
"""
from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmemd.config import TrainConfig, load_config
from cmemd.data.regdb import RegDB, read_idx_file
from cmemd.data.fs import read_id_file
from cmemd.data.sysu import SYSUMM01
from cmemd.errors import CmemdError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text with the characters that break parsers: digits of other scripts, superscripts, signs,
# separators, whitespace of every kind, NUL
TRICKY = st.sampled_from(list("0123456789,,  \t-+.x") + ["²", "٣", "۵", "\u00a0", "\u2028", "\x00", "\r", "\n", "1e3", "0x1"])
LINE = st.lists(TRICKY, max_size=25).map("".join)
RAW = st.one_of(
    st.lists(LINE, max_size=4).map("\n".join).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=60),  # not UTF-8 at all
)


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="cmemd-fuzz-"))


@FUZZ
@given(RAW)
def test_read_id_file(raw):
    p = _tmp() / "train_id.txt"
    p.write_bytes(raw)
    try:
        ids = read_id_file(p, "the test")
    except CmemdError:
        return
    # loaded: exactly the comma-separated tokens of the one non-empty line, as positive distinct ints
    lines = [ln.strip() for ln in raw.decode("utf-8").splitlines() if ln.strip()]
    assert len(lines) == 1
    assert ids == [int(t) for t in lines[0].split(",")]
    assert all(i > 0 for i in ids) and len(set(ids)) == len(ids)


IDX_LINE = st.one_of(
    st.builds(lambda folder, pid, name, label, sep: f"{folder}/{pid}/{name}.bmp{sep}{label}",
              st.sampled_from(["Visible", "Thermal", "visible", "..", "Visible/.."]), st.integers(0, 3),
              st.sampled_from(["a", "b", "missing"]), st.one_of(st.integers(-2, 5).map(str), LINE), st.sampled_from([" ", "\t", "  ", ""])),
    LINE,
)


@FUZZ
@given(st.lists(IDX_LINE, max_size=6), st.booleans())
def test_read_idx_file(lines, non_utf8):
    root = _tmp()
    for folder in ("Visible", "Thermal"):
        for pid in range(3):
            (root / folder / str(pid)).mkdir(parents=True)
            for name in ("a", "b"):
                (root / folder / str(pid) / f"{name}.bmp").write_bytes(b"")
    p = root / "idx.txt"
    p.write_bytes("\n".join(lines).encode("utf-8") + (b"\xff\xfe" if non_utf8 else b""))
    try:
        recs = read_idx_file(p, root, "visible")
    except CmemdError:
        return
    assert not non_utf8
    expected = [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
    assert [(r.path, r.pid, r.modality) for r in recs] == [(str(root / a), int(b), "visible") for a, b in expected]
    assert all(Path(r.path).is_file() for r in recs)


SPLIT = st.one_of(st.lists(st.integers(1, 6), max_size=5).map(lambda ids: ",".join(map(str, ids))), LINE)


@FUZZ
@given(
    cams=st.sets(st.integers(1, 6), min_size=4),
    images=st.dictionaries(st.tuples(st.integers(1, 6), st.integers(1, 6)), st.integers(0, 2), max_size=24),
    splits=st.fixed_dictionaries({"train": SPLIT, "val": SPLIT, "test": SPLIT}),
    junk=st.booleans(),
)
def test_sysu_tree(cams, images, splits, junk):
    root = _tmp()
    for c in cams:
        (root / f"cam{c}").mkdir()
    for (c, pid), n in images.items():
        if c not in cams:
            continue
        d = root / f"cam{c}" / f"{pid:04d}"
        d.mkdir()
        for k in range(n):
            (d / f"{k:04d}.jpg").write_bytes(b"")
        if junk:
            (d / "Thumbs.db").write_bytes(b"")
    (root / "exp").mkdir()
    for name, text in splits.items():
        (root / "exp" / f"{name}_id.txt").write_text(text)
    try:
        ds = SYSUMM01(root)
        train = ds.train()
        query, pool = ds.thermal(), ds.visible()
        indoor = ds.visible(cams=(1, 2))
    except CmemdError:
        return
    assert not junk or not images  # stray files are reported, never skipped silently
    # every image of a listed id is read, with contiguous training labels
    train_ids = ds.split_ids["train"] + ds.split_ids["val"]
    n_train = sum(n for (c, pid), n in images.items() if c in cams and pid in train_ids)
    assert len(train) == n_train
    assert sorted({r.pid for r in train}) == list(range(len({r.pid for r in train})))
    assert {r.modality for r in query} <= {"thermal"} and {r.modality for r in pool} <= {"visible"}
    assert {r.path for r in indoor} <= {r.path for r in pool}


REGDB_LINE = st.one_of(
    st.builds(lambda m, pid, k, label: f"{m}/{pid}/img{k}.bmp {label}", st.sampled_from(["Visible", "Thermal"]),
              st.integers(0, 2), st.integers(0, 2), st.integers(0, 3)),
    LINE,
)


@FUZZ
@given(files=st.dictionaries(st.tuples(st.sampled_from(["train", "test"]), st.sampled_from(["visible", "thermal"])),
                             st.lists(REGDB_LINE, max_size=5), max_size=4),
       trial=st.integers(0, 11))
def test_regdb_tree(files, trial):
    root = _tmp()
    for m in ("Visible", "Thermal"):
        for pid in range(2):
            (root / m / str(pid)).mkdir(parents=True)
            for k in range(2):
                (root / m / str(pid) / f"img{k}.bmp").write_bytes(b"")
    (root / "idx").mkdir()
    for (split, mod), lines in files.items():
        (root / "idx" / f"{split}_{mod}_{max(trial, 1)}.txt").write_text("\n".join(lines))
    try:
        ds = RegDB(root)
        train = ds.train(trial)
        vis, th = ds.test(trial)
    except CmemdError:
        return
    assert 1 <= trial <= 10
    assert {r.modality for r in vis} == {"visible"} and {r.modality for r in th} == {"thermal"}
    labels = sorted({r.pid for r in train})
    assert labels == list(range(len(labels)))  # non-contiguous training labels are an error, not a surprise


KEYS = st.sampled_from(["data", "model", "optim", "loss", "eval", "run", "base", "lr", "epochs", "root", "arch",
                        "milestones", "modes", "shots", "dataset", "threads", "amp", "width", "nosuch", "1"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=8), st.sampled_from(["[1, 2", "sysu", "cpu", "[a, b]", "{x: 1}"]))
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


@FUZZ
@given(st.one_of(st.dictionaries(KEYS, YAML_VALUES, max_size=5).map(lambda d: yaml.safe_dump(d).encode()),
                 st.text(max_size=80).map(str.encode), st.binary(max_size=40)),
       st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["optim.lr", "optim.milestones", "eval.modes",
                                                                     "data.trial", "run.threads", "model.arch", "x"]),
                          st.sampled_from(["1", "-1", "[1,", "[a]", "", "null", "0.5", "{a: 1}", "'", "[[1]]"])),
                max_size=2))
def test_load_config(raw, overrides):
    p = _tmp() / "cfg.yaml"
    p.write_bytes(raw)
    try:
        cfg = load_config(p, overrides)
    except CmemdError:
        return
    assert isinstance(cfg, TrainConfig)
    # a loaded config is well-typed where training relies on it
    assert all(isinstance(m, int) for m in cfg.optim.milestones)
    assert all(m in ("all", "indoor") for m in cfg.eval.modes)
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.data.root, str)
