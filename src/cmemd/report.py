"""An evaluation report to look at: ``cmemd eval ... --report DIR`` writes ``DIR/index.html``.

:func:`write_report` takes features + metadata + protocol results (never a model) and writes
PNG figures with matplotlib's Agg backend (:func:`write_evaluation_report`: the same from what
``evaluate_model(..., return_features=True)`` returns):

- ``cmc.png``: the mean CMC curve of every evaluated setting;
- ``ranked_lists.png``: the top-k gallery images of a seeded sample of queries, true matches
  framed green and wrong ones red, the query's modality written above it;
- ``embedding.png``: a 2-D t-SNE (exact, numpy, :func:`tsne`) of query and gallery features of a
  sample of identities, colour = identity, marker = modality;
- the per-trial metric table and ``index.html`` showing everything together; a re-ranked result
  (``settings["rerank"]``) is shown beside the plain one of the same settings, labelled, and its
  CMC curve is dashed.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cmemd.errors import ConfigError, EvaluationError
from cmemd.evaluation.features import FeatureSet
from cmemd.evaluation.metrics import REMOVAL_RULES, Removal, check_removal, removal_name
from cmemd.evaluation.metrics import top_k as ranked_top_k
from cmemd.evaluation.results import METRIC_NAMES, ProtocolResult, rerank_label
from cmemd.numerics import l2_normalize_np

REMOVALS = REMOVAL_RULES


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the evaluation report needs matplotlib: pip install 'cmemd[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------ t-SNE


def _p_conditional(d2: np.ndarray, perplexity: float, tol: float = 1e-5, iters: int = 60) -> np.ndarray:
    """Row-wise Gaussian affinities whose entropy matches log(perplexity) (binary search on beta)."""
    n = d2.shape[0]
    P = np.zeros_like(d2)
    target = np.log(perplexity)
    for i in range(n):
        d = np.delete(d2[i], i)
        lo, hi, beta = 0.0, np.inf, 1.0
        for _ in range(iters):
            p = np.exp(-(d - d.min()) * beta)
            s = p.sum()
            h = np.log(s) + beta * np.sum(d * p) / s - beta * d.min()
            if abs(h - target) < tol:
                break
            if h > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        P[i, np.arange(n) != i] = p / s
    return P


def tsne(
    x: np.ndarray, *, perplexity: float = 30.0, iterations: int = 500, seed: int = 0, learning_rate: float | None = None
) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of ``x`` (N x D, N up to ~1,000) to N x 2.

    Symmetrised perplexity-calibrated affinities, Student-t similarities in 2-D, gradient descent
    with momentum 0.5 -> 0.8, early exaggeration 12 for the first 100 steps and per-coordinate
    gains, as in the reference implementation.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 3:
        raise EvaluationError(f"tsne: needs at least 3 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0)
    P = _p_conditional(d2, perplexity)
    P = (P + P.T) / (2 * n)
    P = np.maximum(P, 1e-12)
    lr = learning_rate or max(n / 12 / 4, 50.0)
    rng = np.random.default_rng(seed)
    y = rng.normal(0, 1e-4, (n, 2))
    vel = np.zeros_like(y)
    gains = np.ones_like(y)
    for it in range(iterations):
        exag = 12.0 if it < 100 else 1.0
        yy = (y * y).sum(1)
        num = 1.0 / (1.0 + np.maximum(yy[:, None] + yy[None] - 2 * y @ y.T, 0))
        np.fill_diagonal(num, 0)
        Q = np.maximum(num / num.sum(), 1e-12)
        W = (exag * P - Q) * num
        grad = 4 * (np.diag(W.sum(1)) - W) @ y
        mom = 0.5 if it < 250 else 0.8
        gains = np.where(np.sign(grad) != np.sign(vel), gains + 0.2, gains * 0.8).clip(0.01)
        vel = mom * vel - lr * gains * grad
        y = y + vel
        y -= y.mean(0)
    return y.astype(np.float32)


# ------------------------------------------------------------------------------ ranking


def _normalise(f: np.ndarray) -> np.ndarray:
    return l2_normalize_np(np.asarray(f, dtype=np.float32), axis=1)


def ranked_lists(
    query: FeatureSet, gallery: FeatureSet, rows: np.ndarray, *, top_k: int = 10, removal: Removal = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` gallery indices and cosine scores for the queries ``rows`` (ties by gallery
    index, as the evaluation ranks: ``cmemd.evaluation.metrics.top_k``); the removal rule hides what it hides
    (a ``SameLocation`` rule: its gallery cameras from its query cameras, e.g. SYSU-MM01's cam2 from cam3
    queries; ``same-pid-same-cam``: the query's id in its camera)."""
    try:
        check_removal(removal)
    except EvaluationError as e:
        raise EvaluationError(f"report: {e}") from None
    return ranked_top_k(
        query.feats[rows],
        gallery.feats,
        top_k,
        removal=removal,
        query_pids=query.pids[rows],
        query_cams=query.cams[rows],
        gallery_pids=gallery.pids,
        gallery_cams=gallery.cams,
    )


