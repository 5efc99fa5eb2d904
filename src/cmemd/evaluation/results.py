"""Protocol results (per trial, mean ± std), the printed table and the JSON form.

The std is the population std over trials (``np.std(..., ddof=0)``), stated in the table and
in the JSON (``"std_ddof": 0``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmemd.errors import EvaluationError
from cmemd.evaluation.metrics import EvalResult

METRIC_NAMES = ("R1", "R5", "R10", "R20", "mAP", "mINP")
STD_DDOF = 0


def metric_row(r: EvalResult) -> dict[str, float]:
    """R1, R5, R10, R20, mAP, mINP of one result as fractions (NaN where max_rank < k)."""
    row = {}
    for name in METRIC_NAMES[:4]:
        k = int(name[1:])
        row[name] = float(r.cmc[k - 1]) if k <= len(r.cmc) else float("nan")
    row["mAP"] = float(r.mAP)
    row["mINP"] = float(r.mINP)
    return row


@dataclass
class ProtocolResult:
    """Results of a protocol: one :class:`EvalResult` per trial plus what was evaluated.

    ``settings`` holds the protocol's options (mode, shots, method, direction, feature name,
    removal, cmc kind, metric); ``trial_ids`` the trials in the order of ``trials``.
    """

    protocol: str
    settings: dict[str, Any]
    trial_ids: list[int]
    trials: list[EvalResult] = field(repr=False)

    def rows(self) -> list[dict[str, float]]:
        return [metric_row(t) for t in self.trials]

    @property
    def mean(self) -> dict[str, float]:
        rows = self.rows()
        return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}

    @property
    def std(self) -> dict[str, float]:
        """Population std over trials (ddof=0)."""
        rows = self.rows()
        return {k: float(np.std([r[k] for r in rows], ddof=STD_DDOF)) for k in METRIC_NAMES}

    def describe(self) -> str:
        """One line saying what was evaluated (the protocol's ``settings["title"]``, then trials, feature, rules)."""
        s = self.settings
        head = s.get("title") or self.protocol
        parts = [head, f"{len(self.trials)} trial(s) {self.trial_ids}"]
        if s.get("feature_name"):
            parts.append(f"feature {s['feature_name']}")
        parts.append(f"{s.get('metric', 'cosine')} similarity, removal {s.get('removal')}, CMC {s.get('cmc')}")
        if "rerank" in s:  # always said when the protocol recorded it: re-ranked numbers are not plain ones
            parts.append(rerank_label(s["rerank"]))
        return "; ".join(parts)


def rerank_label(rerank: dict[str, Any] | None) -> str:
    """``no re-ranking`` or ``re-ranked (k-reciprocal, k1=20, k2=6, λ=0.3)`` from a result's ``settings["rerank"]``."""
    if not rerank:
        return "no re-ranking"
    return f"re-ranked (k-reciprocal, k1={rerank['k1']}, k2={rerank['k2']}, λ={rerank['lambda']:g})"


def combine_results(results: Sequence[ProtocolResult]) -> ProtocolResult:
    """Join the trials of several results of the same protocol and settings (e.g. the 10
    numbered training splits of a benchmark, each evaluated with its own model) into one result with mean ± std
    over all."""
    if not results:
        raise EvaluationError("combine_results: got no results; pass at least one ProtocolResult")
    first = results[0]
    for r in results[1:]:
        if r.protocol != first.protocol or r.settings != first.settings:
            raise EvaluationError(
                f"combine_results: settings differ ({r.protocol} {r.settings} vs {first.protocol} {first.settings}); "
                "only trials of the same protocol, options and feature can be averaged"
            )
    ids = [t for r in results for t in r.trial_ids]
    if len(set(ids)) != len(ids):
        raise EvaluationError(f"combine_results: trial ids repeat ({ids}); each trial must be counted once")
    return ProtocolResult(first.protocol, dict(first.settings), ids, [t for r in results for t in r.trials])


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.2f}"


def format_results(result: ProtocolResult | EvalResult, *, per_trial: bool = False) -> str:
    """A text table of R1, R5, R10, R20, mAP, mINP in percent, mean ± std over trials."""
    if isinstance(result, EvalResult):
        row = metric_row(result)
        head = f"removal {result.removal}, CMC {result.cmc_kind}, {result.metric}; {result.num_valid} queries"
        if result.num_excluded:
            head += f" ({result.num_excluded} without a true match excluded)"
        lines = [
            head,
            "  ".join(f"{k:>7}" for k in METRIC_NAMES),
            "  ".join(f"{_pct(row[k]):>7}" for k in METRIC_NAMES),
        ]
        return "\n".join(lines)
    mean, std = result.mean, result.std
    width = 15
    lines = [result.describe()]
    if result.settings.get("rerank"):
        lines.insert(
            0,
            f"** {rerank_label(result.settings['rerank'])}: transductive (it uses all test queries and "
            "the whole gallery); compare only with re-ranked numbers **",
        )
    lines.append(f"{'':<10}" + "".join(f"{k:>{width}}" for k in METRIC_NAMES))
    if per_trial:
        for t, row in zip(result.trial_ids, result.rows()):
            lines.append(f"{'trial ' + str(t):<10}" + "".join(f"{_pct(row[k]):>{width}}" for k in METRIC_NAMES))
    cells = [f"{_pct(mean[k])} ± {'-' if np.isnan(std[k]) else f'{100 * std[k]:.2f}'}" for k in METRIC_NAMES]
    lines.append(f"{'mean ± std':<10}" + "".join(f"{c:>{width}}" for c in cells))
    excluded = sum(t.num_excluded for t in result.trials)
    foot = f"(percent; std over {len(result.trials)} trial(s), population ddof=0)"
    if excluded:
        foot += f"; {excluded} query evaluation(s) without a true match were excluded"
    lines.append(foot)
    return "\n".join(lines)


def _clean(x: float) -> float | None:
    return None if np.isnan(x) else x


def to_dict(result: ProtocolResult | EvalResult, *, per_query: bool = False) -> dict[str, Any]:
    """JSON-ready dict: settings, per-trial metrics (fractions), mean and std."""

    def one(r: EvalResult) -> dict[str, Any]:
        d: dict[str, Any] = {k: _clean(v) for k, v in metric_row(r).items()}
        d.update(cmc=[float(x) for x in r.cmc], num_valid=r.num_valid, num_excluded=r.num_excluded)
        if per_query:
            d.update(
                ap=r.ap.tolist(), inp=r.inp.tolist(), first_hit=r.first_hit.tolist(), valid_mask=r.valid_mask.tolist()
            )
        return d

    if isinstance(result, EvalResult):
        return {"removal": result.removal, "cmc_kind": result.cmc_kind, "metric": result.metric, **one(result)}
    return {
        "protocol": result.protocol,
        "settings": result.settings,
        "description": result.describe(),
        "trial_ids": list(result.trial_ids),
        "trials": [one(t) for t in result.trials],
        "mean": {k: _clean(v) for k, v in result.mean.items()},
        "std": {k: _clean(v) for k, v in result.std.items()},
        "std_ddof": STD_DDOF,
        "units": "fractions in [0, 1]",
    }


def to_json(result: ProtocolResult | EvalResult, *, per_query: bool = False) -> str:
    return json.dumps(to_dict(result, per_query=per_query), indent=2)


def save_json(result: ProtocolResult | EvalResult, path: str | Path, *, per_query: bool = False) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise EvaluationError(f"save_json: folder {path.parent} does not exist; create it or choose another --out path")
    path.write_text(to_json(result, per_query=per_query) + "\n")
    return path
