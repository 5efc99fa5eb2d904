"""Re-identification metrics on features: CMC, mAP, mINP, vectorised and chunked over queries.

Ranking rule (the field's): gallery items are sorted by similarity, descending, with a *stable*
sort, so that equal similarities keep gallery order (smaller gallery index first).

How it is computed without a full sort per query. Every (query, gallery item) pair gets an
integer key that orders exactly like that stable ranking: the similarity's bits mapped to an
order-preserving integer (descending) in the high 32 bits, the gallery index in the low 32 bits.
Keys are unique per row, so

- the true matches of a query (at most ``P`` = largest number of gallery images of one id) are
  gathered and sorted: ``T_0 < T_1 < ...``;
- for each true match, the non-matches that rank before it are counted:
  ``rank(T_i) = i + 1 + #{non-matches with key < T_i}`` (one comparison pass per true match when ``P``
  is small, as in single-shot galleries; otherwise every non-removed item is located among them with
  ``searchsorted``, ``G log P``, and a histogram of those locations gives the counts);
- identity-deduplicated CMC counts the distinct ids that have an image ranked before the best
  true match: gallery columns are grouped by id once, so that is a cumulative sum per row.

Removed items get the largest key and are never counted. Float64 similarities (float64
features) are ranked by their dense rank within the chunk instead of their bits, which keeps the
result exact for them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cmemd.errors import EvaluationError
from cmemd.numerics import l2_normalize

ArrayLike = np.ndarray | torch.Tensor

#: The removal rules named by a string; a :class:`SameLocation` rule is the other kind of ``removal=``.
REMOVAL_RULES = ("none", "same-pid-same-cam")
CMC_KINDS = ("standard", "identity-dedup")
METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class SameLocation:
    """Removal rule of cameras that watch the same place: a query of camera ``q`` loses every gallery item of
    camera ``g``, whatever its identity, for each ``(q, g)`` in ``pairs`` (e.g. SYSU-MM01's cam3 queries and
    cam2 gallery). A benchmark defines its rule once and passes it as ``removal=``; ``name`` is what results,
    settings and reports record."""

    name: str
    pairs: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name in REMOVAL_RULES:
            raise EvaluationError(
                f"SameLocation.name={self.name!r}: give a non-empty name other than {REMOVAL_RULES} (results record it)"
            )
        pairs = tuple(self.pairs) if isinstance(self.pairs, (tuple, list)) else ()
        ok = bool(pairs) and all(
            isinstance(p, (tuple, list))
            and len(p) == 2
            and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in p)
            for p in pairs
        )
        if not ok:
            raise EvaluationError(
                f"SameLocation {self.name!r}: pairs={self.pairs!r} must be a non-empty tuple of "
                "(query camera, gallery camera) integer pairs, e.g. ((3, 2),)"
            )
        object.__setattr__(self, "pairs", tuple((int(q), int(g)) for q, g in pairs))

    def __str__(self) -> str:
        return self.name


#: What ``removal=`` accepts: a name of :data:`REMOVAL_RULES` or a :class:`SameLocation` rule.
Removal = str | SameLocation

_MAX_KEY = torch.iinfo(torch.int64).max
# Bytes per (query, gallery) element of the working tensors of one chunk (similarity, keys,
# searchsorted output, masks, cumulative sums); used to size chunks from a memory budget.
_BYTES_PER_PAIR = 48
DEFAULT_MEMORY_BUDGET = 512 * 2**20
# Largest number of true matches per id for which _rank_chunk counts the non-matches ranked before each true
# match by comparison passes (P passes over the chunk) instead of a binary search per item (searchsorted).
_COMPARE_MAX_P = 16
# int64 keys per block of rows in those passes: 1 MiB, in the L2 cache for the P passes over it
_COMPARE_BLOCK = 1 << 17


@dataclass
class EvalResult:
    """Metrics of one query set against one gallery.

    ``cmc[k-1]`` is Rank-k (fraction of valid queries). ``mAP``/``mINP`` are fractions in [0, 1].
    Per-query arrays ``ap``, ``inp``, ``first_hit`` (1-based rank of the first true match, in the
    CMC kind used) cover the valid queries in query order; ``valid_mask`` marks them among all
    queries (a query is invalid when it has no true match after the removal rule).
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_excluded: int
    ap: np.ndarray
    inp: np.ndarray
    first_hit: np.ndarray
    valid_mask: np.ndarray
    removal: str = "none"
    cmc_kind: str = "standard"
    metric: str = "cosine"
    info: dict[str, Any] = field(default_factory=dict)

    def rank(self, k: int) -> float:
        """Rank-k accuracy (fraction); Rank-k beyond ``max_rank`` is not known."""
        if not 1 <= k <= len(self.cmc):
            raise EvaluationError(f"rank k={k} outside 1..{len(self.cmc)} (raise max_rank in evaluate())")
        return float(self.cmc[k - 1])


