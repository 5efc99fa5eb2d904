"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised in torch with bounded memory.

The algorithm is the one of the authors' public code as the field runs it (re-packaged in
torchreid and fast-reid), step for step:

1. The (Q+G) x (Q+G) matrix ``[[q_q, q_g], [q_g^T, g_g]]`` is squared (in the input's dtype),
   cast to float32, every column divided by its maximum, and transposed: row ``i`` ranks
   everything by ``d(j, i)^2 / max_k d(k, i)^2``. Inputs are therefore *distances* (smaller =
   closer) that get squared: pass Euclidean distances to reproduce the authors' feature-based
   code, which computes the squared Euclidean distance of the features.
2. ``N(i, k)``: the first ``k`` items of row ``i`` in ascending order, ties by column index (a
   stable sort; the reference's ``np.argsort`` default is an unstable quicksort, so on exact ties
   its order is unspecified: this module fixes it to the stable one). Only the top
   ``max(k1 + 1, k2)`` of each row is ever needed, never a full sort.
3. ``R(i) = {j in N(i, k1+1) : i in N(j, k1+1)}``, in ``N``'s order.
4. Expansion: for each ``c`` in ``R(i)``, ``R_half(c)`` is the same with ``round(k1/2) + 1``
   neighbours (round half to even, as ``np.around``); it joins when
   ``|R_half(c) & R(i)| > 2/3 |R_half(c)|`` (strict, the 2/3 in float64 as the reference).
5. ``V[i, j] = exp(-d[i, j]) / sum`` over the expanded set (Gaussian kernel of the normalised
   squared distance); every other entry is 0.
6. Local query expansion (skipped when ``k2 == 1``): ``V[i] <- mean of V[N(i, k2)]``.
7. Jaccard distance ``1 - m / (2 - m)``, ``m = sum_l min(V[q, l], V[g, l])`` (the reference's
   form, which is ``1 - sum min / sum max`` when rows sum to one).
8. ``final = (1 - lambda) * jaccard + lambda * d`` for each query against each gallery item.

How it stays fast and small. Rows of step 1 are produced a block at a time from the three
input matrices (the (Q+G)^2 matrix is never built); each block keeps only its top-k lists and
its row maximum. ``V`` is sparse (a few dozen entries per row), stored as padded index/value
rows; the query expansion merges ``k2`` sparse rows by sorting; the Jaccard overlaps are summed
over shared columns only (an inverted index in vectorised form: for each query entry, every
gallery entry of the same column), as int32 lists of (query entry, gallery entry) pairs built by
cumulative sums, in blocks small enough to stay in the CPU caches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cmemd.errors import EvaluationError
from cmemd.evaluation.metrics import (
    DEFAULT_MEMORY_BUDGET,
    METRICS,
    ArrayLike,
    as_tensor,
    check_choice,
    check_feat_pair,
    ordered_bits,
    prepare_feats,
    resolve_device,
    work_dtype,
)
from cmemd.evaluation.results import rerank_label

_TWO_THIRDS = 2.0 / 3  # the reference's float64 constant
# (query entry, gallery entry) pairs per block of the Jaccard sums: int32/float32 temporaries of 1 MiB each
_PAIR_BLOCK = 1 << 18
# Side of the square tiles of a transposing copy (512 x 512 float32, 1 MiB: a tile that fits a typical L2 cache; the
# re-ranking benchmark, bench/rerank_speed.py, measures the choice)
_TILE = 512


@dataclass(frozen=True)
class ReRanking:
    """Parameters of k-reciprocal re-ranking (the paper's defaults)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        _check_params(self.k1, self.k2, self.lambda_value)

    def label(self) -> str:
        """The label every re-ranked table carries."""
        return rerank_label(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"method": "k-reciprocal", "k1": self.k1, "k2": self.k2, "lambda": self.lambda_value}


def as_reranking(value: bool | ReRanking | dict | None) -> ReRanking | None:
    """``None``/``False`` -> no re-ranking; ``True`` -> the paper's defaults; a :class:`ReRanking` or a
    dict with ``k1``, ``k2``, ``lambda_value`` (or ``lambda``)."""
    if value is None or value is False:
        return None
    if value is True:
        return ReRanking()
    if isinstance(value, ReRanking):
        return value
    if isinstance(value, dict):
        d = dict(value)
        d.pop("method", None)
        if "lambda" in d:
            d["lambda_value"] = d.pop("lambda")
        unknown = set(d) - {"k1", "k2", "lambda_value"}
        if unknown:
            raise EvaluationError(f"rerank: unknown key(s) {sorted(unknown)}; use k1, k2, lambda_value")
        return ReRanking(**d)
    raise EvaluationError(
        f"rerank={value!r}: pass None/False, True (k1=20, k2=6, lambda=0.3) or ReRanking(k1, k2, lambda_value)"
    )


def _check_params(k1: Any, k2: Any, lambda_value: Any) -> None:
    for name, k in (("k1", k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise EvaluationError(f"{name}={k!r} must be a positive integer (the paper uses k1=20, k2=6)")
    if (
        isinstance(lambda_value, bool)
        or not isinstance(lambda_value, (int, float, np.floating, np.integer))
        or not 0.0 <= float(lambda_value) <= 1.0
    ):
        raise EvaluationError(
            f"lambda_value={lambda_value!r} must be a number in [0, 1] (the weight of the original "
            "distance; the paper uses 0.3)"
        )


# --------------------------------------------------------------------------- rows of the ranked matrix


def _copy_tiled(dst: torch.Tensor, part: torch.Tensor, square: bool) -> None:
    """``dst.copy_(part * part if square else part)``; a transposed ``part`` on the CPU is copied in square tiles
    (a transposing copy that walks whole rows misses the caches on almost every element: several times slower)."""
    if part.is_contiguous() or dst.device.type != "cpu" or part.device.type != "cpu":
        dst.copy_(part * part if square else part)
        return
    n, m = dst.shape
    for i in range(0, n, _TILE):
        for j in range(0, m, _TILE):
            p = part[i : i + _TILE, j : j + _TILE]
            dst[i : i + _TILE, j : j + _TILE].copy_(p * p if square else p)


class _Source:
    """The transposed combined matrix of step 1, squared (when ``square``) and float32, read in pieces.

    Row ``i < Q`` is ``[q_q[:, i], q_g[i, :]]``; row ``Q + j`` is ``[q_g[:, j], g_g[:, j]]``; entry
    ``(i, j)`` is the combined matrix's ``(j, i)``.
    """

    rowwise = True  # a row's values do not depend on the block it is read in

    def __init__(self, qg: torch.Tensor, qq: torch.Tensor, gg: torch.Tensor, square: bool, dev: torch.device):
        self.qg, self.qq, self.gg, self.square, self.dev = qg, qq, gg, square, dev
        self.Q, self.G = qg.shape

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh float32 tensor (the caller may modify it in place)."""
        x = x.to(self.dev)
        if self.square:
            return (x * x).to(torch.float32)  # in the input's dtype, then float32: np.power(...).astype(np.float32)
        return x.to(torch.float32, copy=True)

    def rows(self, r0: int, r1: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``r0:r1``, written into ``buffer`` (a float32 (>= r1 - r0, N) tensor) when given: reusing one
        buffer for every block spares the page faults of a fresh (rows, N) allocation per block."""
        Q, N = self.Q, self.Q + self.G
        if buffer is not None and buffer.shape[0] >= r1 - r0 and buffer.shape[1] == N and buffer.device == self.dev:
            out = buffer[: r1 - r0]
        else:
            out = torch.empty(r1 - r0, N, dtype=torch.float32, device=self.dev)
        same = self.qg.dtype == torch.float32  # square in place after the copy; else square before the cast
        blocks = []
        a, b = r0, min(r1, Q)
        if b > a:
            blocks += [(out[: b - a, :Q], self.qq[:, a:b].T), (out[: b - a, Q:], self.qg[a:b])]
        a, b, o = max(r0, Q) - Q, r1 - Q, max(0, Q - r0)
        if b > a:
            blocks += [(out[o:, :Q], self.qg[:, a:b].T), (out[o:, Q:], self.gg[:, a:b].T)]
        for dst, part in blocks:
            _copy_tiled(dst, part, self.square and not same)
        if self.square and same:
            out.mul_(out)
        return out

    def query_gallery(self, r0: int, r1: int) -> torch.Tensor:
        """Gallery columns of the query rows ``r0:r1`` (< Q): ``q_g[r0:r1]``."""
        return self._finish(self.qg[r0:r1])

    def block_entries(self, r0: int, r1: int, cols: torch.Tensor) -> torch.Tensor:
        """Entries ``(r0 + a, cols[a, b])``, by the same float operations as :meth:`rows` (gathered, not rebuilt)."""

        def at(m: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return m[r.to(m.device), c.to(m.device)].to(self.dev)

        Q = self.Q
        i = torch.arange(r0, r1, device=cols.device)[:, None].expand_as(cols)
        j = cols
        iq, jq = i < Q, j < Q
        ig, jg = (i - Q).clamp(min=0), (j - Q).clamp(min=0)
        ic, jc = i.clamp(max=Q - 1), j.clamp(max=Q - 1)
        # the combined matrix at (j, i)
        x = torch.where(
            jq,
            torch.where(iq, at(self.qq, jc, ic), at(self.qg, jc, ig)),
            torch.where(iq, at(self.qg, ic, jg), at(self.gg, jg, ig)),
        )
        return self._finish(x)


class _FeatureSource:
    """The same interface computed from features: squared Euclidean distances, one row block at a time.

    Nothing of size (Q+G)^2 exists at any time (the input matrices of :class:`_Source` would be).
    """

    rowwise = False  # rows come from one matmul per block, whose last bits may depend on the block's rows

    def __init__(self, feats: torch.Tensor, Q: int, dev: torch.device):
        self.x = feats.to(dev)
        self.sq = (self.x * self.x).sum(1)
        self.Q, self.G = Q, feats.shape[0] - Q

    def rows(self, r0: int, r1: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x  # a fresh block whatever the buffer: the matmul's output is its own
        d = torch.addmm(self.sq[r0:r1, None] + self.sq[None, :], x[r0:r1], x.T, alpha=-2.0)
        return d.clamp_(min=0).to(torch.float32)

    def query_gallery(self, r0: int, r1: int) -> torch.Tensor:
        return self.rows(r0, r1)[:, self.Q :]  # the values the rows were ranked by

    def block_entries(self, r0: int, r1: int, cols: torch.Tensor) -> torch.Tensor:
        return self.rows(r0, r1).gather(1, cols)  # one matmul block: cheaper than (c, M, D) feature gathers


# --------------------------------------------------------------------------- the algorithm


def _stable_topk(d: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the ``k`` smallest entries of each row, ascending, ties by column index.

    A float top-(k+1) settles every row whose first k+1 values are distinct; rows with an exact tie
    there (rare outside duplicated items) are redone with unique (value, column) integer keys.
    """
    n = d.shape[1]
    if k < n:
        vals, idx = torch.topk(d, k + 1, dim=1, largest=False, sorted=True)
        tied = (vals[:, 1:] == vals[:, :-1]).any(1)
        idx = idx[:, :k]
    else:
        idx, tied = None, torch.ones(d.shape[0], dtype=torch.bool, device=d.device)
    if bool(tied.any()):
        rows = torch.nonzero(tied).flatten()
        key = ordered_bits(d[rows]).to(torch.int64).bitwise_left_shift_(32)
        key += torch.arange(n, device=d.device)[None, :]  # unique keys: (value, column) order
        exact = torch.topk(key, k, dim=1, largest=False, sorted=True).indices
        if idx is None:
            return exact
        idx[rows] = exact
    # idx is None only when k >= n; then every row is tied and returned above (d has at least one row: callers
    # pass non-empty row blocks)
    assert idx is not None, "_stable_topk: d must have at least one row"
    return idx


def _reciprocal(nbr: torch.Tensor, step: int) -> torch.Tensor:
    """``out[i, a]``: ``i`` is among the neighbours of its neighbour ``nbr[i, a]`` (same list length)."""
    n = nbr.shape[0]
    out = torch.empty(nbr.shape, dtype=torch.bool, device=nbr.device)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        me = torch.arange(r0, r1, device=nbr.device)[:, None, None]
        out[r0:r1] = (nbr[nbr[r0:r1]] == me).any(-1)
    return out


def _pad_rows(
    idx_parts: list[torch.Tensor], val_parts: list[torch.Tensor], fill: int
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(p.shape[1] for p in idx_parts))
    idx = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in idx_parts])
    val = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1]), value=0.0) for v in val_parts])
    return idx, val


