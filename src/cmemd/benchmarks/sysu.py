"""SYSU-MM01 as a benchmark: its search modes, gallery draws (python-random and the authors' official file),
protocol, options and registry entry. The reader is :mod:`cmemd.data.sysu`.

Protocol (docs/protocols.md): the queries are every thermal test image (cam3, cam6); each trial draws a
gallery from the pool of visible test images of the mode's cameras (all-search cam1, 2, 4, 5; indoor-search
cam1, 2), one (single-shot) or ten (multi-shot) images per (id, camera). The pool is featurised ONCE; each
trial selects its gallery by indices, and the similarities are computed once against the union of all
trials' galleries, each trial taking its columns in draw order (draw order decides how exact ties rank, as in
the field's code). Removal :data:`SAME_LOCATION`, named ``sysu-same-location`` (a cam3 query drops cam2 gallery
images), CMC ``identity-dedup``.

Trials are numbered 0..9. For ``python-random`` the trial is the seed given to Python's ``random`` (what the
field's public code does with ``for trial in range(10)``); for ``official`` it is the row of the dataset
authors' ``rand_perm_cam.mat``.

Re-ranking (``rerank=``, off by default): k-reciprocal re-ranking of the squared Euclidean distances of the
features the metric ranks (L2-normalised for ``cosine``, raw for ``euclidean``), as the authors' feature-based
code computes them; each trial re-ranks its own gallery (query-query distances computed once); the result's
settings carry ``rerank``. Re-ranking is transductive: never compare a re-ranked number with a plain one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.io
import torch

from cmemd.benchmarks.base import Benchmark, EvalOutput, Featurize, PreviewSheet, thermal_query_report
from cmemd.data.preview import images_in, pick_evenly
from cmemd.data.records import ImageRecord
from cmemd.data.synth import generate_sysu
from cmemd.data.sysu import CAMERA_MODALITY, SYSUMM01, THERMAL_CAMS, VISIBLE_CAMS, looks_like_sysu
from cmemd.errors import DatasetError, EvaluationError
from cmemd.evaluation.features import FeatureSet
from cmemd.evaluation.metrics import (
    DEFAULT_MEMORY_BUDGET,
    METRICS,
    ArrayLike,
    Removal,
    SameLocation,
    check_choice,
    check_feat_pair,
    check_labels,
    check_options,
    resolve_device,
)
from cmemd.evaluation.protocol import Selection, Side, evaluate_selections, trial_list
from cmemd.evaluation.rerank import ReRanking, as_reranking
from cmemd.evaluation.results import ProtocolResult

#: Gallery cameras per search mode; the query cameras are the thermal ones in both modes.
GALLERY_CAMS: dict[str, tuple[int, ...]] = {"all": VISIBLE_CAMS, "indoor": (1, 2)}
MODES = tuple(GALLERY_CAMS)
QUERY_CAMS = THERMAL_CAMS
SHOTS = (1, 10)
GALLERY_METHODS = ("python-random", "official")
NUM_TRIALS = 10
LAYOUT = "cam1..cam6/<id>/<k>.jpg and exp/{train,val,test}_id.txt"
#: The removal rule: cam3 (thermal) and cam2 (visible) watch the same room, so a cam3 query drops every cam2 gallery
#: image, whatever its identity. The one place the cameras are written; results record its name.
SAME_LOCATION = SameLocation("sysu-same-location", ((3, 2),))
#: Rank-1/mAP within and across modalities on the test ids (no gallery draws), what calibrating the synthetic
#: benchmark watches: name -> (query cameras, gallery cameras, removal rule).
MODALITY_PAIRS: dict[str, tuple[tuple[int, ...], tuple[int, ...], Removal]] = {
    "v2v": ((1, 2), (4, 5), "none"),
    "t2t": ((3,), (6,), "none"),
    "t2v": (THERMAL_CAMS, VISIBLE_CAMS, SAME_LOCATION),
}

DrawFn = Callable[..., np.ndarray]


def gallery_cams_of(mode: str) -> tuple[int, ...]:
    """The gallery cameras of a search mode (``all`` or ``indoor``)."""
    try:
        return GALLERY_CAMS[mode]
    except KeyError:
        raise DatasetError(f"search mode must be one of {sorted(GALLERY_CAMS)}, got {mode!r}") from None


# ---------------------------------------------------------------------- official split file


@dataclass(frozen=True)
class RandPerm:
    """The dataset authors' ``rand_perm_cam.mat``: ``perm[cam-1][pid-1]`` is a trials x n array of
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
    """Read ``rand_perm_cam.mat`` (a 6x1 MATLAB cell of per-id cells), checking its structure."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: rand_perm_cam.mat not found; it ships with the SYSU-MM01 authors' evaluation code "
            "(or use method=python-random)"
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
    pids: Sequence[int] | np.ndarray,
    cams: Sequence[int] | np.ndarray,
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
        raise DatasetError(
            f"gallery pool arrays differ in length: pids {len(pids)}, cams {len(cams)}, paths {len(paths)}"
        )
    gallery_cams = gallery_cams_of(mode)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (p, c) in enumerate(zip(pids, cams)):
        groups.setdefault((int(p), int(c)), []).append(i)
    walk = [(p, c) for p in sorted({int(p) for p in pids}) for c in gallery_cams if (p, c) in groups]

    chosen: list[int] = []
    if method == "python-random":
        if not trial >= 0:
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
        raise DatasetError("method 'official' needs the path of rand_perm_cam.mat (rand_perm=PATH)")
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
                problems.append(
                    f"{rp.path} selects cam{cam}/{pid:04d}/{int(k):04d}.jpg, which is not in the gallery pool"
                )
            else:
                chosen.append(by_number[int(k)])
    if problems:
        raise DatasetError(f"{rp.path} does not match this gallery pool (trial {trial})", problems)
    return np.asarray(chosen, dtype=np.int64)


def gallery(
    reader: SYSUMM01,
    mode: str = "all",
    shots: int = 1,
    trial: int = 0,
    method: str = "python-random",
    rand_perm: RandPerm | str | Path | None = None,
) -> list[ImageRecord]:
    """The gallery records of one trial, drawn (:func:`draw_gallery`) from the reader's visible test images of the
    mode's cameras."""
    pool = reader.visible(cams=gallery_cams_of(mode))
    idx = draw_gallery(
        [r.pid for r in pool],
        [r.camid for r in pool],
        [r.path for r in pool],
        mode=mode,
        shots=shots,
        trial=trial,
        method=method,
        rand_perm=rand_perm,
    )
    return [pool[i] for i in idx]


