"""Plain per-query reference implementation of the ReID metrics (kept in the tests, not the package).

Written to be obviously correct, not fast: one Python iteration per query, a stable argsort of
the similarity row, the removal rule as a boolean mask, ``np.unique``-style dedup of ids.
"""
from __future__ import annotations

import numpy as np

from cmemd.evaluation import SameLocation


def similarity(qf, gf, metric):
    qf = np.asarray(qf, dtype=np.float64)
    gf = np.asarray(gf, dtype=np.float64)
    if metric == "cosine":
        qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        return np.array([[float(np.dot(a, b)) for b in gn] for a in qn])
    return -np.array([[float(((a - b) ** 2).sum()) for b in gf] for a in qf])


def reference_from_similarity(sim, qp, qc, gp, gc, removal, cmc, max_rank=20):
    sim = np.asarray(sim, dtype=np.float64)
    qp, qc, gp, gc = (np.asarray(x) for x in (qp, qc, gp, gc))
    aps, inps, firsts, valid = [], [], [], []
    for i in range(sim.shape[0]):
        order = np.argsort(-sim[i], kind="stable")
        if removal == "none":
            keep = np.ones(len(gp), bool)
        elif isinstance(removal, SameLocation):
            keep = np.ones(len(gp), bool)
            for q, g in removal.pairs:
                if qc[i] == q:
                    keep &= gc != g
        elif removal == "same-pid-same-cam":
            keep = ~((gp == qp[i]) & (gc == qc[i]))
        else:
            raise ValueError(removal)
        order = order[keep[order]]
        match = gp[order] == qp[i]
        if not match.any():
            valid.append(False)
            continue
        valid.append(True)
        pos = np.nonzero(match)[0] + 1  # 1-based positions of the true matches
        aps.append(np.mean(np.arange(1, len(pos) + 1) / pos))
        inps.append(len(pos) / pos[-1])
        if cmc == "standard":
            firsts.append(pos[0])
        else:
            ranked_ids = gp[order]
            _, first_idx = np.unique(ranked_ids, return_index=True)
            dedup = ranked_ids[np.sort(first_idx)]  # ids in order of their best image
            firsts.append(int(np.nonzero(dedup == qp[i])[0][0]) + 1)
    if not any(valid):
        return None  # the package raises EvaluationError here
    firsts = np.array(firsts, dtype=np.int64)
    cmc_curve = np.array([(firsts <= k).mean() for k in range(1, max_rank + 1)])
    return dict(cmc=cmc_curve, mAP=float(np.mean(aps)), mINP=float(np.mean(inps)), ap=np.array(aps),
                inp=np.array(inps), first_hit=firsts, valid_mask=np.array(valid))


def reference(qf, qp, qc, gf, gp, gc, removal="none", cmc="standard", metric="cosine", max_rank=20):
    return reference_from_similarity(similarity(qf, gf, metric), qp, qc, gp, gc, removal, cmc, max_rank)
