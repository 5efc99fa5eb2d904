"""The whole SYSU-MM01 evaluation of a model (encode + 10 trials, all- and indoor-search) against the field's flow.

    python bench/protocol_speed.py --threads 1              # single-shot; multi-shot with --shots 10

Ours: ``cmemd.app.evaluate.evaluate_model``: the query images are encoded once, the gallery draws of every trial
and mode are made first, only the pool images some trial draws are encoded (once), and each trial selects its
columns from one similarity matrix. Field-style (the AGW/DDAG test scripts): the query is encoded once, then per
mode and trial the gallery is drawn, *encoded again*, and scored with the per-query loop of
``bench/eval_speed.py``. Same model (the CPU default, random init: speed does not depend on the weights), same
images, same draws. Data: a synthetic SYSU-layout set with 100 test ids, about the real test split's size
(real: 96 ids, 3,803 queries, 6,775 pool images). Writes docs/results/protocol_speed.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import eval_speed  # noqa: F401  (first: fixes the BLAS thread count from --threads before numpy loads)
from eval_speed import field_eval

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def field_style(model, cfg, query, pool, qf, trials, shots, modes, kw):
    from cmemd.benchmarks.sysu import draw_gallery
    from cmemd.engine.extract import extract_features

    ids, cams, paths = np.array([r.pid for r in pool]), np.array([r.camid for r in pool]), [r.path for r in pool]
    qp, qc = np.array([r.pid for r in query]), np.array([r.camid for r in query])
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    out, encoded = {}, 0
    for mode in modes:
        out[mode] = []
        for t in range(trials):
            g = draw_gallery(ids, cams, paths, mode=mode, shots=shots, trial=t)
            gf = extract_features(model, [pool[i] for i in g], **kw)
            encoded += len(g)
            gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
            out[mode].append(field_eval(-np.matmul(qn, gn.T), qp, ids[g], qc, cams[g], "sysu", True))
    return out, encoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (both sides alike)")
    ap.add_argument("--shots", type=int, default=1, choices=[1, 10])
    ap.add_argument("--field-trials", type=int, default=10,
                    help="trials the field-style flow runs per mode; fewer are extrapolated linearly (each trial "
                         "repeats the same work)")
    ap.add_argument("--ids", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "protocol_speed.md"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import json

    from cmemd.config import load_config
    from cmemd.data.synth import SynthConfig, generate_sysu
    from cmemd.app import evaluate as run
    from cmemd.app.train import model_config

    cfg_synth = SynthConfig(ids=args.ids, seed=0, split=(3.0, 1.0, 2.0))
    data = ROOT / "data" / f"bench_sysu_{args.ids}"
    summary = data / "synth_summary.json"
    if not (summary.is_file() and json.loads(summary.read_text()).get("config") == cfg_synth.to_dict()):
        print(f"generating {args.ids} identities into {data}", flush=True)
        generate_sysu(data, cfg_synth, workers=2)
    cfg = load_config("synth_cmemd",
                      [f"data.root={data}", f"eval.shots={args.shots}", "eval.trials=10", "eval.modes=[all,indoor]"])
    torch.manual_seed(0)
    from cmemd.models import build_model

    model = build_model(model_config(cfg, num_classes=200)).eval()
    query, pool = run.evaluation_records(cfg, None)
    kw = dict(height=cfg.data.height, width=cfg.data.width, batch_size=cfg.eval.batch_size, device="cpu",
              progress=False)

    from cmemd.engine.extract import extract_features

    run.evaluate_model(model, cfg, progress=False)  # warm-up
    t0 = time.perf_counter()
    ours = run.evaluate_model(model, cfg, progress=False)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    qf = extract_features(model, query, **kw)
    t_query = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref, n_ref = field_style(model, cfg, query, pool, qf, args.field_trials, args.shots, ["all", "indoor"], kw)
    t_trials = time.perf_counter() - t0
    t_ref = t_query + t_trials * 10 / args.field_trials

    from cmemd.benchmarks.sysu import gallery_draws as sysu_gallery_draws

    drawn = set()
    for mode in ("all", "indoor"):
        for idx in sysu_gallery_draws([r.pid for r in pool], [r.camid for r in pool], [r.path for r in pool],
                                          mode=mode, shots=args.shots, trials=10):
            drawn |= set(idx.tolist())
    per_trial = sum(len(idx) for idx in sysu_gallery_draws(
        [r.pid for r in pool], [r.camid for r in pool], [r.path for r in pool], mode="all", shots=args.shots, trials=1))
    shot = "single" if args.shots == 1 else "multi"
    diffs = []
    for mode in ("all", "indoor"):
        mine = ours[f"sysu {mode}-search {shot}-shot"].trials
        for a, (cmc, mAP, mINP) in zip(mine, ref[mode]):
            diffs.append(max(abs(a.cmc[0] - cmc[0]), abs(a.mAP - mAP), abs(a.mINP - mINP)))
    cmd = "python bench/protocol_speed.py " + " ".join(sys.argv[1:])
    extrap = "" if args.field_trials == 10 else f" (measured on {args.field_trials} trials per mode, scaled to 10)"
    lines = [
        "# Protocol-level evaluation speed (encode + evaluate)", "", f"Command: `{cmd.strip()}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch threads; CPU only.", "",
        f"{shot}-shot, 10 trials x (all-search, indoor-search); {len(query):,} thermal queries, a visible pool of "
        f"{len(pool):,} images, {per_trial:,} gallery images per all-search trial. The CPU default model "
        f"(configs/synth_cmemd.yaml, {cfg.data.height}x{cfg.data.width}).", "",
        "| flow | images encoded | wall (s) | speed-up |", "|---|---|---|---|",
        f"| field-style: query once, gallery re-encoded per trial and mode, per-query loop{extrap} | "
        f"{len(query) + round(n_ref * 10 / args.field_trials):,} | {t_ref:.1f} | 1.0x |",
        f"| ours: `evaluate_model` (drawn pool images encoded once, one similarity matrix per mode) | "
        f"{len(query) + len(drawn):,} | {t_ours:.1f} | **{t_ref / t_ours:.1f}x** |", "",
        f"Largest difference of any trial's R1 / mAP / mINP between the two flows: {max(diffs):.1e}.", "",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
