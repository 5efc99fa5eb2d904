"""Losses: identity classification, WRT triplet, cross-modality alignment (CM-EMD and the
alternatives it is compared with) and CM-DL."""

from __future__ import annotations

from cmemd.losses.alignment import (
    COSTS,
    AlignmentOptions,
    AlignmentOutput,
    AllPairsLoss,
    CMEMDLoss,
    CMEMDOutput,
    HeteroCenterLoss,
    MMDLoss,
    NoAlignment,
    all_pairs_loss,
    cmemd_loss,
    cross_cost,
    group_identities,
    hetero_center_loss,
    make_alignment_loss,
    mmd_loss,
)
from cmemd.losses.classification import CrossEntropyLabelSmooth, cross_entropy_label_smooth
from cmemd.losses.discrimination import CMDLLoss, cmdl_loss
from cmemd.losses.triplet import WeightedRegularizedTriplet, pairwise_euclidean, wrt_triplet

__all__ = [
    "COSTS",
    "AlignmentOutput",
    "AlignmentOptions",
    "CMEMDOutput",
    "CMEMDLoss",
    "AllPairsLoss",
    "HeteroCenterLoss",
    "MMDLoss",
    "NoAlignment",
    "cmemd_loss",
    "all_pairs_loss",
    "hetero_center_loss",
    "mmd_loss",
    "cross_cost",
    "group_identities",
    "make_alignment_loss",
    "CrossEntropyLabelSmooth",
    "cross_entropy_label_smooth",
    "CMDLLoss",
    "cmdl_loss",
    "WeightedRegularizedTriplet",
    "wrt_triplet",
    "pairwise_euclidean",
]
