"""Speed of cmemd.evaluation.re_ranking against the k-reciprocal re-ranking users compare with.

Writes docs/results/rerank_speed.md. Not a test: numbers depend on the machine.

    .venv/bin/python bench/rerank_speed.py --threads 1 [--quick] [--repeats 3] [--ref-repeats 3] [--large]

Size: SYSU-MM01 multi-shot, 3,803 queries x 3,010 gallery images (``--quick``: 1,000 x 800), two kinds of input:
Euclidean distances of L2-normalised 256-d features with id structure (96 ids), and of features without any
(i.i.d. Gaussian: larger, more overlapping k-reciprocal sets, so more Jaccard work). The distances are computed
once outside the timing; both sides take the same three float32 matrices.

The reference is the implementation users run and compare with: torchreid's copy of Zhong et al.'s numpy code
(torchreid/utils/rerank.py, the version that takes distance matrices), re-written here from it with the same
work done the same way: the same numpy calls on the same dtypes and memory layouts (the transposed normalised
matrix and V keep numpy's Fortran order as there), numpy's default argsort of the whole (Q+G)^2 matrix, the
same Python loops per item, per candidate and per query, the half-size k recomputed per candidate, the inverted
index built column by column. ``kind="stable"`` is the only knob (cmemd's tie rule); the inputs have no exact
ties, so both give the same lists, and the report checks that the outputs agree.

Ours and the reference run in one process, with the same thread count, interleaved (ours, reference, ours,
...); the report gives medians of wall and of thread CPU time (the latter is less disturbed by other work on a
shared machine) and the ratios of those medians.

``--large``: bounded memory on a 50,000-image gallery with ``re_ranking_features`` (3,803 queries, 128-d
features): the (Q+G)^2 float32 matrix would take ~10.8 GiB; the process peak RSS is reported.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import blas_threads  # noqa: E402  (sets numpy's BLAS threads from --threads before numpy loads)

blas_threads.apply()

import numpy as np  # noqa: E402
import torch

from cmemd.evaluation import re_ranking, re_ranking_features


# --------------------------------------------------------------------------- the implementation users run


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, kind=None):
    """torchreid's k-reciprocal re-ranking (Zhong et al.'s numpy code on distance matrices), step for step.

    ``kind``: numpy's argsort kind (None = its default quicksort, what torchreid runs).
    """
    num_query = q_g_dist.shape[0]
    num_all = num_query + q_g_dist.shape[1]
    # The combined [[q_q, q_g], [q_g^T, g_g]] matrix, squared into float32, each column divided by its maximum,
    # transposed: a view, so the matrix (and every zeros_like of it below) is in Fortran order.
    combined = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                               np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    combined = np.power(combined, 2).astype(np.float32)
    dist = np.transpose(1.0 * combined / np.max(combined, axis=0))
    V = np.zeros_like(dist).astype(np.float32)
    rank = np.argsort(dist, kind=kind).astype(np.int32)  # every row fully sorted

    for i in range(num_all):
        forward = rank[i, : k1 + 1]
        backward = rank[forward, : k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expansion = reciprocal
        for j in range(len(reciprocal)):
            candidate = reciprocal[j]
            c_forward = rank[candidate, : int(np.around(k1 / 2.0)) + 1]
            c_backward = rank[c_forward, : int(np.around(k1 / 2.0)) + 1]
            c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, reciprocal)) > 2.0 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        V[i, expansion] = 1.0 * weight / np.sum(weight)
    dist = dist[:num_query, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(num_all):
            V_qe[i, :] = np.mean(V[rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del rank
    inverted = []
    for col in range(num_all):
        inverted.append(np.where(V[:, col] != 0)[0])

    jaccard = np.zeros_like(dist, dtype=np.float32)
    for i in range(num_query):
        shared = np.zeros(shape=[1, num_all], dtype=np.float32)
        nonzero = np.where(V[i, :] != 0)[0]
        rows = [inverted[col] for col in nonzero]
        for j in range(len(nonzero)):
            shared[0, rows[j]] = shared[0, rows[j]] + np.minimum(V[i, nonzero[j]], V[rows[j], nonzero[j]])
        jaccard[i] = 1 - shared / (2.0 - shared)

    final = jaccard * (1 - lambda_value) + dist * lambda_value
    del dist, V, jaccard
    return final[:num_query, num_query:]


# --------------------------------------------------------------------------- data


def make_distances(num_q: int, num_g: int, ids: Optional[int] = 96, dim: int = 256, seed: int = 0):
    """Euclidean distances of L2-normalised features (float32): with id structure, or (``ids=None``) i.i.d.
    Gaussian features without any (the labels are then random)."""
    rng = np.random.default_rng(seed)
    if ids is None:
        qf, gf = rng.normal(size=(num_q, dim)), rng.normal(size=(num_g, dim))
        qp, gp = rng.integers(0, 96, num_q), rng.integers(0, 96, num_g)
    else:
        centres = rng.normal(size=(ids, dim))
        qp, gp = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
        qf = centres[qp] + 2.5 * rng.normal(size=(num_q, dim)) + 2.0 * rng.normal(size=dim)  # noise, modality shift
        gf = centres[gp] + 2.5 * rng.normal(size=(num_g, dim))
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)

    def dist(a, b):
        return np.sqrt(np.maximum(2.0 - 2.0 * a @ b.T, 0.0)).astype(np.float32)

    return dist(qf, gf), dist(qf, qf), dist(gf, gf), qp, gp


def rank1(dist: np.ndarray, qp: np.ndarray, gp: np.ndarray) -> float:
    return float((gp[np.argsort(dist, axis=1, kind="stable")[:, 0]] == qp).mean())


def large_case(threads: int, num_q: int = 3803, num_g: int = 50_000, dim: int = 128) -> str:
    rng = np.random.default_rng(1)
    ids = 1000
    centres = rng.normal(size=(ids, dim)).astype(np.float32)
    qp, gp = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    qf = centres[qp] + 1.5 * rng.normal(size=(num_q, dim)).astype(np.float32)
    gf = centres[gp] + 1.5 * rng.normal(size=(num_g, dim)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    dist = re_ranking_features(qf, gf)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    plain = -(qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ (gf / np.linalg.norm(gf, axis=1, keepdims=True)).T
    full = 4 * (num_q + num_g) ** 2 / 2**30
    return "\n".join([
        f"## Bounded memory: {num_q:,} queries x {num_g:,} gallery, {dim}-d features",
        "",
        f"Command: `python bench/rerank_speed.py --threads {threads} --large` (this section; `make bench` skips it). "
        f"`re_ranking_features(qf, gf)` (cosine features, default 512 MiB budget): {took:.1f} s; process peak RSS "
        f"{before:.0f} MiB before the call (the sections above included) and {peak:.0f} MiB after. The (Q+G)² float32 "
        f"matrix would be {full:.1f} GiB and the gallery-gallery one alone {4 * num_g ** 2 / 2**30:.1f} GiB; "
        f"the (Q, G) float32 result itself is {4 * num_q * num_g / 2**20:.0f} MiB. Rank-1 plain "
        f"{100 * rank1(plain, qp, gp):.2f}, re-ranked {100 * rank1(dist, qp, gp):.2f} (1,000 ids).",
    ])


def timed(fn):
    """(result, wall seconds, thread CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - w0, time.thread_time() - c0


def load_baseline(src_dir: Path):
    """``re_ranking`` of another checkout's ``src`` folder (e.g. the commit before a change), loaded under its own
    module name so that both versions run side by side in this process."""
    spec = importlib.util.spec_from_file_location("baseline_rerank", src_dir / "cmemd" / "evaluation" / "rerank.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_rerank"] = module
    spec.loader.exec_module(module)
    return module.re_ranking


STAGES = ("_stable_topk", "_reciprocal", "_encode", "_expand", "_final")


def stage_times(module, qg, qq, gg) -> dict[str, float]:
    """Thread CPU seconds of one ``module.re_ranking`` call spent in each stage function (the rest: reading the
    distance rows, checks), by wrapping the module's stage functions for the call."""
    spent = {name: 0.0 for name in STAGES}
    saved = {name: getattr(module, name) for name in STAGES}

    def wrap(name, fn):
        def timed_stage(*a, **k):
            c0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.thread_time() - c0
        return timed_stage

    for name in STAGES:
        setattr(module, name, wrap(name, saved[name]))
    try:
        c0 = time.thread_time()
        module.re_ranking(qg, qq, gg)
        spent["total"] = time.thread_time() - c0
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)
    return spent


