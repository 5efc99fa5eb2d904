"""RegDB: reader for the released layout with its 10 train/test trials.

Layout (docs/protocols.md)::

    root/Visible/<pid>/<name>_v_<n>_<k>.bmp
    root/Thermal/<pid>/<name>_t_<n>_<k>.bmp
    root/idx/{train,test}_{visible,thermal}_{t}.txt     t = 1..10, lines "<relative path> <label>"

Trials are numbered 1..10 as in the idx file names. Evaluate one model per trial: a model
trained on trial t has seen the other trials' test ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmemd.data.fs import is_symlink_loop, loop_message, missing_or_loop
from cmemd.data.records import ImageRecord, path_label_lines
from cmemd.data.sysu import _refuse_other_layout
from cmemd.errors import DatasetError

#: The one camera -> modality map of RegDB (one aligned dual-camera rig).
CAMERA_MODALITY: dict[int, str] = {1: "visible", 2: "thermal"}
MODALITY_CAMERA: dict[str, int] = {m: c for c, m in CAMERA_MODALITY.items()}
MODALITY_FOLDER: dict[str, str] = {"visible": "Visible", "thermal": "Thermal"}
TRIALS: tuple[int, ...] = tuple(range(1, 11))


def idx_path(root: str | Path, split: str, modality: str, trial: int) -> Path:
    """``root/idx/{split}_{modality}_{trial}.txt``."""
    return Path(root) / "idx" / f"{split}_{modality}_{trial}.txt"


def read_idx_file(path: str | Path, root: str | Path, modality: str, *, check_exists: bool = True) -> list[ImageRecord]:
    """Parse one idx file into records; every malformed line is reported at once."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DatasetError(missing_or_loop(path, f"{path}: split file not found; RegDB ships idx/ with 10 trials of "
                                                 "train/test lists", "split file"))
    folder = MODALITY_FOLDER[modality]
    records, problems = [], []
    for where, rel, label, problem in path_label_lines(path):
        if problem:
            problems.append(problem)
            continue
        if not rel.replace("\\", "/").startswith(folder + "/"):
            problems.append(f"{where}: path {rel!r} is not under {folder}/ although the file lists {modality} images")
            continue
        full = root / rel
        if check_exists and not full.is_file():
            problems.append(f"{where}: " + missing_or_loop(full, f"image {full} does not exist", "image"))
            continue
        records.append(ImageRecord(str(full), label, MODALITY_CAMERA[modality], modality))
    if problems:
        raise DatasetError(f"{path}: {len(problems)} malformed line(s)", problems)
    if not records:
        raise DatasetError(f"{path}: no image lines; expected '<relative path> <label>' per line")
    return records


