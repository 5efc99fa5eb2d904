"""Is the alignment doing its job? Modality gap and plan purity of a model on a set of records.

A thin layer over :mod:`cmemd.evaluation.modality` (which works on features only): it extracts the
features a model aligns and tests with and draws identity groups the way the training sampler does. Plan purity
needs per-record nuisance labels, which the caller passes: the synthetic benchmark's generator records them
(:func:`cmemd.benchmarks.synthetic.nuisance_of` reads them); nothing here reads a dataset's files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cmemd.data.records import ImageRecord, modality_index
from cmemd.engine.extract import extract_outputs
from cmemd.evaluation.modality import ModalityGap, PlanPurity, modality_gap, plan_purity, sample_identity_groups
from cmemd.losses.alignment import cross_cost


def select_identities(records: Sequence[ImageRecord], max_ids: int, seed: int = 0) -> list[ImageRecord]:
    """The records of at most ``max_ids`` identities (a fixed random choice), to keep diagnostics cheap."""
    ids = sorted({r.pid for r in records})
    keep = set(ids)
    if len(ids) > max_ids:
        keep = set(np.random.default_rng(seed).choice(ids, max_ids, replace=False).tolist())
    return [r for r in records if r.pid in keep]


def alignment_diagnostics(
    model: nn.Module,
    records: Sequence[ImageRecord],
    *,
    height: int,
    width: int,
    device: Any = "cpu",
    batch_size: int = 256,
    nuisance: dict[str, np.ndarray] | None = None,  # {"view": labels, name: numbers, ...} per record
    cost: str = "euclidean",
    normalize: bool = False,
    align_feature: str = "pooled",
    k: int = 4,
    draws: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"modality_gap": ModalityGap, "plan_purity": PlanPurity | None}`` of ``model`` on ``records``.

    The gap is measured on the test feature; the plan on the global feature as the loss's ``align_feature``
    presents it (``pooled``, ``bn``, or ``centered``: pooled minus the mean over ``records``, as the loss
    subtracts its batch mean) with the loss's ``cost``/``normalize``, for identity groups of ``k`` visible
    + ``k`` thermal images (``draws`` rounds, seeded), in eval mode. Plan purity needs ``nuisance``: per-record
    ``view`` labels and any numeric nuisances beside them (e.g. :func:`cmemd.benchmarks.synthetic.nuisance_of`);
    without it it is None.
    """
    feature = "global_bn" if align_feature == "bn" else "global_feat"
    feats = extract_outputs(
        model, records, ("test", feature), height=height, width=width, batch_size=batch_size, device=device
    )
    pids = np.array([r.pid for r in records])
    mods = np.array([modality_index(r.modality) for r in records])
    cams = np.array([r.camid for r in records])
    out: dict[str, Any] = {"modality_gap": modality_gap(feats["test"], pids, mods, cams), "plan_purity": None}
    if nuisance is not None and feature in feats:
        groups = sample_identity_groups(pids, mods, k, draws=draws, seed=seed)
        if groups:
            f = feats[feature]
            if align_feature == "centered":
                f = f - f.mean(0, keepdims=True)
            out["plan_purity"] = plan_purity(
                torch.from_numpy(f),
                groups,
                nuisance["view"],
                {n: v for n, v in nuisance.items() if n != "view"},
                cost=lambda v, t: cross_cost(v, t, cost, normalize),
            )
    return out


def diagnostics_record(diag: dict[str, Any]) -> dict[str, float]:
    """A flat ``{name: number}`` form for metrics.jsonl and result files."""
    rec: dict[str, float] = {}
    gap: ModalityGap = diag["modality_gap"]
    for key in ("centre_ratio", "probe_accuracy", "r1_v2v", "r1_t2t", "r1_t2v", "mixing", "overlap_share"):
        rec[f"gap_{key}"] = float(getattr(gap, key))
    pur: PlanPurity | None = diag.get("plan_purity")
    if pur is not None:
        rec.update(
            purity_plan=pur.same_view_plan,
            purity_uniform=pur.same_view_uniform,
            purity_ratio=pur.ratio,
            purity_max=pur.same_view_max,
            purity_max_ratio=pur.max_ratio,
        )
        for n in pur.nuisance_plan:
            rec[f"nuisance_{n}_plan"], rec[f"nuisance_{n}_uniform"] = pur.nuisance_plan[n], pur.nuisance_uniform[n]
    return rec
