"""Evaluation on features (never on models, never on a dataset reader): the dataset-agnostic metric core (CMC,
mAP, mINP), the protocol skeleton the benchmarks share, k-reciprocal re-ranking, results and modality measures.
Each benchmark's protocol is a module of :mod:`cmemd.benchmarks`."""

from __future__ import annotations

from cmemd.evaluation.features import FeatureSet, load_features, save_features
from cmemd.evaluation.metrics import (
    CMC_KINDS,
    METRICS,
    REMOVAL_RULES,
    EvalResult,
    Removal,
    SameLocation,
    evaluate,
    evaluate_similarity,
)
from cmemd.evaluation.protocol import Selection, Side, check_directions, evaluate_selections, trial_list
from cmemd.evaluation.rerank import ReRanking, re_ranking, re_ranking_features
from cmemd.evaluation.results import (
    METRIC_NAMES,
    ProtocolResult,
    combine_results,
    format_results,
    metric_row,
    save_json,
    to_dict,
    to_json,
)

__all__ = [
    "CMC_KINDS",
    "METRICS",
    "REMOVAL_RULES",
    "Removal",
    "SameLocation",
    "METRIC_NAMES",
    "EvalResult",
    "ProtocolResult",
    "FeatureSet",
    "evaluate",
    "evaluate_similarity",
    "Selection",
    "Side",
    "check_directions",
    "evaluate_selections",
    "trial_list",
    "combine_results",
    "format_results",
    "metric_row",
    "to_dict",
    "to_json",
    "save_json",
    "save_features",
    "load_features",
    "ReRanking",
    "re_ranking",
    "re_ranking_features",
]