@dataclass
class RegDB:
    """The RegDB dataset at ``root``; records are read per trial from ``idx/``."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(missing_or_loop(self.root, f"{self.root}: RegDB root not found; pass the folder that "
                                                          "holds Visible/, Thermal/, idx/", "folder"))
        _refuse_other_layout(self.root, "regdb")
        absent = [n for n in ("Visible", "Thermal", "idx") if not (self.root / n).is_dir()]
        if absent:
            loops = [loop_message(self.root / n, "folder") for n in absent if is_symlink_loop(self.root / n)]
            raise DatasetError(f"{self.root}: RegDB folders missing: {absent}; expected Visible/, Thermal/ and idx/ "
                               "under the root" + "".join(f"; {x}" for x in loops))

    def _check_trial(self, trial: int) -> None:
        if trial not in TRIALS:
            raise DatasetError(f"RegDB trial must be in 1..10 (the idx file suffix), got {trial}")

    def _read_both(self, split: str, trial: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """(visible, thermal) records of one split of a trial; the problems of both idx files raised together."""
        self._check_trial(trial)
        out, problems = [], []
        for m in ("visible", "thermal"):
            try:
                out.append(read_idx_file(idx_path(self.root, split, m, trial), self.root, m))
            except DatasetError as e:
                problems += e.problems
        if problems:
            raise DatasetError(f"{self.root / 'idx'}: {len(problems)} problem(s) in the trial {trial} {split} lists",
                               problems)
        return out[0], out[1]

    def train(self, trial: int) -> list[ImageRecord]:
        """Visible then thermal training records of a trial, with the idx labels (checked contiguous 0..N-1)."""
        vis, th = self._read_both("train", trial)
        records = vis + th
        labels = sorted({r.pid for r in records})
        if labels != list(range(len(labels))):
            gaps = sorted(set(range(labels[-1] + 1)) - set(labels))[:10]
            raise DatasetError(
                f"{idx_path(self.root, 'train', 'visible', trial).parent}: training labels of trial {trial} are not "
                f"contiguous 0..{len(labels) - 1} (missing {gaps}); relabel the train_*_{trial}.txt files"
            )
        per_modality = [{r.pid for r in records if r.modality == m} for m in ("visible", "thermal")]
        if per_modality[0] != per_modality[1]:
            diff = sorted(per_modality[0] ^ per_modality[1])[:10]
            raise DatasetError(f"trial {trial}: labels {diff} appear in only one of train_visible/train_thermal")
        return records

    def test(self, trial: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """(visible, thermal) test records of a trial; pids are the idx labels."""
        return self._read_both("test", trial)


# ---------------------------------------------------------------------- registry entry (cmemd.data.registry)

LAYOUT = "Visible/<id>/*.bmp, Thermal/<id>/*.bmp and idx/{train,test}_{visible,thermal}_<1..10>.txt"


def _detect(root: Path) -> bool:
    return (root / "Visible").is_dir() or (root / "Thermal").is_dir() or any((root / "idx").glob("t*_visible_*.txt"))


def _stats(root: str | Path):
    ds = RegDB(root)
    vis, th = ds.test(1)
    return {}, {"train (trial 1)": ds.train(1), "test visible (trial 1)": vis, "test thermal (trial 1)": th}


def _check(root: str | Path) -> tuple[list[str], list[ImageRecord]]:
    try:
        ds = RegDB(root)
    except DatasetError as e:
        return e.problems, []
    problems: list[str] = []
    seen: dict[str, ImageRecord] = {}
    for t in TRIALS:
        for split in ("train", "test"):
            try:
                recs = ds.train(t) if split == "train" else [r for part in ds.test(t) for r in part]
            except DatasetError as e:
                problems += e.problems
                continue
            for r in recs:
                seen.setdefault(r.path, r)
    return problems, list(seen.values())


def _train_records(root: str | Path, *, trial: int = 1, hold_out_val: bool = False) -> list[ImageRecord]:
    if hold_out_val:
        raise DatasetError("RegDB has no validation split (train/test per trial); select nothing "
                           "(run.selection=none: the last epoch is reported)")
    return RegDB(root).train(trial)


def _test_sets(root: str | Path, *, trial: int = 1) -> dict[str, list[ImageRecord]]:
    vis, th = RegDB(root).test(trial)
    return {f"visible_trial{trial}": vis, f"thermal_trial{trial}": th}


def _evaluate(sets, featurize, *, trial: int = 1, feature_name=None, rerank=None, return_features: bool = False):
    """Both directions of the trained trial from one similarity matrix; with ``rerank`` (a ReRanking) each
    direction's plain result is followed by its re-ranked one."""
    from cmemd.data.spec import EvalOutput
    from cmemd.data.sysu import _fset
    from cmemd.evaluation import evaluate_regdb_directions

    vis, th = sets[f"visible_trial{trial}"], sets[f"thermal_trial{trial}"]
    vf = featurize(vis, "visible")
    tf = featurize(th, "thermal")
    both = evaluate_regdb_directions(vf, [r.pid for r in vis], tf, [r.pid for r in th], trial=trial,
                                     feature_name=feature_name)
    reranked = evaluate_regdb_directions(vf, [r.pid for r in vis], tf, [r.pid for r in th], trial=trial,
                                         feature_name=feature_name, rerank=rerank) if rerank else {}
    results = {}
    for d, res in both.items():
        results[f"regdb trial {trial} {d}"] = res
        if d in reranked:
            results[f"regdb trial {trial} {d}, {rerank.label()}"] = reranked[d]
    report = None
    if return_features:
        report = {"query": _fset(tf, th), "gallery": _fset(vf, vis), "removal": "none",
                  "query_modality": "thermal", "gallery_modality": "visible"}
    return EvalOutput(results, report)


def _evaluate_features(query, gallery, *, direction: str = "v2t", trial: int = 1, feature_name=None, rerank=None,
                       **_unused):
    """``cmemd eval-features``: QUERY is visible for v2t and thermal for t2v; GALLERY the other modality."""
    from cmemd.evaluation import evaluate_regdb

    vis, th = (query, gallery) if direction == "v2t" else (gallery, query)
    return evaluate_regdb(vis.feats, vis.pids, th.feats, th.pids, direction=direction, trial=trial,
                          feature_name=feature_name, rerank=rerank)


def _preview(root: str | Path, ids: int, per_camera: int):
    """Rows: ids; columns: the first ``2 * per_camera`` visible/thermal pairs (the rig is aligned)."""
    from cmemd.data.preview import images_in, pick_evenly

    root = Path(root)
    k = 2 * per_camera
    headers = [h for j in range(k) for h in (f"V{j + 1}", f"T{j + 1}")]
    folder = root / "Visible"
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing; RegDB keeps its visible images in Visible/<id>/")
    pids = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=lambda s: (len(s), s))
    rows = []
    for pid in pick_evenly(pids, ids):
        vis, thr = images_in(root / "Visible" / pid, k, first=True), images_in(root / "Thermal" / pid, k, first=True)
        rows.append((pid, [c for pair in zip(vis, thr) for c in pair]))
    return headers, rows


def _spec():
    from cmemd.data.spec import DatasetSpec
    from cmemd.data.synth import generate_regdb

    return DatasetSpec(
        name="regdb", title="RegDB", cameras={m: (c,) for c, m in CAMERA_MODALITY.items()}, on_disk=LAYOUT,
        detect=_detect, stats=_stats, check=_check, train_records=_train_records, test_sets=_test_sets,
        evaluate=_evaluate, evaluate_features=_evaluate_features, preview=_preview, training_trials=TRIALS,
        synthesize=generate_regdb, synth_defaults={"ids": 100},
    )


SPEC = _spec()
