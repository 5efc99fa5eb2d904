"""LLCM (low-light cross-modality, CVPR 2023): reader for the released layout and the per-trial draws.

Layout (docs/protocols.md)::

    root/idx/train_vis.txt  train_nir.txt       lines "<path relative to root> <label>", labels 0..N-1
    root/idx/test_id.txt                        one line of comma-separated test ids
    root/test_vis/cam1 .. cam9/<pid:04d>/*.jpg
    root/test_nir/cam1 cam2 cam4 .. cam9/<pid:04d>/*.jpg   (the authors' code lists no NIR cam3)

Nine cameras, each with an RGB and a near-infrared sensor under one number. Ids and cameras of the
test images come from the folder structure (``test_*/cam<c>/<pid>``), never from splitting the path
on ``"cam"`` (the authors' code does that and breaks when the root's path contains "cam"); the
camera of a training image is the ``cam<c>`` folder in its listed path. NIR images may be
single-channel; :func:`cmemd.data.images.load_image` converts them.

Evaluation (``cmemd.evaluation.protocols.evaluate_llcm``): the queries are every test image of one
modality; each trial t = 0..9 seeds Python's ``random`` with t and draws one image per (id, camera)
of the other modality (ids ascending, cameras ascending, files sorted): :func:`draw_one_per_camera`.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cmemd.data.fs import is_symlink_loop, loop_message, missing_or_loop
from cmemd.data.records import ImageRecord, path_label_lines
from cmemd.data.sysu import _list_images, _refuse_other_layout, read_id_file
from cmemd.errors import DatasetError

#: Cameras per modality: the visible sensors of cam1..cam9 and the NIR sensors the authors' code reads.
MODALITY_CAMS: dict[str, tuple[int, ...]] = {"visible": (1, 2, 3, 4, 5, 6, 7, 8, 9), "thermal": (1, 2, 4, 5, 6, 7, 8, 9)}
#: Test folders and training lists per modality ("thermal" is LLCM's near-infrared).
TEST_FOLDER: dict[str, str] = {"visible": "test_vis", "thermal": "test_nir"}
TRAIN_LIST: dict[str, str] = {"visible": "train_vis.txt", "thermal": "train_nir.txt"}
TEST_ID_FILE = "test_id.txt"
NUM_TRIALS = 10
#: Evaluation directions (cmemd.evaluation.protocols.evaluate_llcm): t2v IR->VIS, v2t VIS->IR, and the authors'
#: transposed VIS->IR (sampled NIR images as queries against every VIS image).
DIRECTIONS = ("t2v", "v2t", "v2t-authors")
LAYOUT = ("idx/train_vis.txt, idx/train_nir.txt, idx/test_id.txt, test_vis/cam1..cam9/<id>/, "
          "test_nir/cam{1,2,4..9}/<id>/")

_CAM_DIR = re.compile(r"^cam(\d+)$", re.IGNORECASE)


def looks_like_llcm(root: str | Path) -> bool:
    """True when ``root`` has LLCM's own folders (test_vis/, test_nir/ or idx/train_vis.txt)."""
    root = Path(root)
    return (root / "test_vis").is_dir() or (root / "test_nir").is_dir() or (root / "idx" / "train_vis.txt").is_file()


def camera_of(rel_path: str) -> int | None:
    """The camera number of a listed path: its ``cam<c>`` folder (the last one, so that a root or
    prefix containing "cam" does not matter); None when the path has no such folder."""
    for part in reversed(Path(rel_path.replace("\\", "/")).parts[:-1]):
        m = _CAM_DIR.match(part)
        if m:
            return int(m.group(1))
    return None


