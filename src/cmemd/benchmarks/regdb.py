"""RegDB as a benchmark: its protocol (both directions of one trial), its trials and its registry entry.
The reader is :mod:`cmemd.data.regdb`.

Protocol (docs/protocols.md): query = all test images of one modality, gallery = all test images of the
other; no removal, standard CMC. One call evaluates one trial (one model per trial: a model trained on trial
t has seen the other trials' test ids); :func:`~cmemd.evaluation.results.combine_results` averages trials.
Both directions rank the same visible x thermal similarities (or re-ranked distances), computed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from cmemd.benchmarks.base import Benchmark, EvalOutput, Featurize, PreviewSheet, thermal_query_report
from cmemd.data.preview import images_in, pick_evenly
from cmemd.data.records import ImageRecord
from cmemd.data.regdb import CAMERA_MODALITY, TRIALS, RegDB, looks_like_regdb
from cmemd.data.synth import generate_regdb
from cmemd.errors import DatasetError
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
from cmemd.evaluation.protocol import Selection, Side, check_directions, evaluate_selections
from cmemd.evaluation.rerank import ReRanking, as_reranking
from cmemd.evaluation.results import ProtocolResult

#: ``v2t``: visible queries against the thermal gallery; ``t2v`` the reverse.
DIRECTIONS = ("v2t", "t2v")
DIRECTION_TEXT = {"v2t": "visible->thermal", "t2v": "thermal->visible"}
LAYOUT = "Visible/<id>/*.bmp, Thermal/<id>/*.bmp and idx/{train,test}_{visible,thermal}_<1..10>.txt"


def evaluate_regdb(
    visible_feats: ArrayLike,
    visible_pids: ArrayLike,
    thermal_feats: ArrayLike,
    thermal_pids: ArrayLike,
    *,
    direction: str = "v2t",
    trial: int = 1,
    feature_name: str | None = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    rerank: bool | ReRanking | dict | None = None,
) -> ProtocolResult:
    """RegDB evaluation of one trial: ``v2t`` queries the visible test images against all thermal
    test images, ``t2v`` the reverse. No removal, standard CMC.

    ``trial`` (RegDB's 1..10 split number) only labels the result; evaluate each trial with the
    model trained on that trial's split and average them with ``combine_results``. For both
    directions use :func:`evaluate_regdb_directions`, which computes the similarities once.
    ``rerank``: as in :func:`cmemd.benchmarks.sysu.evaluate_sysu` (the query set re-ranked against the other
    modality).
    """
    check_choice(direction, DIRECTIONS, "direction")
    return evaluate_regdb_directions(
        visible_feats,
        visible_pids,
        thermal_feats,
        thermal_pids,
        directions=(direction,),
        trial=trial,
        feature_name=feature_name,
        metric=metric,
        max_rank=max_rank,
        chunk_size=chunk_size,
        device=device,
        rerank=rerank,
    )[direction]


def evaluate_regdb_directions(
    visible_feats: ArrayLike,
    visible_pids: ArrayLike,
    thermal_feats: ArrayLike,
    thermal_pids: ArrayLike,
    *,
    directions: Sequence[str] = DIRECTIONS,
    trial: int = 1,
    feature_name: str | None = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    rerank: bool | ReRanking | dict | None = None,
) -> dict[str, ProtocolResult]:
    """RegDB evaluation of one trial in each of ``directions`` (``v2t``, ``t2v``): ``{direction: result}``.

    The two directions rank the same visible x thermal similarities by rows and by columns, so the
    matrix is computed once (when it fits 4 x ``memory_budget``; otherwise each direction streams
    its own chunks, as :func:`~cmemd.evaluation.evaluate` does). Results equal separate calls.
    ``rerank``: the visible-visible, thermal-thermal and visible-thermal distances are computed once for
    both directions (:func:`~cmemd.evaluation.protocol.evaluate_selections`).
    """
    directions = check_directions(directions, DIRECTIONS)
    check_choice(metric, METRICS, "metric")
    check_options("none", "standard", max_rank)
    # Validate under the caller's names before the roles become query/gallery.
    vf, tf = check_feat_pair(visible_feats, thermal_feats, "visible_feats", "thermal_feats")
    vp = check_labels(visible_pids, "visible_pids", vf.shape[0], "visible_feats")
    tp = check_labels(thermal_pids, "thermal_pids", tf.shape[0], "thermal_feats")
    dev = resolve_device(device, visible_feats, thermal_feats)
    params = as_reranking(rerank)
    # cameras only label the two sides (no removal): visible 1, thermal 2, as the reader numbers them
    visible = Side(vf, vp, torch.ones(len(vp), dtype=torch.int64), "visible_feats")
    thermal = Side(tf, tp, torch.full((len(tp),), 2, dtype=torch.int64), "thermal_feats")
    res = evaluate_selections(
        visible,
        thermal,
        [Selection(transpose=d == "t2v") for d in directions],
        removal="none",
        cmc="standard",
        metric=metric,
        max_rank=max_rank,
        chunk_size=chunk_size,
        device=dev,
        memory_budget=memory_budget,
        rerank=params,
    )
    settings = dict(
        feature_name=feature_name,
        metric=metric,
        removal="none",
        cmc="standard",
        rerank=params.to_dict() if params else None,
    )
    results = {}
    for d, r in zip(directions, res):
        query, gallery = ("visible", "thermal") if d == "v2t" else ("thermal", "visible")
        r.info.update(protocol="regdb", trial=int(trial), query=query, gallery=gallery)
        results[d] = ProtocolResult(
            "regdb", dict(settings, title=f"RegDB {DIRECTION_TEXT[d]}", direction=d), [int(trial)], [r]
        )
    return results


class RegDBBenchmark(Benchmark):
    """RegDB (cmemd.data.regdb reads it); one model per training trial 1..10."""

    name: ClassVar[str] = "regdb"
    title: ClassVar[str] = "RegDB"
    cameras: ClassVar[Mapping[str, tuple[int, ...]]] = {m: (c,) for c, m in CAMERA_MODALITY.items()}
    on_disk: ClassVar[str] = LAYOUT
    training_trials: ClassVar[tuple[int, ...]] = TRIALS
    synth_defaults: ClassVar[Mapping[str, Any]] = {"ids": 100}
    synthesize = staticmethod(generate_regdb)

    def _reader(self, root: str | Path) -> RegDB:
        self.refuse_other_layout(root)
        return RegDB(root)

    def detect(self, root: Path) -> bool:
        return looks_like_regdb(root)

    def stats(self, root: str | Path) -> tuple[dict[str, int], dict[str, list[ImageRecord]]]:
        ds = self._reader(root)
        vis, th = ds.test(1)
        return {}, {"train (trial 1)": ds.train(1), "test visible (trial 1)": vis, "test thermal (trial 1)": th}

    def check(self, root: str | Path) -> tuple[list[str], list[ImageRecord]]:
        try:
            ds = self._reader(root)
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

    def train_records(
        self, root: str | Path, *, trial: int | None = 1, hold_out_val: bool = False
    ) -> list[ImageRecord]:
        if hold_out_val:
            raise DatasetError(
                "RegDB has no validation split (train/test per trial); select nothing "
                "(run.selection=none: the last epoch is reported)"
            )
        return self._reader(root).train(1 if trial is None else trial)

    def test_sets(self, root: str | Path, *, trial: int | None = 1) -> dict[str, list[ImageRecord]]:
        trial = 1 if trial is None else trial
        vis, th = self._reader(root).test(trial)
        return {f"visible_trial{trial}": vis, f"thermal_trial{trial}": th}

    def evaluate(
        self,
        sets: Mapping[str, Sequence[ImageRecord]],
        featurize: Featurize,
        *,
        trial: int | None = 1,
        feature_name: str | None = None,
        rerank: ReRanking | None = None,
        return_features: bool = False,
        **options: Any,
    ) -> EvalOutput:
        """Both directions of the trained trial from one similarity matrix; with ``rerank`` each direction's
        plain result is followed by its re-ranked one."""
        self.options(**options)
        trial = 1 if trial is None else trial
        vis, th = list(sets[f"visible_trial{trial}"]), list(sets[f"thermal_trial{trial}"])
        vf = featurize(vis, "visible")
        tf = featurize(th, "thermal")
        vp, tp = np.asarray([r.pid for r in vis]), np.asarray([r.pid for r in th])
        both = evaluate_regdb_directions(vf, vp, tf, tp, trial=trial, feature_name=feature_name)
        reranked = (
            evaluate_regdb_directions(vf, vp, tf, tp, trial=trial, feature_name=feature_name, rerank=rerank)
            if rerank
            else {}
        )
        results = {}
        for d, res in both.items():
            results[f"regdb trial {trial} {d}"] = res
            if d in reranked:
                assert rerank is not None  # reranked is empty without it
                results[f"regdb trial {trial} {d}, {rerank.label()}"] = reranked[d]
        report = None
        if return_features:
            report = thermal_query_report(tf, th, vf, vis, "none")
        return EvalOutput(results, report)

    def evaluate_features(
        self,
        query: FeatureSet,
        gallery: FeatureSet,
        *,
        feature_name: str | None = None,
        rerank: ReRanking | None = None,
        trial: int | None = 1,
        direction: str = "v2t",
    ) -> ProtocolResult:
        """``cmemd eval-features``: QUERY is visible for v2t and thermal for t2v; GALLERY the other modality."""
        vis, th = (query, gallery) if direction == "v2t" else (gallery, query)
        return evaluate_regdb(
            vis.feats,
            vis.pids,
            th.feats,
            th.pids,
            direction=direction,
            trial=1 if trial is None else trial,
            feature_name=feature_name,
            rerank=rerank,
        )

    def preview(self, root: str | Path, ids: int, per_camera: int) -> PreviewSheet:
        """Rows: ids; columns: the first ``2 * per_camera`` visible/thermal pairs (the rig is aligned)."""
        root = Path(root)
        k = 2 * per_camera
        headers = [h for j in range(k) for h in (f"V{j + 1}", f"T{j + 1}")]
        folder = root / "Visible"
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing; RegDB keeps its visible images in Visible/<id>/")
        pids = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=lambda s: (len(s), s))
        rows = []
        for pid in pick_evenly(pids, ids):
            vis = images_in(root / "Visible" / pid, k, first=True)
            thr = images_in(root / "Thermal" / pid, k, first=True)
            rows.append((pid, [c for pair in zip(vis, thr) for c in pair]))
        return headers, rows


BENCHMARK = RegDBBenchmark()