def _compact(idx: torch.Tensor, val: torch.Tensor, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the valid entries (index != fill, ascending) to the front of each row and trim the padding."""
    idx, order = torch.sort(idx, dim=1)
    val = val.gather(1, order)
    width = int((idx != fill).sum(1).max()) if idx.numel() else 0
    return idx[:, :width], val[:, :width]


def _encode(
    src: Any,
    scale: torch.Tensor,
    top: torch.Tensor,
    R: torch.Tensor,
    RH: torch.Tensor,
    k1p: int,
    khp: int,
    N: int,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 3-5: the k-reciprocal feature ``V`` as padded (index, value) rows (index ``N`` = empty)."""
    F, H = top[:, :k1p], top[:, :khp]
    nH = RH.sum(1).to(torch.float64)
    idx_parts, val_parts = [], []
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        f, r = F[r0:r1], R[r0:r1]
        members, member_ok = H[f], RH[f]  # (c, k1p, khp): each candidate's half-size reciprocal set
        # Which members belong to R(i): a (c, N + 1) membership table of R, read at the members.
        table = torch.zeros(r1 - r0, N + 1, dtype=torch.bool, device=top.device)
        table.scatter_(1, torch.where(r, f, N), True)
        in_r = table.gather(1, members.flatten(1)).view(members.shape)
        del table
        overlap = (in_r & member_ok).sum(-1).to(torch.float64)
        accept = r & (overlap > _TWO_THIRDS * nH[f])
        sets = torch.cat([torch.where(r, f, N), torch.where(accept[..., None] & member_ok, members, N).flatten(1)], 1)
        sets, _ = torch.sort(sets, dim=1)
        dup = torch.zeros_like(sets, dtype=torch.bool)
        dup[:, 1:] = sets[:, 1:] == sets[:, :-1]
        sets = sets.masked_fill(dup, N)
        valid = sets != N
        d = src.block_entries(r0, r1, sets.clamp(max=N - 1)) / scale[r0:r1, None]
        w = torch.exp(-d) * valid
        total = w.sum(1, keepdim=True)
        # A row whose k-reciprocal set is empty keeps V = 0, as in the reference.
        v = torch.where(total > 0, w / torch.where(total > 0, total, 1.0), 0.0)
        i, v = _compact(sets, v, N)
        idx_parts.append(i)
        val_parts.append(v)
    return _pad_rows(idx_parts, val_parts, N)


def _expand(
    V_idx: torch.Tensor, V_val: torch.Tensor, top: torch.Tensor, k2p: int, N: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 6: row ``i`` becomes the mean of the rows of its ``k2`` nearest neighbours (sparse merge)."""
    idx_parts, val_parts = [], []
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        c = r1 - r0
        nb = top[r0:r1, :k2p]
        idx = V_idx[nb]  # (c, k2p, M)
        val = V_val[nb]
        local = torch.arange(c, device=idx.device)[:, None, None]
        key = (local * (N + 1) + idx).flatten()
        key, order = torch.sort(key, stable=True)  # equal columns keep neighbour order: the same sum order as np.mean
        uk, inv = torch.unique_consecutive(key, return_inverse=True)
        sums = torch.zeros(uk.shape[0], dtype=torch.float32, device=idx.device).index_add_(0, inv, val.flatten()[order])
        row, col = uk // (N + 1), uk % (N + 1)
        keep = col != N
        row, col = row[keep], col[keep]
        mean = (sums[keep].to(torch.float64) / k2p).to(torch.float32)  # np.mean: float32 sum / intp count
        counts = torch.bincount(row, minlength=c)
        width = int(counts.max()) if c else 0
        pos = torch.arange(row.shape[0], device=idx.device) - (torch.cumsum(counts, 0) - counts)[row]
        out_i = torch.full((c, max(width, 1)), N, dtype=torch.int64, device=idx.device)
        out_v = torch.zeros((c, max(width, 1)), dtype=torch.float32, device=idx.device)
        out_i[row, pos] = col
        out_v[row, pos] = mean
        idx_parts.append(out_i)
        val_parts.append(out_v)
    return _pad_rows(idx_parts, val_parts, N)


def _final(
    src: Any,
    scale: torch.Tensor,
    V_idx: torch.Tensor,
    V_val: torch.Tensor,
    Q: int,
    G: int,
    lam: float,
    step: int,
    memory_budget: int,
) -> torch.Tensor:
    """Steps 7-8 for the query rows against the gallery columns.

    ``m[i, j] = sum of min(V[i, l], V[Q + j, l])`` over the columns ``l`` both rows use, added in float32 in
    ascending ``l`` as the reference adds them. Each (query entry, gallery entry) pair of a shared column is one
    addition: the gallery entries are grouped by column (the inverted index), a block of queries lists its pairs
    in (query, column, gallery row) order and ``index_add_`` adds them in that order. The pair lists are built
    with int32 cumulative sums (no int64 arithmetic per pair) in blocks of about ``_PAIR_BLOCK`` pairs, so that
    every temporary stays in the CPU caches.
    """
    N = Q + G
    dev = V_idx.device
    # Gallery entries grouped by column: the inverted index.
    g_idx, g_val = V_idx[Q:], V_val[Q:]
    g_ok = g_idx != N
    g_row = torch.arange(G, device=dev)[:, None].expand_as(g_idx)[g_ok]
    g_col, g_v = g_idx[g_ok], g_val[g_ok]
    g_col, order = torch.sort(g_col, stable=True)
    g_row, g_v = g_row[order].to(torch.int32), g_v[order]
    g_count = torch.bincount(g_col, minlength=N)
    g_start = torch.cumsum(g_count, 0) - g_count

    q_idx, q_val = V_idx[:Q], V_val[:Q]
    q_n = torch.where(q_idx != N, g_count[q_idx.clamp(max=N - 1)], 0)  # gallery partners of each query entry
    pairs_per_query = q_n.sum(1)
    out = torch.empty(Q, G, dtype=torch.float32, device=dev)
    # Blocks of query rows, each summed in sub-blocks of about _PAIR_BLOCK pairs and rows whose work stays in the
    # CPU caches. The original distances are added per sub-block, or per block for a source whose rows depend on
    # the block (features: one matmul per block, the blocks kept as they were so that the results do not change).
    pair_budget = max(1, memory_budget // 96)
    sub_budget = max(1, min(_PAIR_BLOCK, memory_budget // 48))  # about a dozen 4-byte temporaries per pair
    sub_rows = max(1, _PAIR_BLOCK // max(G, 1))
    r0 = 0
    while r0 < Q:
        r1 = _rows_within(pairs_per_query, r0, min(Q, r0 + step), pair_budget)
        s0 = r0
        while s0 < r1:
            s1 = _rows_within(pairs_per_query, s0, min(r1, s0 + sub_rows), sub_budget)
            shared = _shared_mass(q_idx[s0:s1], q_val[s0:s1], q_n[s0:s1], g_start, g_row, g_v, G)
            # In place, with the reference's float32 operations: (1 - m / (2 - m)) * (1 - lam) + d * lam.
            torch.mul(shared.div_(2.0 - shared).neg_().add_(1.0), 1 - lam, out=out[s0:s1])
            if src.rowwise:
                out[s0:s1].add_(src.query_gallery(s0, s1).div_(scale[s0:s1, None]).mul_(lam))
            s0 = s1
        if not src.rowwise:
            out[r0:r1].add_(src.query_gallery(r0, r1).div_(scale[r0:r1, None]).mul_(lam))
        r0 = r1
    return out


def _rows_within(pairs_per_query: torch.Tensor, r0: int, limit: int, budget: int) -> int:
    """End of the block of rows from ``r0``: as many as fit ``budget`` pairs (at least one), at most up to ``limit``."""
    cum = torch.cumsum(pairs_per_query[r0:limit], 0)
    return min(limit, r0 + max(1, int(torch.searchsorted(cum, torch.tensor(budget, device=cum.device), right=True))))


def _shared_mass(
    q_idx: torch.Tensor,
    q_val: torch.Tensor,
    q_n: torch.Tensor,
    g_start: torch.Tensor,
    g_row: torch.Tensor,
    g_v: torch.Tensor,
    G: int,
) -> torch.Tensor:
    """``m`` (c, G) of a block of c query rows: the sum of min(query value, gallery value) over every pair of a
    query entry and a gallery entry of the same column, added in (query, column, gallery row) order."""
    c = q_idx.shape[0]
    shared = torch.zeros(c * G, dtype=torch.float32, device=q_idx.device)
    live = q_n > 0  # entries with a gallery partner, row-major: columns ascend per query
    if not bool(live.any()):
        return shared.view(c, G)
    n = q_n[live]
    e_col, e_v = q_idx[live], q_val[live]
    e_base = (torch.arange(c, device=q_idx.device, dtype=torch.int32) * G)[:, None].expand(c, q_idx.shape[1])[live]
    ends = torch.cumsum(n, 0)
    first = ends - n  # each entry's first pair
    total = int(ends[-1])
    # The entry of each pair: a cumulative sum of +1 where an entry's run of pairs starts.
    mark = torch.zeros(total, dtype=torch.int32, device=q_idx.device)
    mark[first[1:]] = 1
    entry = torch.cumsum(mark, 0, dtype=torch.int32)
    # Its gallery entry in the inverted index: +1 along a run, a jump to the next column's first entry between runs.
    starts = g_start[e_col]
    jump = starts.clone()
    jump[1:] -= starts[:-1] + n[:-1] - 1
    delta = torch.ones(total, dtype=torch.int32, device=q_idx.device)
    delta[first] = jump.to(torch.int32)
    gpos = torch.cumsum(delta, 0, dtype=torch.int32)
    contrib = torch.minimum(e_v.index_select(0, entry), g_v.index_select(0, gpos))
    flat = e_base.index_select(0, entry).add_(g_row.index_select(0, gpos))
    return shared.index_add_(0, flat, contrib).view(c, G)


def _rerank_rows(
    src: Any, Q: int, G: int, params: ReRanking, dev: torch.device, chunk_size: int | None, memory_budget: int
) -> torch.Tensor:
    """The whole algorithm on a row source; returns the (Q, G) float32 re-ranked distances on ``dev``."""
    N = Q + G
    k1, k2 = int(params.k1), int(params.k2)
    K = min(N, max(k1 + 1, k2))
    k1p = min(N, k1 + 1)
    khp = min(N, int(round(k1 / 2)) + 1)  # round half to even, as np.around
    k2p = min(N, k2)
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise EvaluationError(f"chunk_size={chunk_size} must be >= 1 (or None to size chunks from memory_budget)")
        step = int(chunk_size)
    else:
        # about 24 bytes per row element in the widest pass (a row block, its int64 keys, top-k work)
        step = max(1, min(N, memory_budget // (24 * N)))
    with torch.no_grad():
        top = torch.empty(N, K, dtype=torch.int64, device=dev)
        scale = torch.empty(N, dtype=torch.float32, device=dev)
        raw = None
        for r0 in range(0, N, step):
            r1 = min(N, r0 + step)
            raw = src.rows(r0, r1, raw)
            m = raw.amax(1)
            if not bool((m > 0).all()):
                bad = (torch.nonzero(m <= 0).flatten() + r0).tolist()
                raise EvaluationError(
                    f"re_ranking: column(s) {bad[:10]} of the combined [[q_q, q_g], [q_g^T, g_g]] distance matrix "
                    "are all zero, so they cannot be normalised by their maximum; pass distances (not all zero), "
                    "e.g. remove duplicated items or check the features"
                )
            scale[r0:r1] = m
            top[r0:r1] = _stable_topk(raw.div_(m[:, None]), K)
        R = _reciprocal(top[:, :k1p], step)
        RH = _reciprocal(top[:, :khp], step)
        # Each row's expanded set has at most k1p * (khp + 1) entries before de-duplication.
        enc_step = max(1, min(step, memory_budget // (48 * max(N, k1p * k1p * khp))))
        V_idx, V_val = _encode(src, scale, top, R, RH, k1p, khp, N, enc_step)
        if k2 != 1:
            qe_step = max(1, min(step, memory_budget // (40 * k2p * V_idx.shape[1])))
            V_idx, V_val = _expand(V_idx, V_val, top, k2p, N, qe_step)
        del top, R, RH
        return _final(src, scale, V_idx, V_val, Q, G, float(params.lambda_value), step, memory_budget)


# --------------------------------------------------------------------------- public API


def _check_dist(x: ArrayLike, name: str) -> tuple[torch.Tensor, float, float]:
    t = as_tensor(x, name)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise EvaluationError(f"{name}: expected a non-empty 2-D distance matrix, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise EvaluationError(f"{name}: dtype {t.dtype} is not a real number type; pass float distances")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    low, high = torch.aminmax(t)  # NaN propagates into both
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise EvaluationError(f"{name}: contains NaN or inf; fix the features or distances it was computed from")
    return t, float(low), float(high)


def re_ranking(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray | torch.Tensor:
    """k-reciprocal re-ranking of query x gallery distances (Zhong et al., CVPR 2017).

    Args:
        q_g_dist: (Q, G) query-gallery distances (smaller = closer), numpy or torch.
        q_q_dist: (Q, Q) query-query distances; g_g_dist: (G, G) gallery-gallery distances.
            All three are squared inside, as in the reference code: pass Euclidean distances
            (``||x - y||``, on L2-normalised features for a cosine model) to get the authors'
            squared-Euclidean re-ranking.
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3): k-reciprocal neighbours, query
            expansion neighbours, weight of the original distance in the final one.
        chunk_size: rows per block (default: sized from ``memory_budget`` bytes); results do
            not depend on it.
        device: where to compute (default: the device of a torch input, else CPU).

    Returns:
        (Q, G) float32 re-ranked distances (smaller = closer): a numpy array when ``q_g_dist``
        is numpy, else a tensor on ``device``. Equal to the reference implementation to float32
        precision, with exact ties in the neighbour lists broken by index (stable sort).

    Transductive: every query's result depends on the whole gallery and on the other queries.

    Raises:
        EvaluationError: shapes that do not fit together, non-finite values, values that look
            like similarities (clearly negative), all-zero columns, or bad parameters.
    """
    _check_params(k1, k2, lambda_value)
    checked = {
        name: _check_dist(x, name)
        for name, x in (("q_g_dist", q_g_dist), ("q_q_dist", q_q_dist), ("g_g_dist", g_g_dist))
    }
    qg, qq, gg = (c[0] for c in checked.values())
    Q, G = qg.shape
    if qq.shape != (Q, Q):
        raise EvaluationError(
            f"q_q_dist: shape {tuple(qq.shape)} but q_g_dist has {Q} queries; pass the square ({Q}, {Q}) "
            "query-query distances (same query order)"
        )
    if gg.shape != (G, G):
        raise EvaluationError(
            f"g_g_dist: shape {tuple(gg.shape)} but q_g_dist has {G} gallery items; pass the square "
            f"({G}, {G}) gallery-gallery distances (same gallery order)"
        )
    scale = max(max(abs(lo), abs(hi)) for _, lo, hi in checked.values())
    for name, (_, low, _) in checked.items():
        if low < -1e-4 * scale:
            raise EvaluationError(
                f"{name}: has negative entries (min {low:.4g}); re-ranking takes distances (smaller = closer), not "
                "similarities: pass e.g. Euclidean distances, or sqrt(2 - 2 * cosine) for L2-normalised features"
            )
    dtype = torch.promote_types(torch.promote_types(qg.dtype, qq.dtype), gg.dtype)
    dev = resolve_device(device, q_g_dist, q_q_dist, g_g_dist)
    src = _Source(qg.to(dtype), qq.to(dtype), gg.to(dtype), True, dev)
    out = _rerank_rows(src, Q, G, ReRanking(int(k1), int(k2), float(lambda_value)), dev, chunk_size, memory_budget)
    if isinstance(q_g_dist, torch.Tensor):
        return out
    return out.cpu().numpy()


def re_ranking_features(
    query_feats: ArrayLike,
    gallery_feats: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    metric: str = "cosine",
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray | torch.Tensor:
    """k-reciprocal re-ranking straight from features, with memory bounded by ``memory_budget``.

    Re-ranks the squared Euclidean distances of the features (L2-normalised first for
    ``metric="cosine"``, raw for ``"euclidean"``), what the protocols do and what
    :func:`re_ranking` computes from the Euclidean distance matrices, up to float rounding of the
    distances. The distance rows are computed a block at a time, so neither the (Q+G)^2 matrix nor
    the G x G gallery matrix ever exists: a 50k-image gallery needs memory for the (Q, G) result,
    the features and the sparse neighbour lists only. Returns numpy for numpy queries, else torch.
    """
    _check_params(k1, k2, lambda_value)
    check_choice(metric, METRICS, "metric")
    qf, gf = check_feat_pair(query_feats, gallery_feats)
    dev = resolve_device(device, query_feats, gallery_feats)
    dtype = work_dtype(qf, gf)
    x = torch.cat(
        [prepare_feats(qf, "query_feats", metric, dev, dtype), prepare_feats(gf, "gallery_feats", metric, dev, dtype)]
    )
    Q, G = qf.shape[0], gf.shape[0]
    with torch.no_grad():
        out = _rerank_rows(
            _FeatureSource(x, Q, dev),
            Q,
            G,
            ReRanking(int(k1), int(k2), float(lambda_value)),
            dev,
            chunk_size,
            memory_budget,
        )
    return out if isinstance(query_feats, torch.Tensor) else out.cpu().numpy()


def _rerank_squared(
    qg: torch.Tensor,
    qq: torch.Tensor,
    gg: torch.Tensor,
    params: ReRanking,
    dev: torch.device,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Re-ranking from already *squared* distances (what the protocols compute from features)."""
    Q, G = qg.shape
    return _rerank_rows(_Source(qg, qq, gg, False, dev), Q, G, params, dev, chunk_size, memory_budget)


def squared_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||^2`` (clamped at 0 against rounding), in the inputs' dtype."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_(min=0)


#: Public name of :func:`_rerank_squared` for the protocols (cmemd.evaluation.protocol).
rerank_squared = _rerank_squared

__all__ = ["ReRanking", "as_reranking", "re_ranking", "re_ranking_features", "rerank_squared", "squared_euclidean"]
