"""Evaluation on features (never on models): CMC, mAP, mINP, the SYSU-MM01 / RegDB / LLCM protocols and
k-reciprocal re-ranking."""
from __future__ import annotations

from cmemd.evaluation.features import FeatureSet, load_features, save_features
from cmemd.evaluation.metrics import (
    CMC_KINDS,
    METRICS,
    REMOVAL_RULES,
    EvalResult,
    evaluate,
    evaluate_similarity,
)
from cmemd.evaluation.rerank import ReRanking, re_ranking, re_ranking_features
from cmemd.evaluation.protocols import (
    LLCM_DIRECTIONS,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_regdb_directions,
    evaluate_sysu,
    llcm_draws,
    sysu_gallery_draws,
)
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
    "METRIC_NAMES",
    "EvalResult",
    "ProtocolResult",
    "FeatureSet",
    "evaluate",
    "evaluate_similarity",
    "evaluate_sysu",
    "sysu_gallery_draws",
    "evaluate_regdb",
    "evaluate_regdb_directions",
    "evaluate_llcm",
    "llcm_draws",
    "LLCM_DIRECTIONS",
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
