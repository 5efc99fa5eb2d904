"""The SYSU-MM01 and RegDB evaluation protocols on precomputed features.

SYSU-MM01: the gallery pool (every visible test image, all four visible cameras) is featurised
ONCE; each trial selects its gallery by indices (``cmemd.data.sysu.draw_gallery``). Similarities
are computed once against the union of all trials' galleries and each trial takes its columns,
in draw order (draw order decides how exact ties rank, as in the field's code).
Removal ``sysu-same-location`` (cam3 query drops cam2 gallery), CMC ``identity-dedup``.

Re-ranking (``rerank=``, off by default): k-reciprocal re-ranking of the squared Euclidean
distances of the features the metric ranks (L2-normalised for ``cosine``, raw for
``euclidean``), as the authors' feature-based code computes them; the metrics then rank the
re-ranked distances, with the same removal and CMC rules. Each trial re-ranks its own gallery
(query-query distances computed once); the result's settings carry ``rerank`` (``None`` or the
parameters). Re-ranking is transductive: never compare a re-ranked number with a plain one.

RegDB: query = all test images of one modality, gallery = all test images of the other; no
removal, standard CMC. One call evaluates one trial (one model per trial; docs/protocols.md);
:func:`~cmemd.evaluation.results.combine_results` averages trials.

LLCM: both modalities' test images are featurised once; the visible x NIR similarities are
computed once and each direction and trial takes its rows/columns (draws from
``cmemd.data.llcm.draw_one_per_camera``). Removal ``same-pid-same-cam`` (RGB and NIR sensors of a
camera share its number), CMC ``identity-dedup``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from cmemd.data.llcm import DIRECTIONS as LLCM_DIRECTIONS
from cmemd.errors import EvaluationError
from cmemd.evaluation.metrics import (
    DEFAULT_MEMORY_BUDGET,
    METRICS,
    ArrayLike,
    _as_tensor,
    _check_choice,
    _check_feat_pair,
    _check_labels,
    _prepare_feats,
    _resolve_device,
    _similarity,
    _work_dtype,
    evaluate,
    _check_options,
    _chunk_rows,
    _evaluate_checked_similarity,
    ordered_bits,
)
from cmemd.evaluation.rerank import ReRanking, _rerank_squared, as_reranking, squared_euclidean
from cmemd.evaluation.results import ProtocolResult

SYSU_MODES = ("all", "indoor")
SYSU_SHOTS = (1, 10)
SYSU_METHODS = ("python-random", "official")
SYSU_QUERY_CAMS = (3, 6)
SYSU_GALLERY_CAMS = (1, 2, 4, 5)
REGDB_DIRECTIONS = ("v2t", "t2v")
#: LLCM directions: ``t2v`` IR->VIS (every NIR test image a query, one sampled VIS image per id and
#: camera as the gallery); ``v2t`` VIS->IR as a user defines it (every VIS image a query against a
#: sampled NIR gallery); ``v2t-authors`` the authors' VIS->IR branch, which transposes the distance
#: matrix so that the sampled NIR images are the queries and every VIS image is the gallery.
LLCM_DIRECTION_TEXT = {
    "t2v": "IR->VIS: every NIR image a query, gallery one random VIS image per id and camera",
    "v2t": "VIS->IR: every VIS image a query, gallery one random NIR image per id and camera",
    "v2t-authors": ("VIS->IR as the authors' code runs it (transposed): one random NIR image per id and camera "
                    "as queries, every VIS image the gallery"),
}
LLCM_CAMS = tuple(range(1, 10))

DrawFn = Callable[..., np.ndarray]


def _trial_list(trials: Union[int, Sequence[int]]) -> list[int]:
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


def _check_cams(cams: np.ndarray, allowed: tuple[int, ...], name: str) -> None:
    bad = sorted(set(int(c) for c in np.unique(cams)) - set(allowed))
    if bad:
        raise EvaluationError(
            f"{name}: camera numbers {bad} are not SYSU-MM01 {'query' if allowed == SYSU_QUERY_CAMS else 'gallery'} "
            f"cameras {list(allowed)}; pass the dataset's camera numbers (cam1..cam6, not 0-based indices), "
            "which the same-location rule (cam3 query drops cam2 gallery) depends on"
        )


def sysu_gallery_draws(
    pool_pids: ArrayLike,
    pool_cams: ArrayLike,
    pool_paths: Sequence[str],
    *,
    mode: str = "all",
    shots: int = 1,
    method: str = "python-random",
    trials: Union[int, Sequence[int]] = 10,
    rand_perm: Any = None,
    draw: Optional[DrawFn] = None,
) -> list[np.ndarray]:
    """The pool indices of each trial's gallery, in draw order: what :func:`evaluate_sysu` selects.

    The draws depend on the pool's ids, cameras and paths only, so a caller can featurise just the
    images some trial uses (their union) before evaluating.
    """
    if draw is None:
        from cmemd.data.sysu import draw_gallery as draw
        if method == "official" and not hasattr(rand_perm, "numbers"):
            from cmemd.data.sysu import load_rand_perm

            rand_perm = load_rand_perm(rand_perm)  # once, not per trial
    pp = np.asarray(pool_pids).reshape(-1)
    pc = np.asarray(pool_cams).reshape(-1)
    paths = [str(p) for p in pool_paths]
    draws = []
    for t in _trial_list(trials):
        idx = np.asarray(draw(pp, pc, paths, mode=mode, shots=shots, trial=t, method=method, rand_perm=rand_perm),
                         dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= len(pp):
            raise EvaluationError(f"trial {t}: the gallery draw returned invalid pool indices (shape {idx.shape}); "
                                  "check the pool arrays")
        draws.append(idx)
    return draws


def evaluate_sysu(
    query_feats: ArrayLike,
    query_pids: ArrayLike,
    query_cams: ArrayLike,
    pool_feats: ArrayLike,
    pool_pids: ArrayLike,
    pool_cams: ArrayLike,
    pool_paths: Sequence[str],
    *,
    mode: str = "all",
    shots: int = 1,
    method: str = "python-random",
    trials: Union[int, Sequence[int]] = 10,
    rand_perm: Any = None,
    feature_name: Optional[str] = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    draw: Optional[DrawFn] = None,
    rerank: Union[None, bool, ReRanking, dict] = None,
) -> ProtocolResult:
    """SYSU-MM01 evaluation over ``trials`` random galleries drawn from a featurised pool.

    Args:
        query_*: features, ids and cameras (3 or 6) of the thermal queries.
        pool_*: features, ids, cameras (1, 2, 4, 5) and file paths of every visible test image;
            paths are what the gallery draw sorts and (for ``official``) names by.
        mode: ``"all"`` (cams 1, 2, 4, 5) or ``"indoor"`` (cams 1, 2) search.
        shots: 1 (single-shot) or 10 (multi-shot) images per (id, camera).
        method: ``"python-random"`` (trial t seeds Python's random with t) or ``"official"``
            (``rand_perm_cam.mat``; give ``rand_perm`` as its path or the loaded object).
        trials: number of trials (0..n-1) or explicit 0-based trial indices.
        draw: the gallery-draw function (default ``cmemd.data.sysu.draw_gallery``).
        rerank: ``None`` (default, plain ranking), ``True`` (k-reciprocal, k1=20, k2=6, lambda=0.3)
            or a :class:`~cmemd.evaluation.rerank.ReRanking`: each trial's gallery is re-ranked
            with the queries (see the module docstring).

    Returns a :class:`ProtocolResult`: one result per trial, mean and (population) std.
    """
    _check_choice(mode, SYSU_MODES, "mode")
    if shots not in SYSU_SHOTS:
        raise EvaluationError(f"shots={shots!r} is unknown; use 1 (single-shot) or 10 (multi-shot)")
    _check_choice(method, SYSU_METHODS, "method")
    _check_choice(metric, METRICS, "metric")
    _check_options("sysu-same-location", "identity-dedup", max_rank)
    trial_ids = _trial_list(trials)
    params = as_reranking(rerank)
    if method == "official" and rand_perm is None:
        raise EvaluationError("method='official' needs rand_perm: the path of rand_perm_cam.mat (--rand-perm PATH)")

    qf, pf = _check_feat_pair(query_feats, pool_feats, "query_feats", "pool_feats")
    qp = _check_labels(query_pids, "query_pids", qf.shape[0], "query_feats")
    qc = _check_labels(query_cams, "query_cams", qf.shape[0], "query_feats")
    pp = _check_labels(pool_pids, "pool_pids", pf.shape[0], "pool_feats")
    pc = _check_labels(pool_cams, "pool_cams", pf.shape[0], "pool_feats")
    paths = [str(p) for p in pool_paths]
    if len(paths) != pf.shape[0]:
        raise EvaluationError(f"pool_paths: length {len(paths)} does not match pool_feats ({pf.shape[0]} rows); pass one path per pool image")
    _check_cams(qc.cpu().numpy(), SYSU_QUERY_CAMS, "query_cams")
    _check_cams(pc.cpu().numpy(), SYSU_GALLERY_CAMS, "pool_cams")

    draws = sysu_gallery_draws(pp.cpu().numpy(), pc.cpu().numpy(), paths, mode=mode, shots=shots, method=method,
                               trials=trial_ids, rand_perm=rand_perm, draw=draw)

    settings = dict(
        title=(f"SYSU-MM01 {mode}-search, {'single' if shots == 1 else 'multi'}-shot ({shots}/id/cam), "
               f"gallery draw {method}"),
        mode=mode, shots=shots, method=method, feature_name=feature_name, metric=metric,
        removal="sysu-same-location", cmc="identity-dedup",
        rand_perm=str(getattr(rand_perm, "path", rand_perm)) if method == "official" else None,
        rerank=params.to_dict() if params else None,
    )
    common = dict(removal="sysu-same-location", cmc="identity-dedup", max_rank=max_rank, chunk_size=chunk_size, memory_budget=memory_budget)

    dev = _resolve_device(device, query_feats, pool_feats)
    union, inverse = np.unique(np.concatenate(draws), return_inverse=True)
    if params is not None:
        results = _sysu_reranked(qf, qp, qc, pf, pp, pc, draws, union, inverse, params, metric, int(max_rank),
                                 chunk_size, dev, memory_budget)
    elif qf.shape[0] * len(union) * 4 > 4 * memory_budget:
        # Too large to keep one similarity matrix: evaluate each trial on its own features.
        results = []
        for d in draws:
            dt = torch.from_numpy(d)
            results.append(evaluate(qf, qp, qc, pf[dt], pp[dt], pc[dt], metric=metric, device=dev, **common))
    else:
        dtype = _work_dtype(qf, pf)
        qn = _prepare_feats(qf, "query_feats", metric, dev, dtype)
        un = _prepare_feats(pf[torch.from_numpy(union)], "pool_feats", metric, dev, dtype)
        u_sq = (un * un).sum(1) if metric == "euclidean" else None
        with torch.no_grad():
            sim = _similarity(qn, un, u_sq, metric)
            if sim.dtype == torch.float32:
                sim = ordered_bits(sim)  # once for the union instead of once per trial
        results = []
        offsets = np.cumsum([0] + [len(d) for d in draws])
        for i, d in enumerate(draws):
            cols = torch.from_numpy(inverse[offsets[i] : offsets[i + 1]]).to(dev)
            dt = torch.from_numpy(d)
            step = _chunk_rows(len(d), chunk_size, qf.shape[0], memory_budget)
            r = _evaluate_checked_similarity(sim, qp, qc, pp[dt], pc[dt], "sysu-same-location", "identity-dedup",
                                             int(max_rank), step, dev, metric, columns=cols)
            results.append(r)
    for t, r, d in zip(trial_ids, results, draws):
        r.info.update(protocol="sysu", trial=t, gallery_size=int(len(d)))
    return ProtocolResult("sysu", settings, trial_ids, results)


def _sysu_reranked(qf, qp, qc, pf, pp, pc, draws, union, inverse, params: ReRanking, metric: str, max_rank: int,
                   chunk_size, dev: torch.device, memory_budget: int) -> list:
    """Each trial's re-ranked distances, then its metrics. Query-query distances once; query-pool and
    pool-pool ones once for the union of the galleries when they fit 4 x ``memory_budget``."""
    dtype = _work_dtype(qf, pf)
    qn = _prepare_feats(qf, "query_feats", metric, dev, dtype)
    un = _prepare_feats(pf[torch.from_numpy(union)], "pool_feats", metric, dev, dtype)
    size = torch.finfo(dtype).bits // 8
    shared = (qn.shape[0] + un.shape[0]) * un.shape[0] * size <= 4 * memory_budget
    results = []
    with torch.no_grad():
        qq = squared_euclidean(qn, qn)
        if shared:
            qu, uu = squared_euclidean(qn, un), squared_euclidean(un, un)
        offsets = np.cumsum([0] + [len(d) for d in draws])
        for i, d in enumerate(draws):
            cols = torch.from_numpy(inverse[offsets[i] : offsets[i + 1]]).to(dev)
            if shared:
                qg, gg = qu[:, cols], uu[cols][:, cols]
            else:
                gn = un[cols]
                qg, gg = squared_euclidean(qn, gn), squared_euclidean(gn, gn)
            dist = _rerank_squared(qg, qq, gg, params, dev, memory_budget=memory_budget)
            del qg, gg
            dt = torch.from_numpy(d)
            step = _chunk_rows(len(d), chunk_size, qf.shape[0], memory_budget)
            results.append(_evaluate_checked_similarity(-dist, qp, qc, pp[dt], pc[dt], "sysu-same-location",
                                                        "identity-dedup", max_rank, step, dev, metric))
    return results


def evaluate_regdb(
    visible_feats: ArrayLike,
    visible_pids: ArrayLike,
    thermal_feats: ArrayLike,
    thermal_pids: ArrayLike,
    *,
    direction: str = "v2t",
    trial: int = 1,
    feature_name: Optional[str] = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    rerank: Union[None, bool, ReRanking, dict] = None,
) -> ProtocolResult:
    """RegDB evaluation of one trial: ``v2t`` queries the visible test images against all thermal
    test images, ``t2v`` the reverse. No removal, standard CMC.

    ``trial`` (RegDB's 1..10 split number) only labels the result; evaluate each trial with the
    model trained on that trial's split and average them with ``combine_results``. For both
    directions use :func:`evaluate_regdb_directions`, which computes the similarities once.
    ``rerank``: as in :func:`evaluate_sysu` (the query set re-ranked against the other modality).
    """
    _check_choice(direction, REGDB_DIRECTIONS, "direction")
    return evaluate_regdb_directions(
        visible_feats, visible_pids, thermal_feats, thermal_pids, directions=(direction,), trial=trial,
        feature_name=feature_name, metric=metric, max_rank=max_rank, chunk_size=chunk_size, device=device,
        rerank=rerank,
    )[direction]


def evaluate_regdb_directions(
    visible_feats: ArrayLike,
    visible_pids: ArrayLike,
    thermal_feats: ArrayLike,
    thermal_pids: ArrayLike,
    *,
    directions: Sequence[str] = REGDB_DIRECTIONS,
    trial: int = 1,
    feature_name: Optional[str] = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    rerank: Union[None, bool, ReRanking, dict] = None,
) -> dict[str, ProtocolResult]:
    """RegDB evaluation of one trial in each of ``directions`` (``v2t``, ``t2v``): ``{direction: result}``.

    The two directions rank the same visible x thermal similarities by rows and by columns, so the
    matrix is computed once (when it fits 4 x ``memory_budget``; otherwise each direction streams
    its own chunks, as :func:`~cmemd.evaluation.evaluate` does). Results equal separate calls.
    ``rerank``: as in :func:`evaluate_sysu`; the visible-visible, thermal-thermal and
    visible-thermal distances are computed once for both directions.
    """
    if isinstance(directions, str) or not directions:
        raise EvaluationError(f"directions={directions!r}: give a non-empty list drawn from {REGDB_DIRECTIONS}")
    for d in directions:
        _check_choice(d, REGDB_DIRECTIONS, "direction")
    _check_choice(metric, METRICS, "metric")
    _check_options("none", "standard", max_rank)
    # Validate under the caller's names before the roles become query/gallery.
    vf, tf = _check_feat_pair(visible_feats, thermal_feats, "visible_feats", "thermal_feats")
    vp = _check_labels(visible_pids, "visible_pids", vf.shape[0], "visible_feats")
    tp = _check_labels(thermal_pids, "thermal_pids", tf.shape[0], "thermal_feats")
    dev = _resolve_device(device, visible_feats, thermal_feats)
    cams = {"v2t": (torch.zeros(len(vp), dtype=torch.int64), torch.ones(len(tp), dtype=torch.int64)),
            "t2v": (torch.zeros(len(tp), dtype=torch.int64), torch.ones(len(vp), dtype=torch.int64))}
    roles = {"v2t": (vp, tp, "visible", "thermal"), "t2v": (tp, vp, "thermal", "visible")}
    params = as_reranking(rerank)
    settings = dict(feature_name=feature_name, metric=metric, removal="none", cmc="standard",
                    rerank=params.to_dict() if params else None)
    out = {}
    if params is not None:
        dtype = _work_dtype(vf, tf)
        vn = _prepare_feats(vf, "visible_feats", metric, dev, dtype)
        tn = _prepare_feats(tf, "thermal_feats", metric, dev, dtype)
        with torch.no_grad():
            vv, tt, vt = squared_euclidean(vn, vn), squared_euclidean(tn, tn), squared_euclidean(vn, tn)
            for d in directions:
                qg, qq, gg = (vt, vv, tt) if d == "v2t" else (vt.T, tt, vv)
                dist = _rerank_squared(qg, qq, gg, params, dev, memory_budget=memory_budget)
                qpids, gpids = roles[d][:2]
                step = _chunk_rows(dist.shape[1], chunk_size, dist.shape[0], memory_budget)
                out[d] = _evaluate_checked_similarity(-dist, qpids, cams[d][0], gpids, cams[d][1], "none", "standard",
                                                      int(max_rank), step, dev, metric)
    elif vf.shape[0] * tf.shape[0] * 4 > 4 * memory_budget:
        for d in directions:
            q, g = (vf, tf) if d == "v2t" else (tf, vf)
            qpids, gpids = roles[d][:2]
            out[d] = evaluate(q, qpids, cams[d][0], g, gpids, cams[d][1], removal="none", cmc="standard",
                              metric=metric, max_rank=max_rank, chunk_size=chunk_size, device=dev,
                              memory_budget=memory_budget)
    else:
        dtype = _work_dtype(vf, tf)
        vn = _prepare_feats(vf, "visible_feats", metric, dev, dtype)
        tn = _prepare_feats(tf, "thermal_feats", metric, dev, dtype)
        t_sq = (tn * tn).sum(1) if metric == "euclidean" else None
        with torch.no_grad():
            sim = _similarity(vn, tn, t_sq, metric)  # (visible, thermal), symmetric in the two roles
            if sim.dtype == torch.float32:
                sim = ordered_bits(sim)
        for d in directions:
            s = sim if d == "v2t" else sim.T.contiguous()
            qpids, gpids = roles[d][:2]
            step = _chunk_rows(s.shape[1], chunk_size, s.shape[0], memory_budget)
            out[d] = _evaluate_checked_similarity(s, qpids, cams[d][0], gpids, cams[d][1], "none", "standard",
                                                  int(max_rank), step, dev, metric)
    results = {}
    for d in directions:
        r = out[d]
        r.info.update(protocol="regdb", trial=int(trial), query=roles[d][2], gallery=roles[d][3])
        title = f"RegDB {'visible->thermal' if d == 'v2t' else 'thermal->visible'}"
        results[d] = ProtocolResult("regdb", dict(settings, title=title, direction=d), [int(trial)], [r])
    return results


def llcm_draws(pids: ArrayLike, cams: ArrayLike, paths: Sequence[str],
               trials: Union[int, Sequence[int]] = 10) -> list[np.ndarray]:
    """Indices of each trial's one-image-per-(id, camera) sample of an LLCM test set, in draw order."""
    from cmemd.data.llcm import draw_one_per_camera

    p, c = np.asarray(pids).reshape(-1), np.asarray(cams).reshape(-1)
    return [draw_one_per_camera(p, c, [str(x) for x in paths], trial=t) for t in _trial_list(trials)]


def evaluate_llcm(
    visible_feats: ArrayLike,
    visible_pids: ArrayLike,
    visible_cams: ArrayLike,
    visible_paths: Sequence[str],
    thermal_feats: ArrayLike,
    thermal_pids: ArrayLike,
    thermal_cams: ArrayLike,
    thermal_paths: Sequence[str],
    *,
    directions: Sequence[str] = ("t2v", "v2t"),
    trials: Union[int, Sequence[int]] = 10,
    feature_name: Optional[str] = None,
    metric: str = "cosine",
    max_rank: int = 20,
    chunk_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, ProtocolResult]:
    """LLCM evaluation of one model in each of ``directions``: ``{direction: ProtocolResult}``.

    Args:
        visible_*, thermal_*: features, ids, camera numbers (1..9) and file paths of EVERY test
            image of each modality (thermal = LLCM's near-infrared). Paths decide the draw order.
        directions: drawn from :data:`LLCM_DIRECTIONS` (``t2v`` IR->VIS, ``v2t`` VIS->IR, and
            ``v2t-authors``, the authors' transposed VIS->IR; see :data:`LLCM_DIRECTION_TEXT`).
        trials: number of trials (0..n-1) or explicit 0-based trial indices; trial t seeds
            Python's random with t for its one-image-per-(id, camera) sample.

    Gallery items with the query's id AND camera number are removed; CMC is identity-deduplicated,
    mAP and mINP use the full ranked list; exact ties rank by gallery position (draw order for a
    sampled gallery, list order otherwise).
    """
    if isinstance(directions, str) or not directions:
        raise EvaluationError(f"directions={directions!r}: give a non-empty list drawn from {LLCM_DIRECTIONS}")
    for d in directions:
        _check_choice(d, LLCM_DIRECTIONS, "direction")
    _check_choice(metric, METRICS, "metric")
    _check_options("same-pid-same-cam", "identity-dedup", max_rank)
    trial_ids = _trial_list(trials)
    vf, tf = _check_feat_pair(visible_feats, thermal_feats, "visible_feats", "thermal_feats")
    vp = _check_labels(visible_pids, "visible_pids", vf.shape[0], "visible_feats")
    vc = _check_labels(visible_cams, "visible_cams", vf.shape[0], "visible_feats")
    tp = _check_labels(thermal_pids, "thermal_pids", tf.shape[0], "thermal_feats")
    tc = _check_labels(thermal_cams, "thermal_cams", tf.shape[0], "thermal_feats")
    paths = {"visible": [str(p) for p in visible_paths], "thermal": [str(p) for p in thermal_paths]}
    for name, ps, n in (("visible_paths", paths["visible"], vf.shape[0]), ("thermal_paths", paths["thermal"], tf.shape[0])):
        if len(ps) != n:
            raise EvaluationError(f"{name}: length {len(ps)} does not match the features ({n} rows); pass one path per image")
    for name, cams in (("visible_cams", vc), ("thermal_cams", tc)):
        bad = sorted(set(int(c) for c in torch.unique(cams).tolist()) - set(LLCM_CAMS))
        if bad:
            raise EvaluationError(f"{name}: camera numbers {bad} are not LLCM cameras 1..9; pass the dataset's camera "
                                  "numbers (cam1..cam9), which the same-id-same-camera removal depends on")

    sampled = {"t2v": "visible", "v2t": "thermal", "v2t-authors": "thermal"}
    draws = {m: llcm_draws((vp if m == "visible" else tp).cpu().numpy(), (vc if m == "visible" else tc).cpu().numpy(),
                           paths[m], trial_ids)
             for m in sorted({sampled[d] for d in directions})}
    dev = _resolve_device(device, visible_feats, thermal_feats)
    common = dict(removal="same-pid-same-cam", cmc="identity-dedup", max_rank=max_rank, chunk_size=chunk_size,
                  memory_budget=memory_budget)
    sets = {"visible": (vf, vp, vc), "thermal": (tf, tp, tc)}

    def roles(d: str, idx: np.ndarray):
        """(query feats, pids, cams), (gallery feats, pids, cams) of direction d with sample idx."""
        def pick(xs):
            return tuple(x[torch.from_numpy(idx).to(x.device)] for x in xs)

        if d == "t2v":
            return sets["thermal"], pick(sets["visible"])
        if d == "v2t":
            return sets["visible"], pick(sets["thermal"])
        return pick(sets["thermal"]), sets["visible"]

    out: dict[str, list] = {d: [] for d in directions}
    if vf.shape[0] * tf.shape[0] * 4 > 4 * memory_budget:
        # Too large for one similarity matrix: each direction and trial on its own features.
        for d in directions:
            for idx in draws[sampled[d]]:
                (qf, qp, qc), (gf, gp, gc) = roles(d, idx)
                out[d].append(evaluate(qf, qp, qc, gf, gp, gc, metric=metric, device=dev, **common))
    else:
        dtype = _work_dtype(vf, tf)
        vn = _prepare_feats(vf, "visible_feats", metric, dev, dtype)
        tn = _prepare_feats(tf, "thermal_feats", metric, dev, dtype)
        with torch.no_grad():
            sim = _similarity(tn, vn, (vn * vn).sum(1) if metric == "euclidean" else None, metric)  # (NIR, VIS)
            if sim.dtype == torch.float32:
                sim = ordered_bits(sim)
        sim_t = sim.T.contiguous() if "v2t" in directions else None  # (VIS, NIR)
        for d in directions:
            for idx in draws[sampled[d]]:
                (_, qp, qc), (_, gp, gc) = roles(d, idx)
                it = torch.from_numpy(idx).to(sim.device)
                if d == "t2v":
                    s, cols = sim, it
                elif d == "v2t":
                    s, cols = sim_t, it
                else:
                    s, cols = sim.index_select(0, it), None
                step = _chunk_rows(s.shape[1] if cols is None else len(idx), chunk_size, s.shape[0], memory_budget)
                out[d].append(_evaluate_checked_similarity(s, qp, qc, gp, gc, "same-pid-same-cam", "identity-dedup",
                                                           int(max_rank), step, dev, metric, columns=cols))
    settings = dict(feature_name=feature_name, metric=metric, removal="same-pid-same-cam", cmc="identity-dedup",
                    rerank=None)  # re-ranking is not implemented for LLCM; said in every table
    results = {}
    for d in directions:
        for t, r, idx in zip(trial_ids, out[d], draws[sampled[d]]):
            r.info.update(protocol="llcm", trial=t, direction=d, sampled=sampled[d], sample_size=int(len(idx)))
        results[d] = ProtocolResult("llcm", dict(settings, title=f"LLCM {d} ({LLCM_DIRECTION_TEXT[d]})", direction=d),
                                    trial_ids, out[d])
    return results