# ------------------------------------------------------------------------------ figures


def _thumb(path: str, h: int = 96, w: int = 48) -> np.ndarray:
    from PIL import Image

    from cmemd.data.images import load_image
    from cmemd.errors import DatasetError

    try:
        return np.asarray(load_image(path).resize((w, h), Image.Resampling.BILINEAR))
    except DatasetError as e:  # a moved dataset: a grey tile (and a warning) rather than no report at all
        warnings.warn(f"report: {e}; drawing a grey tile instead", stacklevel=2)
        return np.full((h, w, 3), 128, np.uint8)


def plot_cmc(results: Mapping[str, ProtocolResult], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, r in results.items():
        curve = 100 * np.mean([t.cmc for t in r.trials], axis=0)
        m = r.mean
        ax.plot(
            np.arange(1, len(curve) + 1),
            curve,
            marker="o",
            ms=3,
            linestyle="--" if r.settings.get("rerank") else "-",  # re-ranked: dashed
            label=f"{name} (R1 {100 * m['R1']:.1f}, mAP {100 * m['mAP']:.1f})",
        )
    ax.set_xlabel("rank k")
    ax.set_ylabel("matching rate at rank k (%)")
    ax.set_title("CMC (mean over trials)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_training(metrics: str | Path, out: Path) -> Path | None:
    """Training curves from a run's ``metrics.jsonl``: loss terms, feature norms and dead units per granularity,
    and (when the run logged them) the per-epoch modality gap and plan purity on the val ids. None when the
    file has no epoch lines."""
    import json

    recs = [json.loads(x) for x in Path(metrics).read_text().splitlines() if x.strip()]
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    diags = [r for r in recs if r.get("kind") == "diag"]
    if not epochs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4), dpi=100)
    x = [r["epoch"] + 1 for r in epochs]
    for key in ("loss", "ce_global", "ce_local", "ce_accum", "align", "cmdl", "triplet"):
        if key in epochs[0]:
            axes[0].plot(x, [r[key] for r in epochs], marker="o", ms=3, label=key)
    axes[0].set_title("loss terms (epoch means)")
    for g in ("global", "local", "accum"):
        if f"norm_{g}" in epochs[0]:
            axes[1].plot(x, [r[f"norm_{g}"] for r in epochs], marker="o", ms=3, label=g)
            axes[2].plot(x, [100 * r[f"dead_{g}"] for r in epochs], marker="o", ms=3, label=f"{g} dead units")
            if f"zero_{g}" in epochs[0]:
                axes[2].plot(x, [100 * r[f"zero_{g}"] for r in epochs], ls="--", label=f"{g} zero entries")
    axes[1].set_title("pooled feature norm (aligned features)")
    axes[2].set_title("dead units / zero entries (%)")
    if diags:
        dx = [r["epoch"] + 1 for r in diags]
        axes[3].plot(dx, [r["gap_centre_ratio"] for r in diags], marker="o", ms=3, label="gap centre ratio")
        axes[3].plot(
            dx,
            [2 * r["gap_probe_accuracy"] for r in diags],
            marker="o",
            ms=3,
            label="modality probe acc. x2 (1 = chance)",
        )
        if "gap_mixing" in diags[0]:
            axes[3].plot(
                dx,
                [r["gap_mixing"] for r in diags],
                marker="o",
                ms=3,
                label="within-identity mixing (1 = as if random)",
            )
        if "purity_ratio" in diags[0]:
            axes[3].plot(dx, [r["purity_ratio"] for r in diags], marker="o", ms=3, label="plan same-view x uniform")
        axes[3].axhline(1.0, color="grey", lw=0.8)
    axes[3].set_title("modality gap / plan purity (val ids)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_ranked_lists(
    query: FeatureSet,
    gallery: FeatureSet,
    rows: np.ndarray,
    out: Path,
    *,
    top_k: int,
    removal: Removal,
    query_modality: str,
    gallery_modality: str,
) -> Path:
    plt = _plt()
    from matplotlib.patches import Rectangle

    order, scores = ranked_lists(query, gallery, rows, top_k=top_k, removal=removal)
    k = order.shape[1]
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.0 * (k + 1), 2.1 * len(rows)), dpi=100, squeeze=False)
    for i, q in enumerate(rows):
        ax = axes[i, 0]
        ax.imshow(_thumb(query.paths[q]))
        ax.set_title(f"query\n{query_modality}\nid {query.pids[q]}", fontsize=7)
        for j in range(k):
            g = order[i, j]
            ax = axes[i, j + 1]
            ax.imshow(_thumb(gallery.paths[g]))
            ok = gallery.pids[g] == query.pids[q]
            ax.add_patch(
                Rectangle(
                    (0, 0),
                    1,
                    1,
                    transform=ax.transAxes,
                    fill=False,
                    lw=4,
                    edgecolor="#1a9e2f" if ok else "#d62020",
                    clip_on=False,
                )
            )
            ax.set_title(f"{j + 1}: {scores[i, j]:.2f}\nid {gallery.pids[g]}", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"{query_modality} queries -> {gallery_modality} gallery: top-{k} by cosine similarity "
        "(green = same identity, red = different)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_embedding(
    query: FeatureSet,
    gallery: FeatureSet,
    out: Path,
    *,
    query_modality: str,
    gallery_modality: str,
    max_ids: int = 12,
    max_points: int = 600,
    seed: int = 0,
    method: str = "tsne",
) -> Path:
    plt = _plt()
    rng = np.random.default_rng(seed)
    shared = np.intersect1d(query.pids, gallery.pids)
    if len(shared) == 0:
        shared = np.unique(np.concatenate([query.pids, gallery.pids]))
    ids = np.sort(rng.choice(shared, size=min(max_ids, len(shared)), replace=False))
    qi = np.nonzero(np.isin(query.pids, ids))[0]
    gi = np.nonzero(np.isin(gallery.pids, ids))[0]
    per = max_points // 2
    qi = np.sort(rng.choice(qi, min(per, len(qi)), replace=False))
    gi = np.sort(rng.choice(gi, min(max_points - len(qi), len(gi)), replace=False))
    x = np.concatenate([_normalise(query.feats[qi]), _normalise(gallery.feats[gi])])
    pids = np.concatenate([query.pids[qi], gallery.pids[gi]])
    is_q = np.arange(len(x)) < len(qi)
    if method == "tsne" and len(x) >= 10:
        y, label = tsne(x, seed=seed), "t-SNE"
    else:  # too few points for t-SNE: the two principal components
        xc = x - x.mean(0)
        y, label = xc @ np.linalg.svd(xc, full_matrices=False)[2][:2].T, "PCA (fallback)"
    cmap = plt.get_cmap("tab20" if len(ids) > 10 else "tab10")
    colour = {p: cmap(i % cmap.N) for i, p in enumerate(ids)}
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for mask, marker, mod in ((is_q, "^", query_modality), (~is_q, "o", gallery_modality)):
        ax.scatter(
            y[mask, 0],
            y[mask, 1],
            c=[colour[p] for p in pids[mask]],
            marker=marker,
            s=22,
            edgecolors="k",
            linewidths=0.3,
            label=f"{mod} ({int(mask.sum())})",
        )
    ax.set_title(f"{label} of {len(ids)} identities (colour = identity, marker = modality)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------ the report


def _table(name: str, r: ProtocolResult) -> str:
    def cell(x: float) -> str:
        return "-" if np.isnan(x) else f"{100 * x:.2f}"

    head = "".join(f"<th>{k}</th>" for k in METRIC_NAMES)
    body = "".join(
        f"<tr><td>trial {t}</td>" + "".join(f"<td>{cell(row[k])}</td>" for k in METRIC_NAMES) + "</tr>"
        for t, row in zip(r.trial_ids, r.rows())
    )
    m, s = r.mean, r.std
    body += (
        "<tr class='mean'><td>mean ± std</td>"
        + "".join(f"<td>{cell(m[k])} ± {cell(s[k])}</td>" for k in METRIC_NAMES)
        + "</tr>"
    )
    return (
        f"<h3>{html.escape(name)}</h3><p class='desc'>{html.escape(r.describe())}</p>"
        f"<table><tr><th></th>{head}</tr>{body}</table>"
    )


def _tables(results: Mapping[str, ProtocolResult]) -> str:
    """Each result's table; a re-ranked result sits beside the plain one of the same settings, labelled."""

    def plain_settings(r: ProtocolResult) -> tuple:
        return r.protocol, sorted((k, repr(v)) for k, v in r.settings.items() if k != "rerank")

    reranked = {n: r for n, r in results.items() if r.settings.get("rerank")}
    out = []
    for name, r in results.items():
        if r.settings.get("rerank"):
            continue
        partners = [n for n, x in reranked.items() if plain_settings(x) == plain_settings(r)]
        if not partners:
            out.append(_table(name, r))
            continue
        cells = [f"<div class='plain'>{_table(name, r)}</div>"]
        for n in partners:
            x = reranked.pop(n)
            cells.append(
                f"<div class='rerank'><p class='warn'>{html.escape(rerank_label(x.settings['rerank']))}: "
                "transductive (uses all test queries and the whole gallery); compare only with re-ranked "
                f"numbers</p>{_table(n, x)}</div>"
            )
        out.append(f"<div class='pair'>{''.join(cells)}</div>")
    for n, x in reranked.items():  # re-ranked results without a plain partner
        out.append(
            f"<div class='rerank'><p class='warn'>{html.escape(rerank_label(x.settings['rerank']))}</p>"
            f"{_table(n, x)}</div>"
        )
    return "".join(out)


def write_report(
    out_dir: str | Path,
    results: Mapping[str, ProtocolResult],
    query: FeatureSet,
    gallery: FeatureSet,
    *,
    query_modality: str = "thermal",
    gallery_modality: str = "visible",
    removal: Removal = "none",
    title: str = "cmemd evaluation report",
    num_queries: int = 6,
    top_k: int = 10,
    max_ids: int = 12,
    max_points: int = 600,
    embedding: str = "tsne",
    seed: int = 0,
    notes: Mapping[str, Any] | None = None,
    metrics: str | Path | None = None,
) -> Path:
    """Write the figures, the per-trial tables and ``index.html`` into ``out_dir``; returns the
    ``index.html`` path.

    Args:
        results: ``{setting name: ProtocolResult}`` as ``evaluate_model`` returns.
        query, gallery: features with pids, cams and image paths (the ranked lists show the images).
        removal: gallery items hidden per query in the ranked lists (a rule of ``cmemd.evaluation.REMOVAL_RULES``
            or a benchmark's ``cmemd.evaluation.SameLocation`` rule; the page shows its name).
        num_queries: queries drawn (seeded) for the ranked lists; top_k: images per list.
        max_ids, max_points: identities / points in the embedding plot.
        embedding: ``tsne`` or ``pca``.
        notes: extra ``{label: value}`` lines shown at the top (checkpoint, data root, ...).
        metrics: the run's ``metrics.jsonl``, for the training curves (optional).
    """
    if embedding not in ("tsne", "pca"):
        raise ConfigError(f"write_report: embedding must be 'tsne' or 'pca', got {embedding!r}")
    if not results:
        raise EvaluationError("write_report: no results to report")
    if len(query) == 0 or len(gallery) == 0:
        raise EvaluationError(f"write_report: empty features (query {len(query)}, gallery {len(gallery)})")
    if query.feats.shape[1] != gallery.feats.shape[1]:
        raise EvaluationError(
            f"write_report: query features are {query.feats.shape[1]}-d but gallery "
            f"{gallery.feats.shape[1]}-d; extract both with the same model"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(query), size=min(num_queries, len(query)), replace=False))
    plot_cmc(results, out / "cmc.png")
    plot_ranked_lists(
        query,
        gallery,
        rows,
        out / "ranked_lists.png",
        top_k=top_k,
        removal=removal,
        query_modality=query_modality,
        gallery_modality=gallery_modality,
    )
    plot_embedding(
        query,
        gallery,
        out / "embedding.png",
        query_modality=query_modality,
        gallery_modality=gallery_modality,
        max_ids=max_ids,
        max_points=max_points,
        seed=seed,
        method=embedding,
    )
    from cmemd.evaluation.modality import feature_sets_gap

    gap = feature_sets_gap(query, gallery, query_modality, gallery_modality)
    curves = plot_training(metrics, out / "training.png") if metrics and Path(metrics).is_file() else None
    training_html = '<h2>Training</h2>\n<img src="training.png" alt="training curves">' if curves else ""
    info = {
        "query": f"{len(query)} {query_modality} images",
        "gallery": f"{len(gallery)} {gallery_modality} images",
        "ranked lists": f"{len(rows)} seeded queries against the whole gallery above (removal {removal_name(removal)})",
    }
    info.update({str(k): str(v) for k, v in (notes or {}).items()})
    info_html = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in info.items())
    tables = _tables(results)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; background: #fff; color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; border-bottom: 1px solid #ccc; }} h3 {{ font-size: 15px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #bbb; padding: 3px 8px; text-align: right; }}