def read_train_list(path: str | Path, root: str | Path, modality: str, *, check_exists: bool = True) -> list[ImageRecord]:
    """Parse ``idx/train_vis.txt`` / ``idx/train_nir.txt``; every malformed line is reported at once."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DatasetError(missing_or_loop(path, f"{path}: training list not found; LLCM ships "
                                                 f"idx/{TRAIN_LIST[modality]} ('<relative path> <label>' per line)",
                                           "training list"))
    records, problems = [], []
    for where, rel, label, problem in path_label_lines(path):
        if problem:
            problems.append(problem)
            continue
        cam = camera_of(rel)
        if cam is None:
            problems.append(f"{where}: path {rel!r} has no cam<c> folder, so its camera is unknown "
                            "(LLCM lists paths like <split>/cam<c>/<id>/<file>.jpg)")
            continue
        full = root / rel
        if check_exists and not full.is_file():
            problems.append(f"{where}: " + missing_or_loop(full, f"image {full} does not exist", "image"))
            continue
        records.append(ImageRecord(str(full), label, cam, modality))
    if problems:
        raise DatasetError(f"{path}: {len(problems)} malformed line(s)", problems)
    if not records:
        raise DatasetError(f"{path}: no image lines; expected '<relative path> <label>' per line")
    return records


def train_records(root: str | Path) -> list[ImageRecord]:
    """Visible then NIR training records of ``idx/train_vis.txt`` and ``idx/train_nir.txt``, labels checked
    contiguous 0..N-1 and present in both modalities; every problem of both lists at once."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(missing_or_loop(root, f"{root}: LLCM root not found; pass the folder that holds idx/, "
                                                 "test_vis/, test_nir/", "folder"))
    _refuse_other_layout(root, "llcm")
    records, problems = [], []
    for m in ("visible", "thermal"):
        try:
            records += read_train_list(root / "idx" / TRAIN_LIST[m], root, m)
        except DatasetError as e:
            problems += e.problems
    if problems:
        raise DatasetError(f"{root / 'idx'}: {len(problems)} problem(s) in the LLCM training lists", problems)
    labels = sorted({r.pid for r in records})
    if labels != list(range(len(labels))):
        gaps = sorted(set(range(labels[-1] + 1)) - set(labels))[:10]
        raise DatasetError(f"{root / 'idx'}: training labels are not contiguous 0..{len(labels) - 1} "
                           f"(missing {gaps}); relabel train_vis.txt / train_nir.txt")
    per_modality = [{r.pid for r in records if r.modality == m} for m in ("visible", "thermal")]
    if per_modality[0] != per_modality[1]:
        diff = sorted(per_modality[0] ^ per_modality[1])[:10]
        raise DatasetError(f"{root / 'idx'}: labels {diff} appear in only one of train_vis.txt / train_nir.txt")
    return records


@dataclass
class LLCM:
    """The LLCM dataset at ``root``; the test folders are scanned once at construction.

    Every structural problem (missing test folder or id file, malformed id line, listed id
    without images, empty or polluted id folder) is collected and raised together as one
    :class:`DatasetError`. The training lists are read by :meth:`train`.
    """

    root: Path
    test_ids: list[int] = field(init=False)
    _files: dict[tuple[str, int, int], list[str]] = field(init=False, repr=False)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(missing_or_loop(self.root, f"{self.root}: LLCM root not found; pass the folder that "
                                                          "holds idx/, test_vis/, test_nir/", "folder"))
        _refuse_other_layout(self.root, "llcm")
        problems: list[str] = []
        for m, folder in TEST_FOLDER.items():
            for c in MODALITY_CAMS[m]:
                if not (self.root / folder / f"cam{c}").is_dir():
                    problems.append(missing_or_loop(
                        self.root / folder / f"cam{c}", f"{self.root / folder / f'cam{c}'}: camera folder missing "
                        f"(LLCM has {folder}/cam{{{','.join(map(str, MODALITY_CAMS[m]))}}})", "folder"))
        try:
            self.test_ids = sorted(read_id_file(self.root / "idx" / TEST_ID_FILE,
                                                missing=f"LLCM ships it as idx/{TEST_ID_FILE}"))
        except DatasetError as e:
            problems += e.problems
            self.test_ids = []
        self._files = {}
        for pid in self.test_ids:
            found = 0
            for m, folder in TEST_FOLDER.items():
                for c in MODALITY_CAMS[m]:
                    d = self.root / folder / f"cam{c}" / f"{pid:04d}"
                    if not d.is_dir():
                        if is_symlink_loop(d):
                            problems.append(loop_message(d, "folder"))
                        continue
                    images, others, unreadable = _list_images(d)
                    problems += unreadable
                    if others:
                        problems.append(f"{d}: non-image files {others[:5]}; move them out of the dataset")
                    if not images:
                        problems.append(f"{d}: empty id folder; restore its images or delete the folder")
                        continue
                    self._files[(m, pid, c)] = images
                    found += len(images)
            if found == 0:
                problems.append(f"test id {pid} is listed in idx/{TEST_ID_FILE} but has no images under "
                                f"test_vis/cam*/{pid:04d}/ or test_nir/cam*/{pid:04d}/; restore them or fix the id file")
        if problems:
            raise DatasetError(f"{self.root}: {len(problems)} problem(s) in the LLCM layout", problems)

    def train(self) -> list[ImageRecord]:
        """Visible then NIR training records with the listed labels (checked contiguous 0..N-1, both modalities)."""
        return train_records(self.root)

    def test(self, modality: str) -> list[ImageRecord]:
        """Every test image of one modality, ids ascending, then cameras, then sorted file names
        (the order the authors' code lists them in); pids are the dataset's ids."""
        if modality not in TEST_FOLDER:
            raise DatasetError(f"modality must be 'visible' or 'thermal' (NIR), got {modality!r}")
        out = []
        for pid in self.test_ids:
            for c in MODALITY_CAMS[modality]:
                for name in self._files.get((modality, pid, c), ()):
                    out.append(ImageRecord(str(self.root / TEST_FOLDER[modality] / f"cam{c}" / f"{pid:04d}" / name),
                                           pid, c, modality))
        return out