# ---------------------------------------------------------------------- the protocol


def gallery_draws(
    pool_pids: ArrayLike,
    pool_cams: ArrayLike,
    pool_paths: Sequence[str],
    *,
    mode: str = "all",
    shots: int = 1,
    method: str = "python-random",
    trials: int | Sequence[int] = NUM_TRIALS,
    rand_perm: Any = None,
    draw: DrawFn | None = None,
) -> list[np.ndarray]:
    """The pool indices of each trial's gallery, in draw order: what :func:`evaluate_sysu` selects.

    The draws depend on the pool's ids, cameras and paths only, so a caller can featurise just the
    images some trial uses (their union) before evaluating, and pass the draws on (``draws=``).
    """
    if draw is None:
        draw = draw_gallery
        if method == "official" and not isinstance(rand_perm, RandPerm):
            rand_perm = load_rand_perm(rand_perm)  # once, not per trial
    pp = np.asarray(pool_pids).reshape(-1)
    pc = np.asarray(pool_cams).reshape(-1)
    paths = [str(p) for p in pool_paths]
    draws = []
    for t in trial_list(trials):
        idx = np.asarray(
            draw(pp, pc, paths, mode=mode, shots=shots, trial=t, method=method, rand_perm=rand_perm), dtype=np.int64
        )
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= len(pp):
            raise EvaluationError(
                f"trial {t}: the gallery draw returned invalid pool indices (shape {idx.shape}); check the pool arrays"
            )
        draws.append(idx)
    return draws


def _same_location_text() -> str:
    return ", ".join(f"cam{q} query drops cam{g} gallery" for q, g in SAME_LOCATION.pairs)


def _check_cams(cams: np.ndarray, allowed: tuple[int, ...], name: str) -> None:
    bad = sorted({int(c) for c in np.unique(cams)} - set(allowed))
    if bad:
        raise EvaluationError(
            f"{name}: camera numbers {bad} are not SYSU-MM01 {'query' if allowed == QUERY_CAMS else 'gallery'} "
            f"cameras {list(allowed)}; pass the dataset's camera numbers (cam1..cam6, not 0-based indices), "
            f"which the same-location rule ({_same_location_text()}) depends on"
        )