tr.mean td {{ font-weight: bold; background: #eef; }} .desc {{ font-size: 12px; color: #555; }}
.pair {{ display: flex; gap: 24px; flex-wrap: wrap; }} .rerank {{ border-left: 4px solid #c80; padding-left: 10px; }}
.warn {{ font-size: 12px; font-weight: bold; color: #a50; }}
.row {{ display: flex; gap: 16px; }} .row img {{ max-width: 49%; height: auto; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<ul>{info_html}</ul>
<h2>Metrics per trial (%)</h2>
{tables}
<h2>CMC and embedding</h2>
<div class="row"><img src="cmc.png" alt="CMC curves"><img src="embedding.png" alt="feature embedding"></div>
<p class="gap"><b>Modality gap</b> (all query and gallery features; the embedding shows a sample):
{html.escape(gap.format())}</p>
<h2>Ranked lists</h2>
<img src="ranked_lists.png" alt="ranked lists">
{training_html}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def write_evaluation_report(
    folder: str | Path, results: Mapping[str, ProtocolResult], features: Mapping[str, Any], **notes: Any
) -> Path:
    """:func:`write_report` of what ``evaluate_model(..., return_features=True)`` returns: ``results`` and
    ``features`` (``{"query", "gallery", "query_modality", "gallery_modality", "removal"}``), as ``cmemd eval
    --report`` and ``cmemd demo`` write it. ``notes`` are shown at the top; a ``checkpoint`` among them also
    brings the training curves of the ``metrics.jsonl`` beside it. Returns the ``index.html`` path."""
    checkpoint = notes.get("checkpoint")
    metrics = Path(checkpoint).parent / "metrics.jsonl" if checkpoint else None
    return write_report(
        folder,
        results,
        features["query"],
        features["gallery"],
        query_modality=features["query_modality"],
        gallery_modality=features["gallery_modality"],
        removal=features["removal"],
        notes=notes,
        metrics=metrics,
    )
