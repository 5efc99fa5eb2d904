"""LLCM as a benchmark: its directions, per-trial draws, protocol, options and registry entry. The reader is
:mod:`cmemd.data.llcm`.

Protocol (docs/protocols.md): the queries are every test image of one modality; each trial t = 0..9 seeds
Python's ``random`` with t and draws one image per (id, camera) of the other modality (ids ascending, cameras
ascending, files sorted): :func:`draw_one_per_camera`. Both modalities' test images are featurised once; the
NIR x visible similarities are computed once and each direction and trial takes its rows/columns. Removal
``same-pid-same-cam`` (the RGB and NIR sensors of a camera share its number), CMC ``identity-dedup``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from cmemd.benchmarks.base import Benchmark, EvalOutput, Featurize, PreviewSheet, refuse_rerank, thermal_query_report
from cmemd.data.llcm import LLCM, MODALITY_CAMS, TEST_FOLDER, looks_like_llcm, train_records
from cmemd.data.preview import images_in, pick_evenly
from cmemd.data.records import ImageRecord
from cmemd.data.synth import generate_llcm
from cmemd.errors import DatasetError, EvaluationError
from cmemd.evaluation.features import FeatureSet
from cmemd.evaluation.metrics import (
    DEFAULT_MEMORY_BUDGET,
    METRICS,
    ArrayLike,
    check_choice,
    check_feat_pair,
    check_labels,
    check_options,
    resolve_device,
)
from cmemd.evaluation.protocol import Selection, Side, check_directions, evaluate_selections, trial_list
from cmemd.evaluation.results import ProtocolResult

NUM_TRIALS = 10
#: LLCM directions: ``t2v`` IR->VIS (every NIR test image a query, one sampled VIS image per id and
#: camera as the gallery); ``v2t`` VIS->IR as a user defines it (every VIS image a query against a
#: sampled NIR gallery); ``v2t-authors`` the authors' VIS->IR branch, which transposes the distance
#: matrix so that the sampled NIR images are the queries and every VIS image is the gallery.
DIRECTION_TEXT = {
    "t2v": "IR->VIS: every NIR image a query, gallery one random VIS image per id and camera",
    "v2t": "VIS->IR: every VIS image a query, gallery one random NIR image per id and camera",
    "v2t-authors": (
        "VIS->IR as the authors' code runs it (transposed): one random NIR image per id and camera "
        "as queries, every VIS image the gallery"
    ),
}
DIRECTIONS = tuple(DIRECTION_TEXT)
#: the modality each direction samples per trial
SAMPLED = {"t2v": "visible", "v2t": "thermal", "v2t-authors": "thermal"}
CAMS = tuple(sorted(set(MODALITY_CAMS["visible"]) | set(MODALITY_CAMS["thermal"])))
LAYOUT = (
    "idx/train_vis.txt, idx/train_nir.txt, idx/test_id.txt, test_vis/cam1..cam9/<id>/, test_nir/cam{1,2,4..9}/<id>/"
)


def draw_one_per_camera(
    pids: Sequence[int] | np.ndarray, cams: Sequence[int] | np.ndarray, paths: Sequence[str], *, trial: int
) -> np.ndarray:
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


def llcm_draws(
    pids: ArrayLike, cams: ArrayLike, paths: Sequence[str], trials: int | Sequence[int] = NUM_TRIALS
) -> list[np.ndarray]:
    """Indices of each trial's one-image-per-(id, camera) sample of an LLCM test set, in draw order."""
    p, c = np.asarray(pids).reshape(-1), np.asarray(cams).reshape(-1)
    return [draw_one_per_camera(p, c, [str(x) for x in paths], trial=t) for t in trial_list(trials)]


