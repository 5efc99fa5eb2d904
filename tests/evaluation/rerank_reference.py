"""Brute-force k-reciprocal re-ranking, written from the paper (Zhong et al., CVPR 2017) with
the conventions of the field's reference code (kept in the tests, not the package).

One Python iteration per item and per pair, Python sets and dicts, float64 arithmetic after the
float32 normalised distance matrix. Written to be obviously correct, not fast (N up to ~40).

Conventions (those of the authors' public code, which the field runs):
- the distances are squared, cast to float32, and the combined matrix's column ``i`` divided by
  its maximum becomes the row item ``i`` ranks by;
- ``N(p, k)`` = the ``k`` items nearest to ``p`` *including p itself*, ties by index (stable);
- the k-reciprocal set uses ``k1 + 1`` neighbours, the half-size one ``round(k1 / 2) + 1`` (round
  half to even) and joins when the overlap is strictly more than 2/3 of its size;
- V holds exp(-d) normalised to sum one over the expanded set; query expansion averages the
  V rows of the k2 nearest items (skipped for k2 = 1);
- Jaccard distance 1 - m / (2 - m) with m = sum of element-wise minima.
"""
from __future__ import annotations

import numpy as np


def normalised_distance(q_g, q_q, g_g) -> np.ndarray:
    """The float32 (Q+G) x (Q+G) matrix the algorithm ranks rows of: entry [i, j] = d(j, i)^2 / max_k d(k, i)^2."""
    q_g, q_q, g_g = (np.asarray(x) for x in (q_g, q_q, g_g))
    Q, G = q_g.shape
    N = Q + G

    def orig(a, b):  # the combined matrix [[q_q, q_g], [q_g^T, g_g]]
        if a < Q and b < Q:
            return q_q[a, b]
        if a < Q:
            return q_g[a, b - Q]
        if b < Q:
            return q_g[b, a - Q]
        return g_g[a - Q, b - Q]

    sq = np.empty((N, N), dtype=np.float32)
    for a in range(N):
        for b in range(N):
            v = orig(a, b)
            sq[a, b] = np.float32(v * v)  # squared in the input's precision, then float32
    out = np.empty((N, N), dtype=np.float32)
    for i in range(N):
        col_max = max(sq[k, i] for k in range(N))
        for j in range(N):
            out[i, j] = np.float32(sq[j, i] / col_max)  # float32 / float32
    return out


def neighbours(d: np.ndarray, p: int, k: int) -> list[int]:
    """N(p, k): the k nearest items of row p (p included when it ranks there), ties by index."""
    return sorted(range(d.shape[1]), key=lambda j: (float(d[p, j]), j))[:k]


def reciprocal(d: np.ndarray, p: int, k: int) -> list[int]:
    """R(p, k) = {g in N(p, k) : p in N(g, k)}."""
    return [g for g in neighbours(d, p, k) if p in neighbours(d, g, k)]


def re_ranking_brute(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3) -> np.ndarray:
    q_g = np.asarray(q_g)
    Q, G = q_g.shape
    N = Q + G
    d = normalised_distance(q_g, q_q, g_g)
    half = int(round(k1 / 2))
    V = [dict() for _ in range(N)]
    for p in range(N):
        R = reciprocal(d, p, k1 + 1)
        expanded = set(R)
        for c in R:
            Rc = reciprocal(d, c, half + 1)
            if len(set(Rc) & set(R)) > 2.0 / 3 * len(Rc):
                expanded |= set(Rc)
        w = {g: float(np.exp(-np.float64(d[p, g]))) for g in expanded}
        total = sum(w.values())
        V[p] = {g: x / total for g, x in w.items()}
    if k2 != 1:
        Vqe = []
        for p in range(N):
            nb = neighbours(d, p, k2)
            acc: dict[int, float] = {}
            for g in nb:
                for l, x in V[g].items():
                    acc[l] = acc.get(l, 0.0) + x
            Vqe.append({l: x / len(nb) for l, x in acc.items()})
        V = Vqe
    out = np.empty((Q, G), dtype=np.float64)
    for i in range(Q):
        for j in range(G):
            a, b = V[i], V[Q + j]
            m = sum(min(a[l], b[l]) for l in set(a) & set(b))
            jaccard = 1.0 - m / (2.0 - m)
            out[i, j] = (1 - lambda_value) * jaccard + lambda_value * float(d[i, Q + j])
    return out


def euclidean(a, b) -> np.ndarray:
    """Plain per-pair Euclidean distances (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.array([[float(np.sqrt(((x - y) ** 2).sum())) for y in b] for x in a])