def evaluate_sysu(
    query_feats: ArrayLike,
    query_pids: ArrayLike,
    query_cams: ArrayLike,
    pool_feats: ArrayLike,
    pool_pids: ArrayLike,
    pool_cams: ArrayLike,
    pool_paths: Sequence[str] | np.ndarray,
    *,
    mode: str = "all",
    shots: int = 1,
    method: str = "python-random",
    trials: int | Sequence[int] = NUM_TRIALS,
    rand_perm: Any = None,
    feature_name: str | None = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    draw: DrawFn | None = None,
    draws: Sequence[np.ndarray] | None = None,
    rerank: bool | ReRanking | dict | None = None,
) -> ProtocolResult:
    """SYSU-MM01 evaluation over ``trials`` random galleries drawn from a featurised pool.

    Args:
        query_*: features, ids and cameras (3 or 6) of the thermal queries.
        pool_*: features, ids, cameras (1, 2, 4, 5) and file paths of every visible test image;
            paths are what the gallery draw sorts and (for ``official``) names by.
        mode: ``"all"`` (cams 1, 2, 4, 5) or ``"indoor"`` (cams 1, 2) search.
        shots: 1 (single-shot) or 10 (multi-shot) images per (id, camera).
        method: ``"python-random"`` (trial t seeds Python's random with t) or ``"official"``
            (``rand_perm_cam.mat``; give ``rand_perm`` as its path or the loaded :class:`RandPerm`).
        trials: number of trials (0..n-1) or explicit 0-based trial indices.
        draw: the gallery-draw function (default :func:`draw_gallery`).
        draws: the trials' draws already made by :func:`gallery_draws` with these arguments (not redrawn).
        rerank: ``None`` (default, plain ranking), ``True`` (k-reciprocal, k1=20, k2=6, lambda=0.3)
            or a :class:`~cmemd.evaluation.rerank.ReRanking`: each trial's gallery is re-ranked
            with the queries (see the module docstring).

    Returns a :class:`ProtocolResult`: one result per trial, mean and (population) std.
    """
    check_choice(mode, MODES, "mode")
    if shots not in SHOTS:
        raise EvaluationError(f"shots={shots!r} is unknown; use 1 (single-shot) or 10 (multi-shot)")
    check_choice(method, GALLERY_METHODS, "method")
    check_choice(metric, METRICS, "metric")
    check_options(SAME_LOCATION, "identity-dedup", max_rank)
    trial_ids = trial_list(trials)
    params = as_reranking(rerank)
    if method == "official" and rand_perm is None:
        raise EvaluationError("method='official' needs rand_perm: the path of rand_perm_cam.mat (rand_perm=PATH)")

    qf, pf = check_feat_pair(query_feats, pool_feats, "query_feats", "pool_feats")
    qp = check_labels(query_pids, "query_pids", qf.shape[0], "query_feats")
    qc = check_labels(query_cams, "query_cams", qf.shape[0], "query_feats")
    pp = check_labels(pool_pids, "pool_pids", pf.shape[0], "pool_feats")
    pc = check_labels(pool_cams, "pool_cams", pf.shape[0], "pool_feats")
    paths = [str(p) for p in pool_paths]
    if len(paths) != pf.shape[0]:
        raise EvaluationError(
            f"pool_paths: length {len(paths)} does not match pool_feats ({pf.shape[0]} rows); "
            "pass one path per pool image"
        )
    _check_cams(qc.cpu().numpy(), QUERY_CAMS, "query_cams")
    _check_cams(pc.cpu().numpy(), VISIBLE_CAMS, "pool_cams")

    if draws is None:
        draws = gallery_draws(
            pp.cpu().numpy(),
            pc.cpu().numpy(),
            paths,
            mode=mode,
            shots=shots,
            method=method,
            trials=trial_ids,
            rand_perm=rand_perm,
            draw=draw,
        )
    elif len(draws) != len(trial_ids):
        raise EvaluationError(f"draws: {len(draws)} given for {len(trial_ids)} trials; pass one draw per trial")

    settings = dict(
        title=(
            f"SYSU-MM01 {mode}-search, {'single' if shots == 1 else 'multi'}-shot ({shots}/id/cam), "
            f"gallery draw {method}"
        ),
        mode=mode,
        shots=shots,
        method=method,
        feature_name=feature_name,
        metric=metric,
        removal=SAME_LOCATION.name,
        cmc="identity-dedup",
        rand_perm=str(getattr(rand_perm, "path", rand_perm)) if method == "official" else None,
        rerank=params.to_dict() if params else None,
    )
    dev = resolve_device(device, query_feats, pool_feats)
    # The queries against the union of the galleries, once; each trial takes its columns in draw order.
    union, inverse = np.unique(np.concatenate(draws), return_inverse=True)
    ut = torch.from_numpy(union)
    offsets = np.cumsum([0] + [len(d) for d in draws])
    selections = [Selection(cols=inverse[offsets[i] : offsets[i + 1]]) for i in range(len(draws))]
    results = evaluate_selections(
        Side(qf, qp, qc, "query_feats"),
        Side(pf[ut], pp[ut], pc[ut], "pool_feats"),
        selections,
        removal=SAME_LOCATION,
        cmc="identity-dedup",
        metric=metric,
        max_rank=max_rank,
        chunk_size=chunk_size,
        device=dev,
        memory_budget=memory_budget,
        rerank=params,
    )
    for t, r, d in zip(trial_ids, results, draws):
        r.info.update(protocol="sysu", trial=t, gallery_size=int(len(d)))
    return ProtocolResult("sysu", settings, trial_ids, results)