def evaluate_llcm(
    visible_feats: ArrayLike,
    visible_pids: ArrayLike,
    visible_cams: ArrayLike,
    visible_paths: Sequence[str] | np.ndarray,
    thermal_feats: ArrayLike,
    thermal_pids: ArrayLike,
    thermal_cams: ArrayLike,
    thermal_paths: Sequence[str] | np.ndarray,
    *,
    directions: Sequence[str] = ("t2v", "v2t"),
    trials: int | Sequence[int] = NUM_TRIALS,
    feature_name: str | None = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, ProtocolResult]:
    """LLCM evaluation of one model in each of ``directions``: ``{direction: ProtocolResult}``.

    Args:
        visible_*, thermal_*: features, ids, camera numbers (1..9) and file paths of EVERY test
            image of each modality (thermal = LLCM's near-infrared). Paths decide the draw order.
        directions: drawn from :data:`DIRECTIONS` (``t2v`` IR->VIS, ``v2t`` VIS->IR, and
            ``v2t-authors``, the authors' transposed VIS->IR; see :data:`DIRECTION_TEXT`).
        trials: number of trials (0..n-1) or explicit 0-based trial indices; trial t seeds
            Python's random with t for its one-image-per-(id, camera) sample.

    Gallery items with the query's id AND camera number are removed; CMC is identity-deduplicated,
    mAP and mINP use the full ranked list; exact ties rank by gallery position (draw order for a
    sampled gallery, list order otherwise).
    """
    directions = check_directions(directions, DIRECTIONS)
    check_choice(metric, METRICS, "metric")
    check_options("same-pid-same-cam", "identity-dedup", max_rank)
    trial_ids = trial_list(trials)
    vf, tf = check_feat_pair(visible_feats, thermal_feats, "visible_feats", "thermal_feats")
    vp = check_labels(visible_pids, "visible_pids", vf.shape[0], "visible_feats")
    vc = check_labels(visible_cams, "visible_cams", vf.shape[0], "visible_feats")
    tp = check_labels(thermal_pids, "thermal_pids", tf.shape[0], "thermal_feats")
    tc = check_labels(thermal_cams, "thermal_cams", tf.shape[0], "thermal_feats")
    paths = {"visible": [str(p) for p in visible_paths], "thermal": [str(p) for p in thermal_paths]}
    for name, ps, n in (
        ("visible_paths", paths["visible"], vf.shape[0]),
        ("thermal_paths", paths["thermal"], tf.shape[0]),
    ):
        if len(ps) != n:
            raise EvaluationError(
                f"{name}: length {len(ps)} does not match the features ({n} rows); pass one path per image"
            )
    for name, cams in (("visible_cams", vc), ("thermal_cams", tc)):
        bad = sorted({int(c) for c in torch.unique(cams).tolist()} - set(CAMS))
        if bad:
            raise EvaluationError(
                f"{name}: camera numbers {bad} are not LLCM cameras 1..9; pass the dataset's camera "
                "numbers (cam1..cam9), which the same-id-same-camera removal depends on"
            )

    draws = {
        m: llcm_draws(
            (vp if m == "visible" else tp).cpu().numpy(),
            (vc if m == "visible" else tc).cpu().numpy(),
            paths[m],
            trial_ids,
        )
        for m in sorted({SAMPLED[d] for d in directions})
    }
    dev = resolve_device(device, visible_feats, thermal_feats)
    # A = NIR, B = visible: t2v queries A against sampled columns of B, v2t queries B (transposed) against sampled
    # columns of A, v2t-authors queries sampled rows of A against all of B.
    selections = [
        Selection(
            transpose=d == "v2t", rows=idx if d == "v2t-authors" else None, cols=None if d == "v2t-authors" else idx
        )
        for d in directions
        for idx in draws[SAMPLED[d]]
    ]
    res = evaluate_selections(
        Side(tf, tp, tc, "thermal_feats"),
        Side(vf, vp, vc, "visible_feats"),
        selections,
        removal="same-pid-same-cam",
        cmc="identity-dedup",
        metric=metric,
        max_rank=max_rank,
        chunk_size=chunk_size,
        device=dev,
        memory_budget=memory_budget,
    )
    settings = dict(
        feature_name=feature_name, metric=metric, removal="same-pid-same-cam", cmc="identity-dedup", rerank=None
    )  # re-ranking is not implemented for LLCM; said in every table
    results = {}
    n = len(trial_ids)
    for i, d in enumerate(directions):
        out = res[i * n : (i + 1) * n]
        for t, r, idx in zip(trial_ids, out, draws[SAMPLED[d]]):
            r.info.update(protocol="llcm", trial=t, direction=d, sampled=SAMPLED[d], sample_size=int(len(idx)))
        results[d] = ProtocolResult(
            "llcm", dict(settings, title=f"LLCM {d} ({DIRECTION_TEXT[d]})", direction=d), trial_ids, out
        )
    return results


# ---------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class LLCMOptions:
    """LLCM's protocol options (``eval.*``): directions drawn from :data:`DIRECTIONS`; trials a count
    (trials 0..n-1) or 0-based trial indices (trial t seeds each one-image-per-(id, camera) sample)."""

    directions: list[str] = field(default_factory=lambda: ["t2v", "v2t"])
    trials: int = NUM_TRIALS

    def __post_init__(self) -> None:
        if not self.directions:
            raise EvaluationError(f"directions: give at least one of {DIRECTIONS}")
        for d in self.directions:
            if d not in DIRECTIONS:
                raise EvaluationError(f"directions entries must be one of {DIRECTIONS} (LLCM), got {d!r}")


_MODALITY_TEXT = {"visible": "VIS", "thermal": "NIR"}