# --------------------------------------------------------------------------- validation


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise EvaluationError(f"{name}: cannot convert to an array ({e}); pass a numpy array or torch tensor") from e
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise EvaluationError(f"{name}: dtype {arr.dtype} is not numeric; pass numbers (integer ids / float features)")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise EvaluationError(f"{name}={value!r} is unknown; use one of {', '.join(repr(c) for c in choices)}")


def _check_removal(removal: Removal) -> None:
    if isinstance(removal, SameLocation):
        return
    if not isinstance(removal, str) or removal not in REMOVAL_RULES:
        raise EvaluationError(
            f"removal={removal!r} is unknown; use one of {', '.join(repr(c) for c in REMOVAL_RULES)} or a "
            "benchmark's cmemd.evaluation.SameLocation rule (e.g. cmemd.benchmarks.sysu.SAME_LOCATION)"
        )


def removal_name(removal: Removal) -> str:
    """The name results record for a removal rule: the string itself, or a :class:`SameLocation`'s ``name``."""
    return removal.name if isinstance(removal, SameLocation) else removal


def _nonfinite_rows(t: torch.Tensor) -> list[int]:
    """Indices of the rows of a float matrix holding NaN or inf.

    One cheap reduction settles the usual case: a NaN or inf entry makes its row's sum NaN or inf (non-finite
    values absorb additions), so finite row sums prove every entry finite. Only rows whose sum is not finite (a
    bad entry, or finite entries so large that the sum overflows) are checked entry by entry. An elementwise
    isfinite of the whole matrix costs about 30 times the sum, and evaluate() checks its queries on every call.
    """
    suspect = torch.nonzero(~torch.isfinite(t.sum(dim=1))).flatten()
    if suspect.numel() == 0:
        return []
    return suspect[~torch.isfinite(t[suspect]).all(dim=1)].tolist()


