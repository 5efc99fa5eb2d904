"""The skeleton every benchmark protocol shares, on features only (no dataset, no reader).

A protocol compares two featurised sets, A and B (the queries and the union of the drawn galleries, or
the test images of two modalities), in one or more *selections*: which side
holds the queries, and which rows of the query side and columns of the gallery side one trial (or one
direction) uses, in draw order. :func:`evaluate_selections` runs every selection from one computation:

- plain ranking: the A x B similarity matrix is computed once (as :func:`~cmemd.evaluation.metrics.ordered_bits`
  codes for float32) and each selection ranks its rows and columns of it (transposed once when a selection
  queries with B); when the matrix would exceed 4 x ``memory_budget``, each selection is evaluated on its own
  features with :func:`~cmemd.evaluation.metrics.evaluate` instead (same numbers, streamed);
- re-ranked (``rerank`` a :class:`~cmemd.evaluation.rerank.ReRanking`): the squared Euclidean distances of the
  prepared features (L2-normalised for ``cosine``, raw for ``euclidean``) A-A, A-B and B-B are computed once
  (A-B and B-B when they fit 4 x ``memory_budget``, else per selection), each selection is re-ranked on its own
  query and gallery sets, then ranked with the same removal and CMC rules.

``removal`` is a rule name of :data:`~cmemd.evaluation.metrics.REMOVAL_RULES` or a benchmark's
:class:`~cmemd.evaluation.metrics.SameLocation` rule.

Exact ties rank by gallery position, so the order of a selection's columns (the draw order) matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cmemd.errors import EvaluationError
from cmemd.evaluation.metrics import (
    EvalResult,
    Removal,
    chunk_rows,
    evaluate,
    evaluate_checked_similarity,
    ordered_bits,
    prepare_feats,
    similarity,
    work_dtype,
)
from cmemd.evaluation.rerank import ReRanking, rerank_squared, squared_euclidean


def trial_list(trials: int | Sequence[int]) -> list[int]:
    """``trials`` as 0-based trial indices: a count n gives 0..n-1; a list must be distinct indices >= 0."""
    if isinstance(trials, (int, np.integer)):
        if trials < 1:
            raise EvaluationError(f"trials={trials} must be >= 1 (10 is the protocol) or a list of trial indices")
        return list(range(int(trials)))
    out = [int(t) for t in trials]
    if not out:
        raise EvaluationError("trials: empty list; pass a count (10) or trial indices such as [0, 1]")
    if len(set(out)) != len(out) or min(out) < 0:
        raise EvaluationError(f"trials={out}: indices must be distinct and >= 0 (0-based)")
    return out


def check_directions(directions: Sequence[str], known: tuple[str, ...]) -> list[str]:
    """A non-empty list of directions drawn from ``known`` (a bare string is refused: it is not a list)."""
    if isinstance(directions, str) or not directions:
        raise EvaluationError(f"directions={directions!r}: give a non-empty list drawn from {known}")
    for d in directions:
        if d not in known:
            raise EvaluationError(f"direction={d!r} is unknown; use one of {', '.join(repr(c) for c in known)}")
    return list(directions)


@dataclass(frozen=True)
class Selection:
    """One evaluation on the A x B comparison.

    ``transpose``: False when A holds the queries (B the gallery), True for the reverse. ``rows``: indices of
    the query side's items that query (None: all, in order); ``cols``: indices of the gallery side's items that
    form the gallery, in draw order (None: all). Use one of them at most; the other side is then whole.
    """

    transpose: bool = False
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None


@dataclass(frozen=True)
class Side:
    """One checked feature set: (N, D) features, int64 ids and cameras, and its name for error messages."""

    feats: torch.Tensor
    pids: torch.Tensor
    cams: torch.Tensor
    name: str

    def take(self, idx: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if idx is None:
            return self.feats, self.pids, self.cams
        feats, pids, cams = (x[torch.from_numpy(idx).to(x.device)] for x in (self.feats, self.pids, self.cams))
        return feats, pids, cams


def evaluate_selections(
    a: Side,
    b: Side,
    selections: Sequence[Selection],
    *,
    removal: Removal,
    cmc: str,
    metric: str,
    max_rank: int,
    chunk_size: int | None,
    device: torch.device,
    memory_budget: int,
    rerank: ReRanking | None = None,
) -> list[EvalResult]:
    """One :class:`~cmemd.evaluation.metrics.EvalResult` per selection, from one computation (module docstring).

    The inputs are already checked (``check_feat_pair``/``check_labels`` of :mod:`cmemd.evaluation.metrics`).
    """
    for s in selections:
        if s.rows is not None and s.cols is not None:
            raise EvaluationError("a selection picks query rows or gallery columns, not both")
    if rerank is not None:
        return _reranked(
            a, b, selections, removal, cmc, metric, int(max_rank), chunk_size, device, memory_budget, rerank
        )
    if a.feats.shape[0] * b.feats.shape[0] * 4 > 4 * memory_budget:
        # Too large to keep one similarity matrix: each selection on its own features.
        out = []
        for s in selections:
            q, g = (b, a) if s.transpose else (a, b)
            qf, qp, qc = q.take(s.rows)
            gf, gp, gc = g.take(s.cols)
            out.append(
                evaluate(
                    qf,
                    qp,
                    qc,
                    gf,
                    gp,
                    gc,
                    removal=removal,
                    cmc=cmc,
                    metric=metric,
                    max_rank=max_rank,
                    chunk_size=chunk_size,
                    device=device,
                    memory_budget=memory_budget,
                )
            )
        return out
    dtype = work_dtype(a.feats, b.feats)
    an = prepare_feats(a.feats, a.name, metric, device, dtype)
    bn = prepare_feats(b.feats, b.name, metric, device, dtype)
    with torch.no_grad():
        sim = similarity(an, bn, (bn * bn).sum(1) if metric == "euclidean" else None, metric)  # (A, B)
        if sim.dtype == torch.float32:
            sim = ordered_bits(sim)  # once for every selection
    sim_t = sim.T.contiguous() if any(s.transpose for s in selections) else None  # (B, A)
    out = []
    for s in selections:
        q, g = (b, a) if s.transpose else (a, b)
        full = sim_t if s.transpose else sim
        assert full is not None, "sim_t is computed whenever a selection is transposed"
        _, qp, qc = q.take(s.rows)
        _, gp, gc = g.take(s.cols)
        cols = None
        if s.rows is not None:
            mat = full.index_select(0, torch.from_numpy(s.rows).to(full.device))
        else:
            mat = full
            if s.cols is not None:
                cols = torch.from_numpy(s.cols).to(full.device)
        step = chunk_rows(mat.shape[1] if cols is None else len(cols), chunk_size, mat.shape[0], memory_budget)
        out.append(
            evaluate_checked_similarity(
                mat, qp, qc, gp, gc, removal, cmc, int(max_rank), step, device, metric, columns=cols
            )
        )
    return out


def _reranked(
    a: Side,
    b: Side,
    selections: Sequence[Selection],
    removal: Removal,
    cmc: str,
    metric: str,
    max_rank: int,
    chunk_size: int | None,
    dev: torch.device,
    memory_budget: int,
    params: ReRanking,
) -> list[EvalResult]:
    dtype = work_dtype(a.feats, b.feats)
    an = prepare_feats(a.feats, a.name, metric, dev, dtype)
    bn = prepare_feats(b.feats, b.name, metric, dev, dtype)
    size = torch.finfo(dtype).bits // 8
    shared = (an.shape[0] + bn.shape[0]) * bn.shape[0] * size <= 4 * memory_budget
    results = []
    with torch.no_grad():
        aa = squared_euclidean(an, an)
        bb = ab = None
        if shared:
            ab, bb = squared_euclidean(an, bn), squared_euclidean(bn, bn)
        for s in selections:
            rows = None if s.rows is None else torch.from_numpy(s.rows).to(dev)
            cols = None if s.cols is None else torch.from_numpy(s.cols).to(dev)
            qn, gn = (bn, an) if s.transpose else (an, bn)
            if rows is not None:
                qn = qn[rows]
            if cols is not None:
                gn = gn[cols]
            if shared:
                assert ab is not None and bb is not None, "ab and bb are computed above when shared"
                qg_full, qq_full, gg_full = (ab.T, bb, aa) if s.transpose else (ab, aa, bb)
                qg, qq, gg = qg_full, qq_full, gg_full
                if rows is not None:
                    qg, qq = qg_full[rows], qq_full[rows][:, rows]
                if cols is not None:
                    qg, gg = qg_full[:, cols], gg_full[cols][:, cols]
            elif s.transpose:
                qg, qq, gg = squared_euclidean(qn, gn), squared_euclidean(qn, qn), squared_euclidean(gn, gn)
            else:
                qq = aa if rows is None else aa[rows][:, rows]
                qg, gg = squared_euclidean(qn, gn), squared_euclidean(gn, gn)
            dist = rerank_squared(qg, qq, gg, params, dev, memory_budget=memory_budget)
            del qg, gg
            q, g = (b, a) if s.transpose else (a, b)
            _, qp, qc = q.take(s.rows)
            _, gp, gc = g.take(s.cols)
            step = chunk_rows(dist.shape[1], chunk_size, dist.shape[0], memory_budget)
            results.append(
                evaluate_checked_similarity(-dist, qp, qc, gp, gc, removal, cmc, max_rank, step, dev, metric)
            )
    return results


__all__ = ["Selection", "Side", "check_directions", "evaluate_selections", "trial_list"]