class LLCMBenchmark(Benchmark):
    """LLCM (cmemd.data.llcm reads it)."""

    name: ClassVar[str] = "llcm"
    title: ClassVar[str] = "LLCM"
    cameras: ClassVar[Mapping[str, tuple[int, ...]]] = MODALITY_CAMS
    on_disk: ClassVar[str] = LAYOUT
    Options: ClassVar[type] = LLCMOptions
    synth_defaults: ClassVar[Mapping[str, Any]] = {"ids": 60, "images_per_camera": (2, 4)}
    synthesize = staticmethod(generate_llcm)

    def _reader(self, root: str | Path) -> LLCM:
        self.refuse_other_layout(root)
        return LLCM(root)

    def _train(self, root: str | Path) -> list[ImageRecord]:
        if Path(root).is_dir():
            self.refuse_other_layout(root)
        return train_records(root)

    def detect(self, root: Path) -> bool:
        return looks_like_llcm(root)

    def stats(self, root: str | Path) -> tuple[dict[str, int], dict[str, list[ImageRecord]]]:
        ds = self._reader(root)
        train = self._train(root)
        splits = {"train (idx lists)": train, "test visible": ds.test("visible"), "test NIR": ds.test("thermal")}
        return {"train_ids": len({r.pid for r in train}), "test_ids": len(ds.test_ids)}, splits

    def check(self, root: str | Path) -> tuple[list[str], list[ImageRecord]]:
        """Problems of the test folders and of both training lists, all at once."""
        problems: list[str] = []
        records: list[ImageRecord] = []
        try:
            records += self._train(root)
        except DatasetError as e:
            problems += e.problems
        try:
            ds = self._reader(root)
            records += ds.test("visible") + ds.test("thermal")
        except DatasetError as e:
            problems += e.problems
        return problems, records

    def train_records(
        self, root: str | Path, *, trial: int | None = None, hold_out_val: bool = False
    ) -> list[ImageRecord]:
        if hold_out_val:
            raise DatasetError(
                "LLCM has no validation split (train ids and test ids only); select nothing "
                "(run.selection=none: the last epoch is reported)"
            )
        return self._train(root)

    def test_sets(self, root: str | Path, *, trial: int | None = None) -> dict[str, list[ImageRecord]]:
        ds = self._reader(root)
        return {"visible": ds.test("visible"), "thermal": ds.test("thermal")}

    def evaluate(
        self,
        sets: Mapping[str, Sequence[ImageRecord]],
        featurize: Featurize,
        *,
        trial: int | None = None,
        feature_name: str | None = None,
        rerank: Any = None,
        return_features: bool = False,
        **options: Any,
    ) -> EvalOutput:
        """Every direction in ``directions`` over ``trials`` samples, from one featurisation of each test set."""
        refuse_rerank(self.title, rerank)
        o: LLCMOptions = self.options(**options)
        vis, th = list(sets["visible"]), list(sets["thermal"])
        vf, tf = featurize(vis, "visible"), featurize(th, "NIR")
        res = evaluate_llcm(
            vf,
            np.asarray([r.pid for r in vis]),
            np.asarray([r.camid for r in vis]),
            [r.path for r in vis],
            tf,
            np.asarray([r.pid for r in th]),
            np.asarray([r.camid for r in th]),
            [r.path for r in th],
            directions=list(o.directions),
            trials=o.trials,
            feature_name=feature_name,
        )
        results = {f"llcm {d}": r for d, r in res.items()}
        report = None
        if return_features:
            report = thermal_query_report(tf, th, vf, vis, "same-pid-same-cam")
        return EvalOutput(results, report)

    def evaluate_features(
        self,
        query: FeatureSet,
        gallery: FeatureSet,
        *,
        feature_name: str | None = None,
        rerank: Any = None,
        trial: int | None = None,
        direction: str = "t2v",
        trials: int | Sequence[int] = NUM_TRIALS,
    ) -> ProtocolResult:
        """``cmemd eval-features``: for t2v QUERY holds every NIR test image and GALLERY every VIS one (each trial
        samples it); for v2t and v2t-authors QUERY holds the VIS images and GALLERY the NIR ones."""
        refuse_rerank(self.title, rerank)
        vis, th = (gallery, query) if direction == "t2v" else (query, gallery)
        return evaluate_llcm(
            vis.feats,
            vis.pids,
            vis.cams,
            vis.paths,
            th.feats,
            th.pids,
            th.cams,
            th.paths,
            directions=[direction],
            trials=trials,
            feature_name=feature_name,
        )[direction]

    def preview(self, root: str | Path, ids: int, per_camera: int) -> PreviewSheet:
        """Rows: test ids seen by most cameras; columns: cam1..cam9, VIS then NIR for each."""
        root = Path(root)
        columns = [(c, m) for c in MODALITY_CAMS["visible"] for m in ("visible", "thermal") if c in MODALITY_CAMS[m]]
        headers = [f"c{c} {_MODALITY_TEXT[m]}" for c, m in columns for _ in range(per_camera)]

        def folder(c: int, m: str, pid: str) -> Path:
            return root / TEST_FOLDER[m] / f"cam{c}" / pid

        all_ids = sorted(
            {
                p.name
                for c, m in columns
                if (root / TEST_FOLDER[m] / f"cam{c}").is_dir()
                for p in (root / TEST_FOLDER[m] / f"cam{c}").iterdir()
                if p.is_dir()
            }
        )
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


BENCHMARK = LLCMBenchmark()