def _check_feats(x: ArrayLike, name: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.dim() != 2:
        raise EvaluationError(
            f"{name}: expected a 2-D (N, D) feature matrix, got shape {tuple(t.shape)}; reshape or stack the features"
        )
    if t.shape[0] == 0:
        raise EvaluationError(f"{name}: no rows; pass at least one feature vector")
    if not (t.is_floating_point()):
        t = t.to(torch.float32)
    idx = _nonfinite_rows(t)
    if idx:
        raise EvaluationError(
            f"{name}: {len(idx)} row(s) contain NaN or inf (indices {_show(idx)}); "
            "fix the feature extraction (e.g. a diverged model or fp16 overflow) before evaluating"
        )
    return t


def _check_feat_pair(
    a: ArrayLike, b: ArrayLike, name_a: str = "query_feats", name_b: str = "gallery_feats"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_check_feats` of two feature sets that are compared with each other, and their widths match."""
    fa, fb = _check_feats(a, name_a), _check_feats(b, name_b)
    if fa.shape[1] != fb.shape[1]:
        raise EvaluationError(
            f"{name_a} have dimension {fa.shape[1]} but {name_b} {fb.shape[1]}; extract both with "
            "the same model and feature (e.g. both after the BN-neck)"
        )
    return fa, fb


def _check_labels(x: ArrayLike, name: str, n: int, feats_name: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.dim() != 1:
        raise EvaluationError(f"{name}: expected a 1-D array, got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise EvaluationError(
            f"{name}: length {t.shape[0]} does not match {feats_name} ({n} rows); pass one label per feature row"
        )
    if t.is_floating_point():
        if not bool((t == torch.round(t)).all()):
            raise EvaluationError(f"{name}: labels must be integers, got non-integer values")
    elif t.dtype == torch.bool or t.is_complex():
        raise EvaluationError(f"{name}: labels must be integers, got dtype {t.dtype}")
    return t.to(torch.int64)


def _show(idx: list[int], limit: int = 10) -> str:
    head = ", ".join(str(i) for i in idx[:limit])
    return head + (f", ... ({len(idx) - limit} more)" if len(idx) > limit else "")


def _work_dtype(*feats: torch.Tensor) -> torch.dtype:
    # float64 features are ranked in float64; everything else in float32 (the field's choice).
    return torch.float64 if any(f.dtype == torch.float64 for f in feats) else torch.float32


def _prepare_feats(t: torch.Tensor, name: str, metric: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = t.to(device=device, dtype=dtype)
    if metric == "cosine":
        zero = ~t.any(dim=1)
        if bool(zero.any()):
            idx = torch.nonzero(zero).flatten().tolist()
            raise EvaluationError(
                f"{name}: {len(idx)} zero-norm row(s) (indices {_show(idx)}) cannot be L2-normalised for "
                "metric='cosine'; drop those rows or fix the feature extractor (a dead feature is a bug, not a tie)"
            )
        return l2_normalize(t, dim=1)  # scale-safe: features of 1e20 or 1e-20 rank as the same features of 1
    _check_euclidean_range(t, name)
    return t


def _check_euclidean_range(t: torch.Tensor, name: str) -> None:
    """Raw features whose squared distances over- or underflow the working dtype cannot be ranked by
    ``metric='euclidean'`` (every distance inf/NaN or 0); say so instead of ranking noise."""
    info = torch.finfo(t.dtype)
    m = float(t.abs().amax())
    if m == 0:
        return  # all-zero features: every distance is exactly 0, a real (if useless) tie
    if 4.0 * t.shape[1] * m * m > info.max or m * m < info.tiny:
        raise EvaluationError(
            f"{name}: entries up to {m:.3g} make squared Euclidean distances {'overflow' if m > 1 else 'underflow'} "
            f"{str(t.dtype).replace('torch.', '')}; divide the query and gallery features by the same factor (the "
            "Euclidean ranking does not change), pass float64 features, or use metric='cosine' (scale-safe)"
        )


def _resolve_device(device: str | torch.device | None, *xs: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- gallery layout


@dataclass
class _Gallery:
    """Gallery columns regrouped by id (stable), with each id's contiguous segment."""

    order: torch.Tensor  # (G,) original gallery index of each regrouped column
    pids: torch.Tensor  # (G,) regrouped pids
    cams: torch.Tensor  # (G,) regrouped cams
    ids: torch.Tensor  # (U,) distinct ids, ascending
    starts: torch.Tensor  # (U,) first column of each id
    counts: torch.Tensor  # (U,)
    max_count: int


def _group_gallery(pids: torch.Tensor, cams: torch.Tensor) -> _Gallery:
    order = torch.argsort(pids, stable=True)
    sp = pids[order]
    ids, counts = torch.unique_consecutive(sp, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return _Gallery(order, sp, cams[order], ids, starts, counts, int(counts.max()))


# --------------------------------------------------------------------------- ranking core


def ordered_bits(sim: torch.Tensor) -> torch.Tensor:
    """int32 codes of float32 values, monotone in the value (equal values, -0.0 and +0.0 included, share a code).

    Computing them once for a similarity matrix lets every gallery drawn from its columns skip the conversion.
    """
    bits = sim.to(torch.float32).contiguous().view(torch.int32)
    sign = bits >> 31  # 0 for +, -1 for -
    # negatives: flip the magnitude bits so larger floats get larger codes, then shift up by one so -0.0 meets +0.0
    return (bits ^ (sign & 0x7FFFFFFF)).sub_(sign)


def _order_keys(sim: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """int64 keys, ascending = similarity descending, then original gallery index ascending.

    ``sim`` is a float similarity block or its :func:`ordered_bits` (int32).
    """
    if sim.dtype == torch.float64:
        # Dense rank of the values inside this chunk (exact for float64).
        _, inv = torch.unique(sim, sorted=True, return_inverse=True)
        key = -inv.to(torch.int64)
        return key.bitwise_left_shift_(32).add_(order[None, :])
    codes = sim if sim.dtype == torch.int32 else ordered_bits(sim)
    # (~codes << 32) + order (~x = -x - 1: descending in the value) in one pass that reads int32 and writes int64:
    # order - 2^32 - codes * 2^32, which stays inside int64 for every int32 code.
    return torch.add(order[None, :] - (1 << 32), codes, alpha=-(1 << 32))


def removed_pairs(
    removal: Removal, qp: torch.Tensor, qc: torch.Tensor, gp: torch.Tensor, gc: torch.Tensor
) -> torch.Tensor | None:
    """(Q, G) bool mask of the gallery items ``removal`` hides from each query; None for ``"none"``.

    A :class:`SameLocation` rule: a query of camera q loses every item of camera g, for each of its (q, g)
    pairs; ``same-pid-same-cam``: items with the query's id and camera number. The one definition of the rules
    (the ranking and the report use it; the ranking fills a SameLocation rule by index, the same pairs).
    """
    _check_removal(removal)
    if isinstance(removal, SameLocation):
        mask = torch.zeros(len(qc), len(gc), dtype=torch.bool, device=qc.device)
        for q, g in removal.pairs:
            mask |= (qc == q)[:, None] & (gc == g)[None, :]
        return mask
    if removal == "same-pid-same-cam":
        return (qp[:, None] == gp[None, :]) & (qc[:, None] == gc[None, :])
    return None


def _rank_chunk(
    sim: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    g: _Gallery,
    removal: Removal,
    cmc: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query of the chunk: (valid, ap, inp, first_hit). ``sim`` columns follow ``g.order``."""
    n, G = sim.shape
    dev = sim.device
    key = _order_keys(sim, g.order)
    del sim
    if isinstance(removal, SameLocation):
        # Each (query camera, gallery camera) pair hides a grid of rows x columns: filled by index, a fraction of
        # the chunk, instead of a full (n, G) mask read (the same pairs as removed_pairs).
        for q, c in removal.pairs:
            rows = torch.nonzero(qc == q).flatten()
            cols = torch.nonzero(g.cams == c).flatten()
            if rows.numel() and cols.numel():
                key.index_put_((rows[:, None], cols[None, :]), torch.tensor(_MAX_KEY, device=dev))
    else:
        removed = removed_pairs(removal, qp, qc, g.pids, g.cams)
        if removed is not None:
            key.masked_fill_(removed, _MAX_KEY)
            del removed

    # Keys of each query's true matches (its id's contiguous segment), sorted.
    P = g.max_count
    pos = torch.searchsorted(g.ids, qp).clamp_(max=len(g.ids) - 1)
    present = g.ids[pos] == qp
    cnt = torch.where(present, g.counts[pos], torch.zeros_like(pos))
    ar = torch.arange(P, device=dev)
    is_true = ar[None, :] < cnt[:, None]
    # Padding repeats the segment's first column: always in range, and a true match whenever the row has one.
    cols = g.starts[pos][:, None] + torch.where(is_true, ar[None, :], 0)
    raw = key.gather(1, cols)
    tkeys = raw.masked_fill(~is_true, _MAX_KEY)
    tkeys, _ = torch.sort(tkeys, dim=1)
    R = (tkeys != _MAX_KEY).sum(1)
    valid = R > 0
    # Hide the true matches from the counts below: n x P writes instead of an (n, G) comparison and fill. A row
    # without a true match writes its own keys back (its columns all repeat one column: no conflicting writes).
    key.scatter_(1, cols, torch.where(present[:, None], _MAX_KEY, raw))

    # Non-matches located among the true matches: before[:, i] = how many rank before the i-th true match.
    ahead = None
    if P <= _COMPARE_MAX_P:
        # A few true matches per id (single-shot galleries): one comparison pass per true match costs less than a
        # binary search per item. The counts are the same integers as below (past R they differ: never read).
        # Rows are taken a cache's worth at a time, so that the P passes read their keys from the cache.
        before = torch.empty(n, P, dtype=torch.int64, device=dev)
        ahead = torch.empty(n, G, dtype=torch.bool, device=dev)  # non-removed non-matches before the best true match
        sub = max(1, _COMPARE_BLOCK // G)
        for s in range(0, n, sub):
            block, bounds = key[s : s + sub], tkeys[s : s + sub]
            torch.lt(block, bounds[:, :1], out=ahead[s : s + sub])
            before[s : s + sub, 0] = ahead[s : s + sub].sum(1, dtype=torch.int32)
            for i in range(1, P):
                before[s : s + sub, i] = (block < bounds[:, i : i + 1]).sum(1, dtype=torch.int32)
    else:
        loc = torch.searchsorted(tkeys, key)  # (n, G): number of true keys below each item
        hist = torch.zeros(n, P + 1, dtype=torch.int64, device=dev)
        hist.scatter_add_(1, loc, torch.ones(1, dtype=torch.int64, device=dev).expand(n, G))
        del loc
        before = torch.cumsum(hist, 1)[:, :P]
    ranks = before + (ar + 1)[None, :]  # rank of the i-th true match (valid for i < R)
    in_r = ar[None, :] < R[:, None]
    Rf = R.clamp(min=1).to(torch.float64)
    prec = torch.where(in_r, (ar + 1)[None, :].to(torch.float64) / ranks.to(torch.float64), 0.0)
    ap = prec.sum(1) / Rf
    last = ranks.gather(1, (R - 1).clamp(min=0)[:, None])[:, 0]
    inp = Rf / last.to(torch.float64)

    if cmc == "standard":
        first = ranks[:, 0]
    else:
        if ahead is None:
            ahead = key < tkeys[:, :1]  # non-removed non-matches ranked before the best true match
        # Running count at the end of each id's segment: an id has an item ahead when its count grows there
        # (segments are contiguous and cover every column, so each one starts where the previous one ends).
        ends = torch.cumsum(ahead, 1, dtype=torch.int32).index_select(1, g.starts + g.counts - 1)
        first = (ends[:, 0] > 0).to(torch.int64) + (ends[:, 1:] > ends[:, :-1]).sum(1) + 1
    return valid, ap, inp, first


def _chunk_rows(num_gallery: int, chunk_size: int | None, num_query: int, memory_budget: int) -> int:
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise EvaluationError(f"chunk_size={chunk_size} must be >= 1 (or None to size chunks from memory)")
        return int(chunk_size)
    return max(1, min(num_query, memory_budget // (_BYTES_PER_PAIR * max(num_gallery, 1))))


def _summarise(
    parts: Sequence[tuple[torch.Tensor, ...]], max_rank: int, removal: Removal, cmc: str, metric: str
) -> EvalResult:
    valid = torch.cat([p[0] for p in parts]).cpu().numpy()
    ap = torch.cat([p[1] for p in parts]).cpu().numpy()[valid]
    inp = torch.cat([p[2] for p in parts]).cpu().numpy()[valid]
    first = torch.cat([p[3] for p in parts]).cpu().numpy().astype(np.int64)[valid]
    nv = int(valid.sum())
    if nv == 0:
        raise EvaluationError(
            f"no query has a true match in the gallery after removal={removal_name(removal)!r} ({len(valid)} queries); "
            "check that query and gallery pids use the same labels and that the removal rule fits the dataset"
        )
    ks = np.arange(1, max_rank + 1)
    cmc_curve = (first[None, :] <= ks[:, None]).mean(1)
    return EvalResult(
        cmc=cmc_curve,
        mAP=float(ap.mean()),
        mINP=float(inp.mean()),
        num_valid=nv,
        num_excluded=int(len(valid) - nv),
        ap=ap,
        inp=inp,
        first_hit=first,
        valid_mask=valid,
        removal=removal_name(removal),
        cmc_kind=cmc,
        metric=metric,
    )


def _check_options(removal: Removal, cmc: str, max_rank: int) -> None:
    _check_removal(removal)
    _check_choice(cmc, CMC_KINDS, "cmc")
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise EvaluationError(f"max_rank={max_rank!r} must be a positive integer (20 for the usual Rank-1..20)")


def _similarity(q: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor | None, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return q @ g.T
    # Negative squared Euclidean distance: same order as the distance, no sqrt rounding.
    assert g_sq is not None, "metric='euclidean' needs g_sq, the gallery's squared norms"
    return 2.0 * (q @ g.T) - (q * q).sum(1)[:, None] - g_sq[None, :]


# --------------------------------------------------------------------------- public API


def evaluate(
    query_feats: ArrayLike,
    query_pids: ArrayLike,
    query_cams: ArrayLike,
    gallery_feats: ArrayLike,
    gallery_pids: ArrayLike,
    gallery_cams: ArrayLike,
    *,
    removal: Removal = "none",
    cmc: str = "standard",
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> EvalResult:
    """CMC, mAP and mINP of query features against gallery features.

    Args:
        query_feats, gallery_feats: (N, D) float arrays or tensors.
        query_pids, query_cams, gallery_pids, gallery_cams: 1-D integer labels, one per row.
        removal: gallery items dropped per query — ``"none"``; ``"same-pid-same-cam"`` (the items with the
            query's id and camera number); or a :class:`SameLocation` rule (a query of camera q drops every
            gallery item of camera g, for each of its (q, g) pairs; e.g. SYSU-MM01's cam3/cam2). Results record
            the rule's name.
        cmc: ``"standard"`` or ``"identity-dedup"`` (each gallery id counts once, at its best-ranked image).
            mAP/mINP always use the full ranked list.
        metric: ``"cosine"`` (on L2-normalised features, whatever their scale; zero-norm rows raise) or
            ``"euclidean"`` (on the raw features; entries so large or small that squared distances over- or
            underflow raise).
        max_rank: length of the returned CMC curve.
        chunk_size: queries per chunk; by default sized so one chunk's work tensors fit
            ``memory_budget`` bytes.
        device: where to compute (default: the features' device, else CPU).

    Similarities are computed in float32 (float64 when a feature matrix is float64); ties are
    ranked by gallery index, as a stable sort does. Queries without a true match after removal
    are excluded from every metric and counted in ``num_excluded``.

    Raises:
        EvaluationError: inconsistent lengths, non-finite or zero-norm (cosine) features, unknown
            option names, or no query with a true match.
    """
    _check_options(removal, cmc, max_rank)
    _check_choice(metric, METRICS, "metric")
    qf, gf = _check_feat_pair(query_feats, gallery_feats)
    qp = _check_labels(query_pids, "query_pids", qf.shape[0], "query_feats")
    qc = _check_labels(query_cams, "query_cams", qf.shape[0], "query_feats")
    gp = _check_labels(gallery_pids, "gallery_pids", gf.shape[0], "gallery_feats")
    gc = _check_labels(gallery_cams, "gallery_cams", gf.shape[0], "gallery_feats")
    dev = _resolve_device(device, query_feats, gallery_feats)
    dtype = _work_dtype(qf, gf)
    qf = _prepare_feats(qf, "query_feats", metric, dev, dtype)
    gf = _prepare_feats(gf, "gallery_feats", metric, dev, dtype)
    qp, qc, gp, gc = (t.to(dev) for t in (qp, qc, gp, gc))

    g = _group_gallery(gp, gc)
    gf = gf[g.order]
    g_sq = (gf * gf).sum(1) if metric == "euclidean" else None
    step = _chunk_rows(gf.shape[0], chunk_size, qf.shape[0], memory_budget)
    parts = []
    with torch.no_grad():
        for s in range(0, qf.shape[0], step):
            sim = _similarity(qf[s : s + step], gf, g_sq, metric)
            parts.append(_rank_chunk(sim, qp[s : s + step], qc[s : s + step], g, removal, cmc))
    return _summarise(parts, int(max_rank), removal, cmc, metric)


def evaluate_similarity(
    similarity: ArrayLike,
    query_pids: ArrayLike,
    query_cams: ArrayLike,
    gallery_pids: ArrayLike,
    gallery_cams: ArrayLike,
    *,
    removal: Removal = "none",
    cmc: str = "standard",
    max_rank: int = 20,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> EvalResult:
    """Same metrics as :func:`evaluate` from a precomputed (Q, G) similarity matrix (higher = closer).

    For distances pass ``-distance``. The ranking is exact for the given values (float64 stays
    float64; other dtypes are ranked as float32).
    """
    _check_options(removal, cmc, max_rank)
    sim = _as_tensor(similarity, "similarity")
    if sim.dim() != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise EvaluationError(f"similarity: expected a non-empty (Q, G) matrix, got shape {tuple(sim.shape)}")
    if not sim.is_floating_point():
        sim = sim.to(torch.float64)
    if not bool(torch.isfinite(sim).all()):
        raise EvaluationError("similarity: contains NaN or inf; fix the features or distances it was computed from")
    Q, G = sim.shape
    qp = _check_labels(query_pids, "query_pids", Q, "similarity rows")
    qc = _check_labels(query_cams, "query_cams", Q, "similarity rows")
    gp = _check_labels(gallery_pids, "gallery_pids", G, "similarity columns")
    gc = _check_labels(gallery_cams, "gallery_cams", G, "similarity columns")
    dev = _resolve_device(device, similarity)
    step = _chunk_rows(G, chunk_size, Q, memory_budget)
    return _evaluate_checked_similarity(sim, qp, qc, gp, gc, removal, cmc, int(max_rank), step, dev, "precomputed")


def top_k(
    query_feats: ArrayLike,
    gallery_feats: ArrayLike,
    k: int,
    *,
    removal: Removal = "none",
    query_pids: ArrayLike | None = None,
    query_cams: ArrayLike | None = None,
    gallery_pids: ArrayLike | None = None,
    gallery_cams: ArrayLike | None = None,
    metric: str = "cosine",
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best gallery indices of each query and their similarities, ranked as :func:`evaluate` ranks
    (similarity descending, exact ties by gallery index): ``(indices (Q, k) int64, scores (Q, k) float32)``.

    Items ``removal`` hides (labels needed unless ``"none"``) rank after every other item, by index, with score
    ``-inf``. ``k`` is capped at the gallery size. The ranked lists of the report and ``cmemd search`` use it.
    """
    _check_removal(removal)
    _check_choice(metric, METRICS, "metric")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise EvaluationError(f"k={k!r} must be a positive integer (the number of matches to list)")
    qf, gf = _check_feat_pair(query_feats, gallery_feats)
    dev = _resolve_device(device, query_feats, gallery_feats)
    dtype = _work_dtype(qf, gf)
    q = _prepare_feats(qf, "query_feats", metric, dev, dtype)
    g = _prepare_feats(gf, "gallery_feats", metric, dev, dtype)
    G = g.shape[0]
    with torch.no_grad():
        sim = _similarity(q, g, (g * g).sum(1) if metric == "euclidean" else None, metric)
        key = _order_keys(sim, torch.arange(G, device=dev))
        if removal != "none":
            if query_pids is None or query_cams is None or gallery_pids is None or gallery_cams is None:
                raise EvaluationError(
                    f"removal={removal_name(removal)!r} needs query_pids, query_cams, gallery_pids and gallery_cams"
                )
            labels = [
                (query_pids, "query_pids", q.shape[0]),
                (query_cams, "query_cams", q.shape[0]),
                (gallery_pids, "gallery_pids", G),
                (gallery_cams, "gallery_cams", G),
            ]
            qp, qc, gp, gc = (_check_labels(x, name, n, name.split("_")[0] + "_feats").to(dev) for x, name, n in labels)
            hidden = removed_pairs(removal, qp, qc, gp, gc)
            assert hidden is not None, "removed_pairs gives a mask for every rule but 'none'"
            # after every kept item (largest keys), still ordered by gallery index
            key = torch.where(hidden, torch.arange(G, device=dev)[None, :] + (1 << 62), key)
            sim = sim.masked_fill(hidden, float("-inf"))
        kk = min(int(k), G)
        idx = torch.topk(key, kk, dim=1, largest=False, sorted=True).indices
        scores = sim.gather(1, idx).to(torch.float32)
    return idx.cpu().numpy(), scores.cpu().numpy()


def _evaluate_checked_similarity(
    sim: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    gp: torch.Tensor,
    gc: torch.Tensor,
    removal: Removal,
    cmc: str,
    max_rank: int,
    step: int,
    dev: torch.device,
    metric: str,
    columns: torch.Tensor | None = None,
) -> EvalResult:
    """The chunk loop of :func:`evaluate_similarity` on inputs already validated.

    ``sim`` may be :func:`ordered_bits` codes; ``columns`` picks the gallery's columns out of a wider matrix.
    """
    qp, qc, gp, gc = (t.to(dev) for t in (qp, qc, gp, gc))
    g = _group_gallery(gp, gc)
    order = g.order.to(sim.device)
    if columns is not None:
        order = columns.to(sim.device)[order]  # one gather per chunk: gallery selection and id grouping together
    parts = []
    with torch.no_grad():
        for s in range(0, sim.shape[0], step):
            chunk = sim[s : s + step].index_select(1, order).to(dev)
            parts.append(_rank_chunk(chunk, qp[s : s + step], qc[s : s + step], g, removal, cmc))
    return _summarise(parts, max_rank, removal, cmc, metric)


# --------------------------------------------------------------------------- the metric core's public names
# What the protocols (cmemd.evaluation.protocol, cmemd.benchmarks) build on: input checks, feature preparation,
# similarity and the ranking loop on a precomputed similarity matrix. Bound here, after the definitions, so that
# the functions above keep their bodies (and their private names inside this module).

as_tensor = _as_tensor
check_choice = _check_choice
check_removal = _check_removal
check_feats = _check_feats
check_feat_pair = _check_feat_pair
check_labels = _check_labels
check_options = _check_options
work_dtype = _work_dtype
prepare_feats = _prepare_feats
resolve_device = _resolve_device
similarity = _similarity
chunk_rows = _chunk_rows
evaluate_checked_similarity = _evaluate_checked_similarity
