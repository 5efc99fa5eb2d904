"""Speed of cmemd.ot.emd against POT, and of the CM-EMD loss on the paper's batch.

    python bench/ot_speed.py            # writes docs/results/ot_speed.md
    python bench/ot_speed.py --quick    # fewer repeats
    python bench/ot_speed.py --threads 2

Problems:
* the paper's batch: 8 identities x (4 visible + 4 thermal), 1 global (2048-d) + 6 local + 6
  accumulated (512-d) granularities = 104 Euclidean cost matrices of 4 x 4 (float32, as in training);
* B = 1,000 problems of K x K for K = 4, 8, 16 (Euclidean costs of random 512-d features).

Solvers, all in this process on the same costs: ``cmemd.ot.emd`` (exact, batched); a Python loop over
POT's ``ot.emd`` (exact, the straightforward way; numpy float64 inputs, its fastest form);
POT's batched log-Sinkhorn ``ot.batch.solve_batch`` and ``cmemd.ot.sinkhorn`` (both eps = 0.05 x
the batch's mean largest cost, 200 iterations max). Times are the minimum over repeats; "max rel. err"
is the largest relative difference of the transport value from POT's exact ``ot.emd``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import ot as pot
import torch
from ot.batch import solve_batch

from cmemd.losses import CMEMDLoss, cross_cost
from cmemd.ot import _emd_path, emd, sinkhorn


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up (caches, allocator)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    # the minimum is the least noisy estimate on a shared machine (other jobs only add time)
    return min(ts)


def paper_costs(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(8).repeat_interleave(8)
    mods = torch.tensor([0] * 4 + [1] * 4).repeat(8)
    # post-ReLU-like non-negative features, as the pooled ones are
    feats = [torch.randn(64, 2048, generator=g).relu()] + [torch.randn(64, 512, generator=g).relu() for _ in range(12)]
    vis = [f[mods == 0].view(8, 4, -1) for f in feats]
    th = [f[mods == 1].view(8, 4, -1) for f in feats]
    C = torch.cat([cross_cost(v, t) for v, t in zip(vis, th)])  # (104, 4, 4)
    return feats, pids, mods, C


def random_costs(B: int, K: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, K, 512, generator=g)
    t = torch.randn(B, K, 512, generator=g)
    return cross_cost(v, t)


def pot_loop(C: np.ndarray) -> np.ndarray:
    B, n, m = C.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    return np.array([(pot.emd(a, b, c) * c).sum() for c in C])


def bench_problem(name: str, C32: torch.Tensor, repeats: int) -> list[dict]:
    C64np = C32.double().numpy()
    B, n, m = C32.shape
    ref = pot_loop(C64np)
    reg = 0.05 * float(C32.amax((-2, -1)).mean())
    rows = []

    t_pot = timeit(lambda: pot_loop(C64np), max(3, repeats // 5))
    rows.append(dict(problem=name, solver="POT ot.emd, Python loop", t=t_pot, err=0.0))

    ours = emd(C32)
    err = float(np.max(np.abs(ours.value.double().numpy() - ref) / np.abs(ref)))
    t = timeit(lambda: emd(C32), repeats)
    rows.append(dict(problem=name, solver=f"cmemd.ot.emd float32 [{_emd_path(B, n, m)}]", t=t, err=err))

    C64 = C32.double()
    ours64 = emd(C64)
    err64 = float(np.max(np.abs(ours64.value.numpy() - ref) / np.abs(ref)))
    t = timeit(lambda: emd(C64), repeats)
    rows.append(dict(problem=name, solver=f"cmemd.ot.emd float64 [{_emd_path(B, n, m)}]", t=t, err=err64))

    res = solve_batch(C64np, reg=reg, method="log_sinkhorn", max_iter=200, tol=1e-6)
    err = float(np.max(np.abs(np.asarray(res.value_linear) - ref) / np.abs(ref)))
    t = timeit(lambda: solve_batch(C64np, reg=reg, method="log_sinkhorn", max_iter=200, tol=1e-6),
               max(3, repeats // 5))
    rows.append(dict(problem=name, solver="POT ot.batch.solve_batch log-Sinkhorn (batched)", t=t, err=err))

    sk = sinkhorn(C64, eps=reg, relative_eps=False)
    err = float(np.max(np.abs(sk.value.numpy() - ref) / np.abs(ref)))
    t = timeit(lambda: sinkhorn(C64, eps=reg, relative_eps=False), max(3, repeats // 5))
    rows.append(dict(problem=name, solver="cmemd.ot.sinkhorn float64", t=t, err=err))
    for r in rows:
        r["ratio"] = t_pot / r["t"]
    return rows


def naive_loss(feats, pids, mods) -> torch.Tensor:
    """CM-EMD written the straightforward way: per granularity, per identity, POT on numpy."""
    per_g = []
    for f in feats:
        vals = []
        for p in range(8):
            v, t = f[(pids == p) & (mods == 0)], f[(pids == p) & (mods == 1)]
            C = cross_cost(v, t)
            plan = pot.emd(np.full(4, 0.25), np.full(4, 0.25), C.detach().double().numpy())
            vals.append((torch.from_numpy(plan).to(C.dtype) * C).sum())
        per_g.append(torch.stack(vals).mean())
    return torch.stack(per_g).mean()


def bench_loss(repeats: int) -> list[dict]:
    feats, pids, mods, _ = paper_costs()
    leaves = [f.clone().requires_grad_(True) for f in feats]
    loss_fn = CMEMDLoss()

    def ours():
        for x in leaves:
            x.grad = None
        loss_fn(leaves, pids, mods).loss.backward()

    def naive():
        for x in leaves:
            x.grad = None
        naive_loss(leaves, pids, mods).backward()

    a = loss_fn(leaves, pids, mods).loss.item()
    b = naive_loss(leaves, pids, mods).item()
    t_naive = timeit(naive, max(3, repeats // 5))
    t_ours = timeit(ours, repeats)
    return [
        dict(solver="per-identity loop over POT ot.emd (reference)", t=t_naive, ratio=1.0, value=b),
        dict(solver="cmemd.losses.CMEMDLoss (one batched emd call)", t=t_ours, ratio=t_naive / t_ours, value=a),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--out", default="docs/results/ot_speed.md")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: these tensors are tiny, and on a shared machine "
                         "a spinning thread pool costs more than it gains)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 10 if args.quick else 50
    torch.manual_seed(0)

    rows = bench_problem("paper batch: 104 x (4x4)", paper_costs()[3], repeats)
    for K in (4, 8, 16):
        rows += bench_problem(f"1,000 x ({K}x{K})", random_costs(1000, K, seed=K), repeats)
    loss_rows = bench_loss(repeats)

    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# Optimal-transport solver speed",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"POT {pot.__version__}",
        "",
        "Minimum wall time per call over repeats (least sensitive to other jobs on the machine), all in one process on the same costs. Ratio = POT "
        "`ot.emd` loop time / this row's time (higher is faster). Max rel. err = largest relative "
        "difference of the transport value from POT's exact `ot.emd` (the Sinkhorn rows measure the "
        "entropic bias, eps = 0.05 x mean largest cost). The path in brackets is the exact solver's "
        "strategy (see `cmemd/ot.py`).",
        "",
        "| problems | solver | time (ms) | ratio vs POT loop | max rel. err |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['solver']} | {r['t'] * 1e3:.3f} | {r['ratio']:.1f}x | {r['err']:.1e} |")
    lines += [
        "",
        "## CM-EMD loss, forward + backward, paper batch",
        "",
        "64 images (8 ids x 4 + 4), 13 granularities (1 x 2048-d + 12 x 512-d, float32), Euclidean cost.",
        "",
        "| implementation | time (ms) | speed-up | loss value |",
        "|---|---|---|---|",
    ]
    for r in loss_rows:
        lines.append(f"| {r['solver']} | {r['t'] * 1e3:.2f} | {r['ratio']:.1f}x | {r['value']:.6f} |")
    lines += [
        "",
        "Numbers from one run on a shared machine (other jobs may run): compare ratios, not absolute "
        "times, across machines.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