def draw_one_per_camera(pids: Sequence[int], cams: Sequence[int], paths: Sequence[str], *, trial: int) -> np.ndarray:
    """Indices of one random image per (id, camera) for trial ``trial``, in draw order.

    As the authors' ``process_gallery_llcm``: Python's ``random`` seeded with ``trial``; ids in
    ascending order, for each id its cameras in ascending order, and ``random.choice`` over that
    (id, camera)'s files sorted by path. Only (id, camera) pairs with images take a draw.
    """
    if not (len(pids) == len(cams) == len(paths)):
        raise DatasetError(f"pool arrays differ in length: pids {len(pids)}, cams {len(cams)}, paths {len(paths)}")
    if int(trial) < 0:
        raise DatasetError(f"trial must be >= 0 (the seed), got {trial}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (p, c) in enumerate(zip(pids, cams)):
        groups.setdefault((int(p), int(c)), []).append(i)
    rng = random.Random(int(trial))
    chosen = [rng.choice(sorted(groups[key], key=lambda i: str(paths[i]))) for key in sorted(groups)]
    return np.asarray(chosen, dtype=np.int64)


# ---------------------------------------------------------------------- registry entry (cmemd.data.registry)

_MODALITY_TEXT = {"visible": "VIS", "thermal": "NIR"}


def _stats(root: str | Path):
    ds = LLCM(root)
    train = train_records(root)
    splits = {"train (idx lists)": train, "test visible": ds.test("visible"), "test NIR": ds.test("thermal")}
    return {"train_ids": len({r.pid for r in train}), "test_ids": len(ds.test_ids)}, splits


def _check(root: str | Path) -> tuple[list[str], list[ImageRecord]]:
    """Problems of the test folders and of both training lists, all at once."""
    problems: list[str] = []
    records: list[ImageRecord] = []
    try:
        records += train_records(root)
    except DatasetError as e:
        problems += e.problems
    try:
        ds = LLCM(root)
        records += ds.test("visible") + ds.test("thermal")
    except DatasetError as e:
        problems += e.problems
    return problems, records


def _train_records(root: str | Path, *, trial: int | None = None, hold_out_val: bool = False) -> list[ImageRecord]:
    if hold_out_val:
        raise DatasetError("LLCM has no validation split (train ids and test ids only); select nothing "
                           "(run.selection=none: the last epoch is reported)")
    return train_records(root)


def _test_sets(root: str | Path, *, trial: int | None = None) -> dict[str, list[ImageRecord]]:
    ds = LLCM(root)
    return {"visible": ds.test("visible"), "thermal": ds.test("thermal")}


def _no_rerank(rerank) -> None:
    if rerank:
        from cmemd.errors import EvaluationError

        raise EvaluationError("k-reciprocal re-ranking is not implemented for the LLCM protocol yet; evaluate "
                              "without eval.rerank / --rerank")


def _evaluate(sets, featurize, *, directions=("t2v", "v2t"), trials=NUM_TRIALS, trial=None, feature_name=None,
              rerank=None, return_features: bool = False):
    """Every direction in ``directions`` over ``trials`` samples, from one featurisation of each test set."""
    _no_rerank(rerank)
    from cmemd.data.spec import EvalOutput
    from cmemd.data.sysu import _fset
    from cmemd.evaluation import evaluate_llcm

    vis, th = sets["visible"], sets["thermal"]
    vf, tf = featurize(vis, "visible"), featurize(th, "NIR")
    res = evaluate_llcm(vf, [r.pid for r in vis], [r.camid for r in vis], [r.path for r in vis],
                        tf, [r.pid for r in th], [r.camid for r in th], [r.path for r in th],
                        directions=list(directions), trials=trials, feature_name=feature_name)
    results = {f"llcm {d}": r for d, r in res.items()}
    report = None
    if return_features:
        report = {"query": _fset(tf, th), "gallery": _fset(vf, vis), "removal": "same-pid-same-cam",
                  "query_modality": "thermal", "gallery_modality": "visible"}
    return EvalOutput(results, report)


def _evaluate_features(query, gallery, *, direction: str = "t2v", trials=NUM_TRIALS, feature_name=None, rerank=None,
                       **_unused):
    """``cmemd eval-features``: for t2v QUERY holds every NIR test image and GALLERY every VIS one (each trial
    samples it); for v2t and v2t-authors QUERY holds the VIS images and GALLERY the NIR ones."""
    from cmemd.evaluation import evaluate_llcm

    _no_rerank(rerank)
    vis, th = (gallery, query) if direction == "t2v" else (query, gallery)
    return evaluate_llcm(vis.feats, vis.pids, vis.cams, vis.paths, th.feats, th.pids, th.cams, th.paths,
                         directions=[direction], trials=trials, feature_name=feature_name)[direction]


def _preview(root: str | Path, ids: int, per_camera: int):
    """Rows: test ids seen by most cameras; columns: cam1..cam9, VIS then NIR for each."""
    from cmemd.data.preview import images_in, pick_evenly

    root = Path(root)
    columns = [(c, m) for c in MODALITY_CAMS["visible"] for m in ("visible", "thermal") if c in MODALITY_CAMS[m]]
    headers = [f"c{c} {_MODALITY_TEXT[m]}" for c, m in columns for _ in range(per_camera)]

    def folder(c, m, pid):
        return root / TEST_FOLDER[m] / f"cam{c}" / pid

    all_ids = sorted({p.name for c, m in columns if (root / TEST_FOLDER[m] / f"cam{c}").is_dir()
                      for p in (root / TEST_FOLDER[m] / f"cam{c}").iterdir() if p.is_dir()})
    if not all_ids:
        raise DatasetError(f"{root}: no id folders under test_vis/cam*/ or test_nir/cam*/; is this an LLCM root?")
    seen = {pid: sum(folder(c, m, pid).is_dir() for c, m in columns) for pid in all_ids}
    most = max(seen.values())
    rows = []
    for pid in pick_evenly([p for p in all_ids if seen[p] >= min(most, len(columns) // 2)], ids):
        cells: list = []
        for c, m in columns:
            cells += images_in(folder(c, m, pid), per_camera)
        rows.append((pid, cells))
    return headers, rows


def _spec():
    from cmemd.data.spec import DatasetSpec
    from cmemd.data.synth import generate_llcm

    return DatasetSpec(
        name="llcm", title="LLCM", cameras=MODALITY_CAMS, on_disk=LAYOUT, detect=looks_like_llcm, stats=_stats,
        check=_check, train_records=_train_records, test_sets=_test_sets, evaluate=_evaluate,
        evaluate_features=_evaluate_features, preview=_preview, synthesize=generate_llcm,
        synth_defaults={"ids": 60, "images_per_camera": (2, 4)}, eval_options=("directions", "trials"),
    )


SPEC = _spec()