# ---------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class SYSUOptions:
    """SYSU-MM01's protocol options (``eval.*``).

    modes: search modes to evaluate (``all``, ``indoor``); shots: 1 or 10 images per (id, camera);
    method: the gallery draw (``python-random`` | ``official``); rand_perm: the path of the authors'
    ``rand_perm_cam.mat`` (``official``); trials: a count (trials 0..n-1) or 0-based trial indices.
    """

    modes: list[str] = field(default_factory=lambda: list(MODES))
    shots: int = 1
    method: str = "python-random"
    rand_perm: str | None = None
    trials: int = NUM_TRIALS

    def __post_init__(self) -> None:
        for m in self.modes:
            if m not in MODES:
                raise EvaluationError(f"modes entries must be {' or '.join(repr(x) for x in MODES)}, got {m!r}")
        if self.shots not in SHOTS:
            raise EvaluationError(f"shots must be 1 or 10, got {self.shots}")
        if self.method not in GALLERY_METHODS:
            raise EvaluationError(f"method must be one of {GALLERY_METHODS}, got {self.method!r}")


_MODALITY_TEXT = {"visible": "RGB", "thermal": "IR"}


class SYSU(Benchmark):
    """SYSU-MM01 (cmemd.data.sysu reads it)."""

    name: ClassVar[str] = "sysu"
    title: ClassVar[str] = "SYSU-MM01"
    cameras: ClassVar[Mapping[str, tuple[int, ...]]] = {"visible": VISIBLE_CAMS, "thermal": THERMAL_CAMS}
    on_disk: ClassVar[str] = LAYOUT
    Options: ClassVar[type] = SYSUOptions
    val_options: ClassVar[Mapping[str, Any]] = {
        "modes": ["all"],
        "shots": 1,
        "method": "python-random",
        "rand_perm": None,
        "trials": [0],
    }
    synth_defaults: ClassVar[Mapping[str, Any]] = {"ids": 300, "images_per_camera": (10, 20)}
    has_val: ClassVar[bool] = True
    synthesize = staticmethod(generate_sysu)

    def _reader(self, root: str | Path) -> SYSUMM01:
        self.refuse_other_layout(root)
        return SYSUMM01(root)

    def detect(self, root: Path) -> bool:
        return looks_like_sysu(root)

    def stats(self, root: str | Path) -> tuple[dict[str, int], dict[str, list[ImageRecord]]]:
        ds = self._reader(root)
        splits = {
            "train (train+val)": ds.train(),
            "query (test, cam3+cam6)": ds.thermal(),
            "gallery pool all-search": ds.visible(cams=GALLERY_CAMS["all"]),
            "gallery pool indoor-search": ds.visible(cams=GALLERY_CAMS["indoor"]),
        }
        return {f"{k}_ids": len(v) for k, v in ds.split_ids.items()}, splits

    def check(self, root: str | Path) -> tuple[list[str], list[ImageRecord]]:
        try:
            ds = self._reader(root)
        except DatasetError as e:
            return e.problems, []
        return [], ds.train() + ds.thermal() + ds.visible()

    def train_records(
        self, root: str | Path, *, trial: int | None = None, hold_out_val: bool = False
    ) -> list[ImageRecord]:
        return self._reader(root).train(include_val=not hold_out_val)

    def test_sets(self, root: str | Path, *, trial: int | None = None) -> dict[str, list[ImageRecord]]:
        """Every thermal test image (the queries) and the whole all-search pool (each trial draws its gallery)."""
        ds = self._reader(root)
        return {"query": ds.thermal(), "gallery_pool": ds.visible(cams=GALLERY_CAMS["all"])}

    def val_sets(self, root: str | Path) -> dict[str, list[ImageRecord]]:
        ds = self._reader(root)
        return {"query": ds.thermal("val"), "gallery_pool": ds.visible("val", GALLERY_CAMS["all"])}

    def evaluate(
        self,
        sets: Mapping[str, Sequence[ImageRecord]],
        featurize: Featurize,
        *,
        trial: int | None = None,
        feature_name: str | None = None,
        rerank: ReRanking | None = None,
        return_features: bool = False,
        **options: Any,
    ) -> EvalOutput:
        """Every search mode over ``trials`` galleries drawn from the pool; with ``rerank`` each mode's plain
        result is followed by its re-ranked one. The draws are made once: without ``return_features`` only
        the pool images some trial of some mode draws are featurised (a single-shot evaluation then encodes
        about 40% of the SYSU-MM01 pool); rows no trial reads stay zero."""
        o: SYSUOptions = self.options(**options)
        query, pool = list(sets["query"]), list(sets["gallery_pool"])
        ids, cams = np.asarray([r.pid for r in pool]), np.asarray([r.camid for r in pool])
        paths = [r.path for r in pool]
        rand_perm = load_rand_perm(o.rand_perm) if o.method == "official" and o.rand_perm is not None else o.rand_perm
        draws = {
            mode: gallery_draws(
                ids, cams, paths, mode=mode, shots=o.shots, method=o.method, trials=o.trials, rand_perm=rand_perm
            )
            for mode in o.modes
        }
        qf = featurize(query, "query")
        if return_features:  # reports and `cmemd extract` want every pool image
            pf = featurize(pool, "gallery pool")
        else:
            used = np.unique(np.concatenate([idx for mode in o.modes for idx in draws[mode]]))
            part = featurize([pool[i] for i in used], "gallery (drawn images)")
            pf = np.zeros((len(pool), part.shape[1]), dtype=part.dtype)
            pf[used] = part
        results = {}
        for mode in o.modes:
            name = f"sysu {mode}-search {'single' if o.shots == 1 else 'multi'}-shot"
            for rr in (None, rerank) if rerank else (None,):  # eval.rerank: the plain table, then the re-ranked one
                results[f"{name}, {rr.label()}" if rr else name] = evaluate_sysu(
                    qf,
                    np.asarray([r.pid for r in query]),
                    np.asarray([r.camid for r in query]),
                    pf,
                    ids,
                    cams,
                    paths,
                    mode=mode,
                    shots=o.shots,
                    method=o.method,
                    trials=o.trials,
                    rand_perm=rand_perm,
                    feature_name=feature_name,
                    draws=draws[mode],
                    rerank=rr,
                )
        report = None
        if return_features:
            report = thermal_query_report(qf, query, pf, pool, SAME_LOCATION)
        return EvalOutput(results, report)

    def evaluate_features(
        self,
        query: FeatureSet,
        gallery: FeatureSet,
        *,
        feature_name: str | None = None,
        rerank: ReRanking | None = None,
        trial: int | None = None,
        mode: str = "all",
        shots: int = 1,
        method: str = "python-random",
        rand_perm: str | None = None,
        trials: int | Sequence[int] = NUM_TRIALS,
    ) -> ProtocolResult:
        """``cmemd eval-features``: QUERY = the thermal queries, GALLERY = the whole visible pool."""
        return evaluate_sysu(
            query.feats,
            query.pids,
            query.cams,
            gallery.feats,
            gallery.pids,
            gallery.cams,
            gallery.paths,
            mode=mode,
            shots=shots,
            method=method,
            trials=trials,
            rand_perm=rand_perm,
            feature_name=feature_name,
            rerank=rerank,
        )

    def preview(self, root: str | Path, ids: int, per_camera: int) -> PreviewSheet:
        """Rows: ids seen by most cameras (4 of 6 where possible); columns: ``per_camera`` images of cam1..cam6."""
        root = Path(root)
        headers = [f"c{c} {_MODALITY_TEXT[CAMERA_MODALITY[c]]}" for c in CAMERA_MODALITY for _ in range(per_camera)]
        all_ids = sorted(
            {
                p.name
                for c in CAMERA_MODALITY
                if (root / f"cam{c}").is_dir()
                for p in (root / f"cam{c}").iterdir()
                if p.is_dir()
            }
        )
        full = [i for i in all_ids if sum((root / f"cam{c}" / i).is_dir() for c in CAMERA_MODALITY) >= 4]
        rows = []
        for pid in pick_evenly(full or all_ids, ids):
            cells: list = []
            for c in CAMERA_MODALITY:
                cells += images_in(root / f"cam{c}" / pid, per_camera)
            rows.append((pid, cells))
        return headers, rows


BENCHMARK = SYSU()