def compare(num_q: int, num_g: int, ids: Optional[int], repeats: int, ref_repeats: int, baseline=None) -> dict:
    """Ours and the reference on one kind of input, interleaved: ours, (baseline,) reference, ours, ..."""
    qg, qq, gg, qp, gp = make_distances(num_q, num_g, ids=ids)
    ours_t, ref_t, base_t = [], [], []
    ours = ref = base = None
    for rep in range(max(repeats, ref_repeats)):
        if rep < repeats:
            ours, wall, cpu = timed(lambda: re_ranking(qg, qq, gg))
            ours_t.append((wall, cpu))
            print(f"  ours {wall:.2f} s (CPU {cpu:.2f})", flush=True)
            if baseline is not None:
                base, wall, cpu = timed(lambda: baseline(qg, qq, gg))
                base_t.append((wall, cpu))
                print(f"  baseline {wall:.2f} s (CPU {cpu:.2f})", flush=True)
        if rep < ref_repeats:
            ref, wall, cpu = timed(lambda: reference_re_ranking(qg, qq, gg))
            ref_t.append((wall, cpu))
            print(f"  reference {wall:.2f} s (CPU {cpu:.2f})", flush=True)
    stages = {"ours": stage_times(sys.modules[re_ranking.__module__], qg, qq, gg)}
    if baseline is not None:
        stages["baseline"] = stage_times(sys.modules[baseline.__module__], qg, qq, gg)
    med = {name: [statistics.median(t[k] for t in ts) for k in (0, 1)] if ts else None
           for name, ts in (("ours", ours_t), ("ref", ref_t), ("base", base_t))}
    return dict(stages=stages, ours=med["ours"], ref=med["ref"], base=med["base"],
                ours_runs=ours_t, ref_runs=ref_t, base_runs=base_t,
                base_identical=None if base is None else bool(np.array_equal(ours, base)),
                diff=float(np.abs(ours - ref).max()),
                same_order=int((np.argsort(ours, axis=1, kind="stable")
                                == np.argsort(ref, axis=1, kind="stable")).all(1).sum()),
                same_first=int((ours.argmin(1) == ref.argmin(1)).sum()), num_q=num_q,
                rank1=(100 * rank1(qg, qp, gp), 100 * rank1(ours, qp, gp)) if ids else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 x 800 instead of 3,803 x 3,010")
    ap.add_argument("--threads", type=int, default=1, help="torch threads = numpy BLAS threads (set before import)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of ours per kind of input (median reported)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="runs of the reference per kind of input (median)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/rerank_speed.md"))
    ap.add_argument("--large", action="store_true", help="also the 3,803 x 50,000 memory check (minutes)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout's src folder: its re_ranking also runs, interleaved (e.g. before a change)")
    args = ap.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    torch.set_num_threads(args.threads)
    num_q, num_g = (1000, 800) if args.quick else (3803, 3010)
    load = os.getloadavg()[0]
    print(f"{num_q} x {num_g}, threads {args.threads}, load {load:.1f}", flush=True)
    kinds = (("with id structure (96 ids)", 96), ("without id structure (i.i.d. Gaussian)", None))
    results = []
    for label, ids in kinds:
        print(label, flush=True)
        results.append((label, compare(num_q, num_g, ids, args.repeats, args.ref_repeats, baseline)))
    load_end = os.getloadavg()[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cmd = f"python bench/rerank_speed.py --threads {args.threads}" + (" --quick" if args.quick else "") \
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "") \
        + (f" --ref-repeats {args.ref_repeats}" if args.ref_repeats != 3 else "") + (" --large" if args.large else "") \
        + (f" --baseline {args.baseline}" if args.baseline else "")
    lines = [
        "# Re-ranking speed (k-reciprocal, k1=20, k2=6, λ=0.3)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, load average {load:.1f} at start and {load_end:.1f} at the end (other work "
        f"was running when it is above ~1), torch {torch.__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}; CPU only; torch threads = BLAS threads = {args.threads}. "
        "Both sides run in one process, interleaved, so a busy machine slows both; compare the ratios, not the "
        "seconds. Thread CPU time counts only the time this thread ran, so it is less disturbed by other work than "
        "wall time.",
        "",
        f"Size: {num_q:,} queries x {num_g:,} gallery (SYSU-MM01 multi-shot: 3,803 x 3,010), so the combined "
        f"matrix is {num_q + num_g:,}². Inputs: Euclidean distances of L2-normalised 256-d features, computed once "
        "before timing (both sides take the same three float32 matrices), with id structure and without.",
        "",
        "Reference: torchreid's k-reciprocal re-ranking (`torchreid/utils/rerank.py`, Zhong et al.'s numpy code on "
        "distance matrices), the implementation users compare with, re-written in `bench/rerank_speed.py` doing the "
        "same work the same way (same numpy calls, dtypes, memory layouts and Python loops; numpy's default "
        "argsort). Ours: `cmemd.evaluation.re_ranking` (torch, CPU, default memory budget). Medians of "
        f"{args.repeats} runs of ours and {args.ref_repeats} of the reference per kind of input.",
        "",
        "| input | ours, wall / CPU (s) | reference, wall / CPU (s) | speed-up, wall / CPU | max abs diff | "
        "queries with the same whole ranking / the same first item | Rank-1 plain / re-ranked |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results:
        (ow, oc), (rw, rc) = r["ours"], r["ref"]
        r1 = f"{r['rank1'][0]:.2f} / {r['rank1'][1]:.2f}" if r["rank1"] else "n/a (no ids)"
        lines.append(f"| {label} | {ow:.2f} / {oc:.2f} | {rw:.2f} / {rc:.2f} | {rw / ow:.1f}x / {rc / oc:.1f}x | "
                     f"{r['diff']:.1e} | {r['same_order']:,} / {r['same_first']:,} of {r['num_q']:,} | {r1} |")
    lines += ["", "Runs (wall / CPU s): " + "; ".join(
        f"{label}: ours {', '.join(f'{w:.2f}/{c:.2f}' for w, c in r['ours_runs'])}, reference "
        f"{', '.join(f'{w:.2f}/{c:.2f}' for w, c in r['ref_runs'])}" for label, r in results) + ".",
        "", "The re-ranked distances of the two sides differ in the last float32 bits (exp, means and sums in "
        "another order; ties in the neighbour lists broken by index here, by numpy's quicksort there), so two "
        "gallery items closer than that can swap places: the table counts the queries whose whole gallery order "
        "(stable argsort) and whose first item are the same on both sides.",
        "", f"Process peak RSS {peak:.0f} MiB (the reference holds dense (Q+G)² float32 matrices: "
        f"{4 * (num_q + num_g) ** 2 / 2**20:.0f} MiB each)."]
    if baseline is not None:
        lines += ["", f"Baseline: `re_ranking` of `{args.baseline}` (another checkout), run interleaved with ours "
                  "(ours, baseline, reference, ours, ...).", "",
                  "| input | baseline, wall / CPU (s) | ours, wall / CPU (s) | ours vs baseline, wall / CPU | "
                  "reference / baseline, wall / CPU | bit-identical outputs |", "|---|---|---|---|---|---|"]
        for label, r in results:
            (bw, bc), (ow, oc), (rw, rc) = r["base"], r["ours"], r["ref"]
            lines.append(f"| {label} | {bw:.2f} / {bc:.2f} | {ow:.2f} / {oc:.2f} | {bw / ow:.1f}x / {bc / oc:.1f}x | "
                         f"{rw / bw:.1f}x / {rc / bc:.1f}x | {'yes' if r['base_identical'] else 'NO'} |")
    lines += ["", "Thread CPU seconds per stage of one more call (each stage function wrapped with a timer; "
              "'rest' = reading and normalising the distance rows, checks):", "",
              "| input | version | top-k lists | reciprocal sets | encoding V | query expansion | Jaccard + final "
              "(`_final`) | rest | total |", "|---|---|---|---|---|---|---|---|---|"]
    for label, r in results:
        for version, st in r["stages"].items():
            rest = st["total"] - sum(st[name] for name in STAGES)
            lines.append(f"| {label} | {version} | " + " | ".join(f"{st[name]:.3f}" for name in STAGES)
                         + f" | {rest:.3f} | {st['total']:.3f} |")
    if args.large:
        lines += ["", large_case(args.threads)]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
