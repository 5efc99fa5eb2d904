"""SYSU-MM01: reader for the released layout and the two gallery-drawing protocols.

Layout (docs/protocols.md)::

    root/cam1 .. cam6/<pid:04d>/<k:04d>.jpg
    root/exp/train_id.txt val_id.txt test_id.txt    (one line of comma-separated ids)

Trials are numbered 0..9. For ``python-random`` the trial is the seed given to Python's
``random`` (what the field's public code does with ``for trial in range(10)``); for
``official`` it is the row of the dataset authors' ``rand_perm_cam.mat``.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cmemd.data.fs import is_symlink_loop, loop_message, missing_or_loop, os_error_message
from cmemd.data.records import ImageRecord
from cmemd.errors import DatasetError

#: The one camera -> modality map of SYSU-MM01.
CAMERA_MODALITY: dict[int, str] = {1: "visible", 2: "visible", 3: "thermal", 4: "visible", 5: "visible", 6: "thermal"}
VISIBLE_CAMS: tuple[int, ...] = (1, 2, 4, 5)
THERMAL_CAMS: tuple[int, ...] = (3, 6)
#: Gallery cameras per search mode; query cameras are the thermal ones in both modes.
GALLERY_CAMS: dict[str, tuple[int, ...]] = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SPLIT_FILES: dict[str, str] = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
GALLERY_METHODS = ("python-random", "official")
NUM_TRIALS = 10


def _refuse_other_layout(root: Path, name: str) -> None:
    from cmemd.data.registry import wrong_layout  # the registry imports this module

    err = wrong_layout(root, name)
    if err is not None:
        raise err


def read_id_file(path: str | Path, missing: str = "SYSU-MM01 ships it in exp/ (copy exp/ from the archive)") -> list[int]:
    """Parse an id file (SYSU ``exp/*_id.txt``, LLCM ``idx/test_id.txt``): one line of comma-separated
    positive integers. ``missing`` says where the file comes from, for the not-found message."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(missing_or_loop(path, f"{path}: split file not found; {missing}", "split file"))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text file ({e.reason} at byte {e.start}); expected one line of "
                           "comma-separated ids, e.g. '1,2,4'") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise DatasetError(
            f"{path}: expected exactly one non-empty line of comma-separated ids (e.g. '1,2,4'), found {len(lines)}"
        )
    ids = []
    for i, token in enumerate(lines[0].split(",")):
        token = token.strip()
        if not (token.isascii() and token.isdigit()) or int(token) <= 0:  # isdigit alone accepts '²'
            raise DatasetError(f"{path}: id #{i + 1} is {token!r}, expected a positive integer (line: {lines[0][:80]!r})")
        ids.append(int(token))
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})
        raise DatasetError(f"{path}: ids listed twice: {dup[:10]}; each id must appear once")
    return ids


def _list_images(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """Sorted image file names in a folder, the names of non-image files (hidden files ignored), and the
    problems of entries that cannot be followed (a symlink loop, no permission), each naming its path.

    Symlinks are followed: an image or folder linked in from elsewhere counts as if it were here."""
    images, others, problems = [], [], []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    is_file = e.is_file()  # follows a symlink; raises on a loop (ELOOP)
                except OSError as err:
                    problems.append(os_error_message(folder / e.name, err, "image"))
                    continue
                (images if e.name.lower().endswith(IMAGE_EXTENSIONS) and is_file else others).append(e.name)
    except OSError as err:
        problems.append(os_error_message(folder, err, "folder"))
    return sorted(images), sorted(others), sorted(problems)


@dataclass
class SYSUMM01:
    """The SYSU-MM01 dataset at ``root``, scanned once at construction.

    Every structural problem (missing camera folder or split file, symlink loop, malformed split line,
    listed id with no images, empty id folder) is collected and raised together as one
    :class:`DatasetError`.
    """

    root: Path
    split_ids: dict[str, list[int]] = field(init=False)
    _files: dict[tuple[int, int], list[str]] = field(init=False, repr=False)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(missing_or_loop(self.root, f"{self.root}: SYSU-MM01 root not found; pass the folder "
                                                          "that holds cam1..cam6 and exp/", "folder"))
        _refuse_other_layout(self.root, "sysu")
        problems: list[str] = []
        for c in CAMERA_MODALITY:
            if not (self.root / f"cam{c}").is_dir():
                cam = self.root / f"cam{c}"
                problems.append(missing_or_loop(cam, f"{cam}: camera folder missing (SYSU-MM01 has cam1..cam6)",
                                                "folder"))
        self.split_ids = {}
        for split, name in SPLIT_FILES.items():
            try:
                self.split_ids[split] = read_id_file(self.root / "exp" / name)
            except DatasetError as e:
                problems.append(str(e))
                self.split_ids[split] = []
        self._files = {}
        listed = sorted({pid for ids in self.split_ids.values() for pid in ids})
        for pid in listed:
            found = 0
            for c in CAMERA_MODALITY:
                folder = self.root / f"cam{c}" / f"{pid:04d}"
                if not folder.is_dir():
                    if is_symlink_loop(folder):
                        problems.append(loop_message(folder, "folder"))
                    continue
                images, others, unreadable = _list_images(folder)
                problems += unreadable
                if others:
                    problems.append(f"{folder}: non-image files {others[:5]}; move them out of the dataset")
                if not images:
                    problems.append(f"{folder}: empty id folder; restore its images or delete the folder")
                    continue
                self._files[(pid, c)] = images
                found += len(images)
            if found == 0:
                problems.append(
                    f"id {pid} is listed in exp/ but has no images in any camera folder "
                    f"(expected cam*/{pid:04d}/*.jpg); restore the images or fix the split file"
                )
        overlap = set(self.split_ids["test"]) & (set(self.split_ids["train"]) | set(self.split_ids["val"]))
        if overlap:
            problems.append(f"{self.root / 'exp'}: ids in both test and train/val: {sorted(overlap)[:10]}")
        if problems:
            raise DatasetError(f"{self.root}: {len(problems)} problem(s) in the SYSU-MM01 layout", problems)

    # ------------------------------------------------------------------ records
    def _records(self, pids: Sequence[int], cams: Sequence[int], label: dict[int, int] | None = None) -> list[ImageRecord]:
        out = []
        for pid in sorted(pids):
            for c in cams:
                for name in self._files.get((pid, c), ()):
                    path = str(self.root / f"cam{c}" / f"{pid:04d}" / name)
                    out.append(ImageRecord(path, label[pid] if label else pid, c, CAMERA_MODALITY[c]))
        return out

    @property
    def train_ids(self) -> list[int]:
        """Training identities: train + val, sorted (the field trains on both)."""
        return sorted(set(self.split_ids["train"]) | set(self.split_ids["val"]))

    @property
    def test_ids(self) -> list[int]:
        return sorted(self.split_ids["test"])

    def train(self, include_val: bool = True) -> list[ImageRecord]:
        """Every image of the training identities, all six cameras, pids relabelled 0..N-1 in id order.

        The field trains on train + val; ``include_val=False`` holds the val ids out (for model
        selection on :meth:`query`/:meth:`gallery_pool` with ``split="val"``).
        """
        ids = self.train_ids if include_val else sorted(self.split_ids["train"])
        label = {pid: i for i, pid in enumerate(ids)}
        return self._records(ids, tuple(CAMERA_MODALITY), label)

    def query(self, split: str = "test") -> list[ImageRecord]:
        """Every thermal image (cam3, cam6) of the split's ids; the same for all-search and indoor-search."""
        return self._records(self._split(split), THERMAL_CAMS)

    def gallery_pool(self, mode: str = "all", split: str = "test") -> list[ImageRecord]:
        """Every visible image of the split's ids in the mode's gallery cameras (sorted by id, camera, file)."""
        return self._records(self._split(split), _gallery_cams(mode))

    def _split(self, split: str) -> list[int]:
        if split not in ("test", "val"):
            raise DatasetError(f"split must be 'test' or 'val', got {split!r}")
        return sorted(self.split_ids[split])

    def gallery(
        self,
        mode: str = "all",
        shots: int = 1,
        trial: int = 0,
        method: str = "python-random",
        rand_perm: "RandPerm | str | Path | None" = None,
    ) -> list[ImageRecord]:
        """The gallery of one trial, drawn from the pool as the chosen method does."""
        pool = self.gallery_pool(mode)
        idx = draw_gallery(
            [r.pid for r in pool], [r.camid for r in pool], [r.path for r in pool],
            mode=mode, shots=shots, trial=trial, method=method, rand_perm=rand_perm,
        )
        return [pool[i] for i in idx]


def _gallery_cams(mode: str) -> tuple[int, ...]:
    try:
        return GALLERY_CAMS[mode]
    except KeyError:
        raise DatasetError(f"search mode must be one of {sorted(GALLERY_CAMS)}, got {mode!r}") from None


# ---------------------------------------------------------------------- official split file

@dataclass(frozen=True)
class RandPerm:
    """The dataset authors' ``rand_perm_cam.mat``: ``perm[cam-1][pid-1]`` is a trials × n array of
    1-based image numbers (n = images of that id in that camera; 0 columns when absent)."""

    path: str
    perm: tuple[tuple[np.ndarray, ...], ...]

    @property
    def num_trials(self) -> int:
        return min((a.shape[0] for cam in self.perm for a in cam if a.size), default=0)

    def numbers(self, cam: int, pid: int, trial: int) -> np.ndarray:
        entries = self.perm[cam - 1]
        if pid - 1 >= len(entries):
            return np.zeros(0, dtype=np.int64)
        a = entries[pid - 1]
        if a.size == 0:
            return np.zeros(0, dtype=np.int64)
        return a[trial]


def load_rand_perm(path: str | Path) -> RandPerm:
    """Read ``rand_perm_cam.mat`` (a 6×1 MATLAB cell of per-id cells), checking its structure."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: rand_perm_cam.mat not found; it ships with the SYSU-MM01 authors' evaluation code "
            "(or use --method python-random)"
        )
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None
    if "rand_perm_cam" not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise DatasetError(f"{path}: variable 'rand_perm_cam' missing (found {keys}); is this the right file?")
    cell = mat["rand_perm_cam"]
    if cell.dtype != object or cell.size != 6:
        raise DatasetError(f"{path}: 'rand_perm_cam' must be a 6x1 cell (one entry per camera), got shape {cell.shape}")
    perm = []
    for c, entry in enumerate(cell.reshape(-1)):
        if entry.dtype != object:
            raise DatasetError(f"{path}: rand_perm_cam{{{c + 1}}} must be a cell of per-id matrices")
        arrays = []
        for a in entry.reshape(-1):
            a = np.asarray(a)
            if a.size and a.ndim != 2:
                raise DatasetError(f"{path}: rand_perm_cam{{{c + 1}}} holds a {a.ndim}-d entry; expected trials x n")
            arrays.append(a.astype(np.int64).reshape(a.shape if a.size else (0, 0)))
        perm.append(tuple(arrays))
    return RandPerm(str(path), tuple(perm))


# ---------------------------------------------------------------------- gallery draws

def draw_gallery(
    pids: Sequence[int],
    cams: Sequence[int],
    paths: Sequence[str],
    *,
    mode: str = "all",
    shots: int = 1,
    trial: int = 0,
    method: str = "python-random",
    rand_perm: RandPerm | str | Path | None = None,
) -> np.ndarray:
    """Indices into a gallery pool (arrays of person ids, cameras, paths) for one trial.

    Walks ids in ascending order and, for each, the mode's cameras in order, as the field's
    code does; the result keeps that order (it decides how ties rank).

    - ``python-random``: ``random.Random(trial)``; per (id, camera) the sorted file list gives
      ``rng.choice(files)`` (single-shot) or ``rng.sample(files, 10)`` (multi-shot). Where a
      folder holds fewer than ``shots`` images all are taken (the field's code would raise).
    - ``official``: row ``trial`` of ``rand_perm_cam.mat``; the first ``shots`` image numbers k
      select the files named ``{k:04d}.*`` of that (camera, id).

    A pool that the official file does not describe (a listed image missing from the pool, or
    pool images of a (camera, id) the file leaves empty) raises :class:`DatasetError`.
    """
    if shots not in (1, 10):
        raise DatasetError(f"shots must be 1 (single-shot) or 10 (multi-shot), got {shots}")
    if method not in GALLERY_METHODS:
        raise DatasetError(f"gallery method must be one of {GALLERY_METHODS}, got {method!r}")
    if not (len(pids) == len(cams) == len(paths)):
        raise DatasetError(f"gallery pool arrays differ in length: pids {len(pids)}, cams {len(cams)}, paths {len(paths)}")
    gallery_cams = _gallery_cams(mode)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (p, c) in enumerate(zip(pids, cams)):
        groups.setdefault((int(p), int(c)), []).append(i)
    walk = [(p, c) for p in sorted({int(p) for p in pids}) for c in gallery_cams if (p, c) in groups]

    chosen: list[int] = []
    if method == "python-random":
        if not 0 <= trial:
            raise DatasetError(f"trial must be >= 0 (the seed), got {trial}")
        rng = random.Random(trial)
        for key in walk:
            members = sorted(groups[key], key=lambda i: str(paths[i]))
            if shots == 1:
                chosen.append(rng.choice(members))
            else:
                chosen.extend(rng.sample(members, min(shots, len(members))))
        return np.asarray(chosen, dtype=np.int64)

    if rand_perm is None:
        raise DatasetError("method 'official' needs the path of rand_perm_cam.mat (--rand-perm PATH)")
    rp = rand_perm if isinstance(rand_perm, RandPerm) else load_rand_perm(rand_perm)
    if not 0 <= trial < rp.num_trials:
        raise DatasetError(f"{rp.path}: trial must be in 0..{rp.num_trials - 1}, got {trial}")
    problems = []
    for pid, cam in walk:
        by_number = {}
        for i in groups[(pid, cam)]:
            stem = Path(str(paths[i])).stem
            if stem.isdigit():
                by_number[int(stem)] = i
        numbers = rp.numbers(cam, pid, trial)
        if numbers.size == 0:
            problems.append(f"cam{cam}/{pid:04d}: the pool has images but {rp.path} lists none for this camera and id")
            continue
        for k in numbers[:shots]:
            if int(k) not in by_number:
                problems.append(f"{rp.path} selects cam{cam}/{pid:04d}/{int(k):04d}.jpg, which is not in the gallery pool")
            else:
                chosen.append(by_number[int(k)])
    if problems:
        raise DatasetError(f"{rp.path} does not match this gallery pool (trial {trial})", problems)
    return np.asarray(chosen, dtype=np.int64)


# ---------------------------------------------------------------------- registry entry (cmemd.data.registry)

LAYOUT = "cam1..cam6/<id>/<k>.jpg and exp/{train,val,test}_id.txt"
_MODALITY_TEXT = {"visible": "RGB", "thermal": "IR"}


def _detect(root: Path) -> bool:
    return any((root / f"cam{c}").is_dir() for c in CAMERA_MODALITY) or (root / "exp").is_dir()


def _stats(root: str | Path) -> tuple[dict[str, int], dict[str, list[ImageRecord]]]:
    ds = SYSUMM01(root)
    splits = {
        "train (train+val)": ds.train(),
        "query (test, cam3+cam6)": ds.query(),
        "gallery pool all-search": ds.gallery_pool("all"),
        "gallery pool indoor-search": ds.gallery_pool("indoor"),
    }
    return {f"{k}_ids": len(v) for k, v in ds.split_ids.items()}, splits


def _check(root: str | Path) -> tuple[list[str], list[ImageRecord]]:
    try:
        ds = SYSUMM01(root)
    except DatasetError as e:
        return e.problems, []
    return [], ds.train() + ds.query() + ds.gallery_pool("all")


def _train_records(root: str | Path, *, trial: int | None = None, hold_out_val: bool = False) -> list[ImageRecord]:
    return SYSUMM01(root).train(include_val=not hold_out_val)


def _test_sets(root: str | Path, *, trial: int | None = None) -> dict[str, list[ImageRecord]]:
    """Every thermal test image (the queries) and the whole all-search pool (each trial draws its gallery)."""
    ds = SYSUMM01(root)
    return {"query": ds.query(), "gallery_pool": ds.gallery_pool("all")}


def _val_sets(root: str | Path) -> dict[str, list[ImageRecord]]:
    ds = SYSUMM01(root)
    return {"query": ds.query("val"), "gallery_pool": ds.gallery_pool("all", "val")}


def _fset(feats: np.ndarray, recs: Sequence[ImageRecord]):
    from cmemd.evaluation.features import FeatureSet

    return FeatureSet(feats, np.array([r.pid for r in recs], np.int64), np.array([r.camid for r in recs], np.int64),
                      np.array([r.path for r in recs], dtype=str))


def _evaluate(sets, featurize, *, modes=("all", "indoor"), shots: int = 1, method: str = "python-random",
              rand_perm=None, trials=10, trial=None, feature_name=None, rerank=None, return_features: bool = False):
    """Every search mode over ``trials`` galleries drawn from the pool; with ``rerank`` (a ReRanking) each mode's
    plain result is followed by its re-ranked one. Without ``return_features`` only the
    pool images some trial of some mode draws are featurised (the draws need no features; a single-shot
    evaluation then encodes about 40% of the SYSU-MM01 pool); rows no trial reads stay zero."""
    from cmemd.data.spec import EvalOutput
    from cmemd.evaluation import evaluate_sysu, sysu_gallery_draws

    query, pool = sets["query"], sets["gallery_pool"]
    ids, cams, paths = [r.pid for r in pool], [r.camid for r in pool], [r.path for r in pool]
    qf = featurize(query, "query")
    if return_features:  # reports and `cmemd extract` want every pool image
        pf = featurize(pool, "gallery pool")
    else:
        used = np.unique(np.concatenate([
            idx for mode in modes for idx in sysu_gallery_draws(
                ids, cams, paths, mode=mode, shots=shots, method=method, trials=trials, rand_perm=rand_perm)]))
        part = featurize([pool[i] for i in used], "gallery (drawn images)")
        pf = np.zeros((len(pool), part.shape[1]), dtype=part.dtype)
        pf[used] = part
    results = {}
    for mode in modes:
        name = f"sysu {mode}-search {'single' if shots == 1 else 'multi'}-shot"
        for rr in (None, rerank) if rerank else (None,):  # eval.rerank: the plain table, then the re-ranked one
            results[f"{name}, {rr.label()}" if rr else name] = evaluate_sysu(
                qf, [r.pid for r in query], [r.camid for r in query], pf, ids, cams, paths, mode=mode, shots=shots,
                method=method, trials=trials, rand_perm=rand_perm, feature_name=feature_name, rerank=rr)
    report = None
    if return_features:
        report = {"query": _fset(qf, query), "gallery": _fset(pf, pool), "removal": "sysu-same-location",
                  "query_modality": "thermal", "gallery_modality": "visible"}
    return EvalOutput(results, report)


def _evaluate_features(query, gallery, *, mode: str = "all", shots: int = 1, method: str = "python-random",
                       rand_perm=None, trials=10, feature_name=None, rerank=None, **_unused):
    """``cmemd eval-features``: QUERY = the thermal queries, GALLERY = the whole visible pool."""
    from cmemd.evaluation import evaluate_sysu

    return evaluate_sysu(query.feats, query.pids, query.cams, gallery.feats, gallery.pids, gallery.cams, gallery.paths,
                         mode=mode, shots=shots, method=method, trials=trials, rand_perm=rand_perm,
                         feature_name=feature_name, rerank=rerank)


def _preview(root: str | Path, ids: int, per_camera: int):
    """Rows: ids seen by most cameras (4 of 6 where possible); columns: ``per_camera`` images of cam1..cam6."""
    from cmemd.data.preview import images_in, pick_evenly

    root = Path(root)
    headers = [f"c{c} {_MODALITY_TEXT[CAMERA_MODALITY[c]]}" for c in CAMERA_MODALITY for _ in range(per_camera)]
    all_ids = sorted({p.name for c in CAMERA_MODALITY if (root / f"cam{c}").is_dir()
                      for p in (root / f"cam{c}").iterdir() if p.is_dir()})
    full = [i for i in all_ids if sum((root / f"cam{c}" / i).is_dir() for c in CAMERA_MODALITY) >= 4]
    rows = []
    for pid in pick_evenly(full or all_ids, ids):
        cells: list = []
        for c in CAMERA_MODALITY:
            cells += images_in(root / f"cam{c}" / pid, per_camera)
        rows.append((pid, cells))
    return headers, rows


def _spec():
    from cmemd.data.spec import DatasetSpec
    from cmemd.data.synth import generate_sysu

    return DatasetSpec(
        name="sysu", title="SYSU-MM01", cameras={"visible": VISIBLE_CAMS, "thermal": THERMAL_CAMS}, on_disk=LAYOUT,
        detect=_detect, stats=_stats, check=_check, train_records=_train_records, test_sets=_test_sets,
        evaluate=_evaluate, evaluate_features=_evaluate_features, preview=_preview, val_sets=_val_sets,
        synthesize=generate_sysu, synth_defaults={"ids": 300, "images_per_camera": (10, 20)},
        eval_options=("modes", "shots", "method", "rand_perm", "trials"),
        val_options={"modes": ["all"], "shots": 1, "method": "python-random", "rand_perm": None, "trials": [0]},
    )


SPEC = _spec()
