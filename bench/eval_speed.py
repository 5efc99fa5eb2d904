"""Speed of cmemd.evaluation against a per-query loop written like the field's public code.

Writes docs/results/eval_speed.md. Not a test: numbers depend on the machine.

    .venv/bin/python bench/eval_speed.py [--quick] [--out docs/results/eval_speed.md]

1. SYSU-MM01-sized protocol: 3,803 queries (cam3 1,883 + cam6 1,920), 96 ids, a visible
   gallery pool from which 10 trials draw 301-ish (single-shot) / 3,010-ish (multi-shot)
   images; 2048-d features with id structure. Ours: ``evaluate_sysu`` (similarity included).
   Reference: per trial the distance matrix, then per query argsort, cam3/cam2 removal,
   ``np.unique`` dedup CMC and cumsum AP/INP (the AGW/DDAG ``eval_sysu`` pattern).
2. Large: 50k x 50k, 512-d, Market-style removal, standard CMC (``--quick``: 10k x 10k).
   The reference loop runs on a sample of queries and is extrapolated linearly (it is
   per query by construction).
3. ``floor``: ``evaluate`` (the generic path: checks, normalisation, similarity, ranking) on the
   SYSU-MM01 single-shot size, once per trial's gallery (3,803 x ~300, 2048-d, ten trials), against
   the similarity matmul it must compute (3,803 x 2048 by 2048 x ~300 per trial, float32), the two
   interleaved in one process; medians of the per-repetition ratios, in wall and in thread CPU time.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import sys
import time
from pathlib import Path

import blas_threads  # noqa: E402  (sets numpy's BLAS threads from --threads before numpy loads)

blas_threads.apply()

import numpy as np  # noqa: E402
import torch

from cmemd.benchmarks.regdb import evaluate_regdb_directions
from cmemd.benchmarks.sysu import SAME_LOCATION, draw_gallery, evaluate_sysu
from cmemd.evaluation import combine_results, evaluate, evaluate_similarity
from cmemd.evaluation.metrics import _BYTES_PER_PAIR, DEFAULT_MEMORY_BUDGET, _chunk_rows


# --------------------------------------------------------------------------- field-style reference


def field_eval(distmat, q_pids, g_pids, q_camids, g_camids, removal, dedup, max_rank=20):
    """Per-query loop in the style of the public VT-ReID code (eval_sysu / eval_regdb)."""
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1, kind="stable")
    pred_label = g_pids[indices]
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, all_INP = [], [], []
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        if removal == "sysu":
            remove = (q_camid == 3) & (g_camids[order] == 2)
        elif removal == "market":
            remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        else:
            remove = np.zeros(num_g, bool)
        keep = np.invert(remove)
        if dedup:
            new_cmc = pred_label[q_idx][keep]
            new_index = np.unique(new_cmc, return_index=True)[1]
            new_cmc = [new_cmc[index] for index in sorted(new_index)]
            new_match = (np.array(new_cmc) == q_pid).astype(np.int32)
            new_cmc = new_match.cumsum()
        orig_cmc = matches[q_idx][keep]
        if not np.any(orig_cmc):
            continue
        cmc = orig_cmc.cumsum()
        if not dedup:
            new_cmc = cmc
        new_cmc = np.minimum(new_cmc, 1)
        all_cmc.append(new_cmc[:max_rank])
        pos_idx = np.where(orig_cmc == 1)[0]
        pos_max_idx = np.max(pos_idx)
        all_INP.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        num_rel = orig_cmc.sum()
        tmp_cmc = orig_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * orig_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
    all_cmc = np.asarray([np.pad(c, (0, max_rank - len(c)), mode="edge") for c in all_cmc]).astype(np.float32)
    return all_cmc.mean(0), float(np.mean(all_AP)), float(np.mean(all_INP))


# --------------------------------------------------------------------------- data


def sysu_problem(seed=0, dim=2048):
    rng = np.random.default_rng(seed)
    n_ids = 96
    proto = rng.normal(size=(n_ids, dim)).astype(np.float32)
    pids, cams, paths = [], [], []
    for i in range(n_ids):
        present = [c for c in (1, 2, 4, 5) if rng.random() < 0.78] or [1]
        for c in present:
            for k in range(1, int(rng.integers(10, 30)) + 1):
                pids.append(i + 1), cams.append(c), paths.append(f"cam{c}/{i + 1:04d}/{k:04d}.jpg")
    pp, pc = np.array(pids), np.array(cams)
    noise = 5.0  # Rank-1 well below 100%, like a real model
    pf = proto[pp - 1] + noise * rng.normal(size=(len(pp), dim)).astype(np.float32)
    qp = rng.integers(1, n_ids + 1, 3803)
    qc = np.array([3] * 1883 + [6] * 1920)
    qf = proto[qp - 1] + noise * rng.normal(size=(3803, dim)).astype(np.float32)
    return qf, qp, qc, pf.astype(np.float32), pp, pc, paths


def regdb_problem(trial: int, dim=2048):
    """One RegDB test split: 206 ids x 10 visible + 10 thermal images, features with id structure."""
    rng = np.random.default_rng(100 + trial)
    proto = rng.normal(size=(206, dim)).astype(np.float32)
    pids = np.repeat(np.arange(206), 10)
    vis = proto[pids] + 5.0 * rng.normal(size=(len(pids), dim)).astype(np.float32)
    thr = proto[pids] + 5.0 * rng.normal(size=(len(pids), dim)).astype(np.float32)
    return vis, thr, pids


def field_sysu(qf, qp, qc, pf, pp, pc, paths, shots, trials):
    """The field's flow: per trial draw the gallery, build the distance matrix, loop per query.
    Returns (metrics per trial, seconds in the per-query loops, the distance matrices)."""
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    pn = pf / np.linalg.norm(pf, axis=1, keepdims=True)
    out, loop_s, dists = [], 0.0, []
    for t in range(trials):
        g = draw_gallery(pp, pc, paths, mode="all", shots=shots, trial=t)
        dist = -np.matmul(qn, pn[g].T)
        t0 = time.perf_counter()
        out.append(field_eval(dist, qp, pp[g], qc, pc[g], "sysu", True))
        loop_s += time.perf_counter() - t0
        dists.append((dist, g))
    return out, loop_s, dists


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="large problem 10k x 10k instead of 50k x 50k")
    ap.add_argument("--out", default="docs/results/eval_speed.md")
    ap.add_argument("--ref-queries", type=int, default=300, help="queries timed for the large reference loop")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch and for numpy's BLAS alike (default: their own choice); 1 avoids "
                         "thread-sync stalls on a shared, loaded machine")
    ap.add_argument("--sections", nargs="*", default=["floor", "sysu", "regdb", "large"],
                    choices=["floor", "sysu", "regdb", "large"])
    ap.add_argument("--floor-repeats", type=int, default=9, help="interleaved repetitions of the floor section")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout's src folder: its evaluate also runs in the floor section (before a change)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cmd = "python " + " ".join([sys.argv[0]] + sys.argv[1:])
    lines = [f"# Evaluation speed\n", f"Command: `{cmd}`\n",
             f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start (torch threads {torch.get_num_threads()}), torch {torch.__version__}, "
             f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}; CPU only.\n"]

    prob = sysu_problem()
    qf, qp, qc, pf, pp, pc, paths = prob
    if "floor" in args.sections:
        floor_section(prob, args.floor_repeats, lines, load_baseline(args.baseline) if args.baseline else None,
                      args.baseline)

    # ---------------- SYSU
    lines.append(f"## SYSU-MM01-sized protocol (10 trials, all-search)\n")
    lines.append(f"3,803 queries x 2048-d; visible pool {len(pp)} images over 96 ids. Times are wall seconds for all 10 "
                 "trials (ours: best of 3; reference: one run). "
                 "'total' = gallery draws + similarity + metrics; 'metrics only' = from the same 10 precomputed "
                 "similarity matrices. The similarity matmul (3,803 x 2048 x gallery) is the same work in both; "
                 "on this machine it dominates our total.\n")
    lines.append("| setting | gallery/trial | ours, total (s) | field-style, total (s) | speed-up | ours, metrics only (s) "
                 "| field-style per-query loop only (s) | speed-up | max abs diff R1 / mAP / mINP |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for shots in ((1, 10) if "sysu" in args.sections else ()):
        evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, shots=shots, trials=1)  # warm-up
        t_ours, res = timed(lambda: evaluate_sysu(qf, qp, qc, pf, pp, pc, paths, shots=shots, trials=10), repeat=3)
        t_ref, (ref, t_loop, dists) = timed(lambda: field_sysu(qf, qp, qc, pf, pp, pc, paths, shots, 10))
        sims = [(torch.from_numpy(-d), g) for d, g in dists]
        t_metrics, _ = timed(lambda: [evaluate_similarity(s_, qp, qc, pp[g], pc[g], removal=SAME_LOCATION,
                                                          cmc="identity-dedup") for s_, g in sims], repeat=3)
        del sims, dists
        diff = [max(abs(r.cmc[0] - f[0][0]) for r, f in zip(res.trials, ref)),
                max(abs(r.mAP - f[1]) for r, f in zip(res.trials, ref)),
                max(abs(r.mINP - f[2]) for r, f in zip(res.trials, ref))]
        gsize = res.trials[0].info["gallery_size"]
        lines.append(f"| {'single' if shots == 1 else 'multi'}-shot | {gsize} | {t_ours:.3f} | {t_ref:.2f} | "
                     f"{t_ref / t_ours:.0f}x | {t_metrics:.3f} | {t_loop:.2f} | {t_loop / t_metrics:.0f}x | {diff[0]:.1e} / {diff[1]:.1e} / {diff[2]:.1e} |")
        print(lines[-1], flush=True)
    lines.append("")

    # ---------------- RegDB
    if "regdb" in args.sections:
        lines.append("## RegDB-sized protocol (10 trials x 2 directions)\n")
        lines.append("Per trial 2,060 visible and 2,060 thermal test images (206 ids x 10), 2048-d; no removal, standard "
                     "CMC. Ours: `evaluate_regdb_directions` (one similarity matrix per trial serves v2t by rows and t2v by columns), then `combine_results`; reference: per trial and "
                     "direction the distance matrix and the per-query loop (the `eval_regdb` pattern). Wall seconds "
                     "for all 20 evaluations.\n")
        lines.append("| ours, total (s) | field-style, total (s) | speed-up | max abs diff R1 / mAP / mINP |")
        lines.append("|---|---|---|---|")
        probs = [regdb_problem(t) for t in range(1, 11)]

        def ours_regdb():
            per_trial = [evaluate_regdb_directions(v, p, t, p, trial=k + 1) for k, (v, t, p) in enumerate(probs)]
            return [combine_results([r[d] for r in per_trial]) for d in ("v2t", "t2v")]

        def field_regdb():
            out = []
            for v, t, p in probs:
                vn = v / np.linalg.norm(v, axis=1, keepdims=True)
                tn = t / np.linalg.norm(t, axis=1, keepdims=True)
                for a, b in ((vn, tn), (tn, vn)):
                    out.append(field_eval(-np.matmul(a, b.T), p, p, np.zeros(len(p)), np.ones(len(p)), "none", False))
            return out

        ours_regdb()  # warm-up
        t_ours, res = timed(ours_regdb, repeat=3)
        t_ref, ref = timed(field_regdb)
        mine = [(r.cmc[0], r.mAP, r.mINP) for k in range(10) for r in (res[0].trials[k], res[1].trials[k])]
        diff = [max(abs(m[i] - (f[0][0] if i == 0 else f[i])) for m, f in zip(mine, ref)) for i in range(3)]
        lines.append(f"| {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.0f}x | {diff[0]:.1e} / {diff[1]:.1e} / {diff[2]:.1e} |")
        print(lines[-1], flush=True)
        lines.append("")

    # ---------------- large
    if "large" in args.sections:
        large_section(args, lines)
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


def load_baseline(src_dir: Path):
    """``evaluate`` of another checkout's ``src`` folder (e.g. the commit before a change), loaded under its own
    module name so that both versions run side by side in this process."""
    spec = importlib.util.spec_from_file_location("baseline_metrics", src_dir / "cmemd" / "evaluation" / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_metrics"] = module
    spec.loader.exec_module(module)
    return module.evaluate


def floor_section(prob, repeats: int, lines: list[str], baseline=None, baseline_dir=None) -> None:
    """``evaluate`` per trial against the similarity matmul it must compute, interleaved; medians of the ratios."""
    qf, qp, qc, pf, pp, pc, paths = prob
    trials = [draw_gallery(pp, pc, paths, mode="all", shots=1, trial=t) for t in range(10)]
    galleries = [(pf[g], pp[g], pc[g]) for g in trials]
    qt = torch.from_numpy(qf)

    def floor(gf):
        return qt @ torch.from_numpy(gf).T

    def ours(gf, gp, gc, fn=evaluate):
        return fn(qf, qp, qc, gf, gp, gc, removal=SAME_LOCATION, cmc="identity-dedup")

    identical = None
    if baseline is not None:
        identical = all(np.array_equal(getattr(ours(*t), k), getattr(ours(*t, fn=baseline), k))
                        for t in galleries for k in ("cmc", "ap", "inp", "first_hit", "valid_mask"))

    def clocks(fn, *a, **k):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn(*a, **k)
        return np.array([time.perf_counter() - w0, time.thread_time() - c0])

    contenders = {"floor": floor, "ours": ours}
    if baseline is not None:
        contenders["baseline"] = lambda gf, gp, gc: ours(gf, gp, gc, fn=baseline)
    for t in galleries:  # warm-up
        for fn in contenders.values():
            fn(*t) if fn is not floor else fn(t[0])
    # Per repetition and trial, the contenders back to back, in an order that rotates with the repetition (which one
    # finds the query features in the cache changes); ratios are taken within each (repetition, trial).
    times = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for t in galleries:
            got = {}
            for name in order:
                got[name] = clocks(contenders[name], t[0]) if name == "floor" else clocks(contenders[name], *t)
            for name in names:
                times[name].append(got[name])
    tt = {name: np.array(v) for name, v in times.items()}  # (repeats * trials, 2): wall, CPU
    per_trial = {name: np.median(v, axis=0) for name, v in tt.items()}
    ratio = {name: np.median(tt[name] / tt["floor"], axis=0) for name in names if name != "floor"}
    lines.append("## The generic path against its floor (SYSU-MM01 single-shot size)\n")
    lines.append(f"`evaluate(query, ..., gallery, ..., removal=SAME_LOCATION, cmc='identity-dedup')` (SYSU-MM01's rule) on each "
                 f"trial's gallery (3,803 queries x {len(trials[0])}-ish gallery images, 2048-d float32, 10 trials) "
                 "against the similarity matmul it must compute (`query @ gallery.T`, float32), back to back for each "
                 f"trial, {repeats} repetitions of the 10 trials, the order of the contenders rotating with the "
                 "repetition. Seconds per trial (medians) in wall and in thread CPU time (the time this thread ran: "
                 "less disturbed by other work on a shared machine); the ratio is the median of the "
                 f"{repeats * len(galleries)} per-trial ratios.\n")
    lines.append("| | matmul floor (s/trial) | `evaluate` (s/trial) | `evaluate` / floor |")
    lines.append("|---|---|---|---|")
    for k, clock in enumerate(("wall", "thread CPU")):
        lines.append(f"| {clock} | {per_trial['floor'][k]:.4f} | {per_trial['ours'][k]:.4f} | {ratio['ours'][k]:.2f} |")
    lines.append("")
    if baseline is not None:
        b, br = per_trial["baseline"], ratio["baseline"]
        lines.append(f"Baseline `evaluate` of `{baseline_dir}` (another checkout), a third contender in the same "
                     f"rotation: {b[0]:.4f} s wall / {b[1]:.4f} s CPU per trial, {br[0]:.2f} / {br[1]:.2f} times the "
                     f"floor; results bit-identical to ours: {'yes' if identical else 'NO'}.\n")
    print("\n".join(lines[-8:]), flush=True)


def large_section(args, lines: list[str]) -> None:
    n = 10_000 if args.quick else 50_000
    dim = 512
    rng = np.random.default_rng(1)
    n_ids = n // 10
    gp = np.repeat(np.arange(n_ids), 10)
    gc = rng.integers(1, 7, n)
    proto = rng.normal(size=(n_ids, dim)).astype(np.float32)
    gf = proto[gp] + 2.5 * rng.normal(size=(n, dim)).astype(np.float32)
    qp = rng.integers(0, n_ids, n)
    qc = rng.integers(1, 7, n)
    qf = proto[qp] + 2.5 * rng.normal(size=(n, dim)).astype(np.float32)
    del proto
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_ours, res = timed(lambda: evaluate(qf, qp, qc, gf, gp, gc, removal="same-pid-same-cam", cmc="standard"))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = _chunk_rows(n, None, n, DEFAULT_MEMORY_BUDGET)
    k = min(args.ref_queries, n)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)

    def ref_sample():
        dist = -np.matmul(qn[:k], gn.T)
        return field_eval(dist, qp[:k], gp, qc[:k], gc, "market", False)

    t_ref_k, ref = timed(ref_sample)
    sub = evaluate(qf[:k], qp[:k], qc[:k], gf, gp, gc, removal="same-pid-same-cam", cmc="standard")
    t_ref = t_ref_k * n / k
    lines.append(f"## Large: {n:,} x {n:,} queries x gallery, {dim}-d, Market-style removal, standard CMC\n")
    lines.append(f"| ours (s) | field-style loop (s, extrapolated from {k} queries: {t_ref_k:.2f} s) | speed-up | "
                 f"R1 / mAP check on those {k} queries (ours vs loop) |")
    lines.append("|---|---|---|---|")
    lines.append(f"| {t_ours:.1f} | {t_ref:.0f} | {t_ref / t_ours:.0f}x | {sub.cmc[0]:.4f} vs {ref[0][0]:.4f} / "
                 f"{sub.mAP:.4f} vs {ref[1]:.4f} |")
    lines.append("")
    lines.append(f"Result: R1 {res.cmc[0]:.4f}, mAP {res.mAP:.4f}, mINP {res.mINP:.4f}, {res.num_valid} valid queries.\n")
    lines.append(f"Memory: chunks of {rows} queries (default budget {DEFAULT_MEMORY_BUDGET / 2**20:.0f} MiB); working-set "
                 f"bound {rows} x {n} x {_BYTES_PER_PAIR} B = {rows * n * _BYTES_PER_PAIR / 2**20:.0f} MiB "
                 f"(the similarity block alone: {rows} x {n} x 4 B = {rows * n * 4 / 2**20:.0f} MiB), never the "
                 f"{n}x{n} matrix ({n * n * 4 / 2**30:.1f} GiB in float32). Process peak RSS (ru_maxrss) "
                 f"{rss0:.0f} MiB before (features: {(qf.nbytes + gf.nbytes) / 2**20:.0f} MiB) and {rss1:.0f} MiB after "
                 "our evaluation.\n")


if __name__ == "__main__":
    main()
