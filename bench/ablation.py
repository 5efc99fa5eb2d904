"""The ablation study on the synthetic SYSU-layout benchmark (`make bench-ablation`).

    python bench/ablation.py --jobs 2        # every row x 3 seeds, then the sweeps, then the report (2 processes)
    python bench/ablation.py --report-only   # rebuild docs/results/ablation.md from the cached runs
    python bench/ablation.py --rows baseline full --seeds 0

Every run has the same budget (epochs x steps per epoch at 64x32 on 2 CPU cores) and is cached as
`<work>/<row>/seed<k>/results.json`: a rerun skips finished runs, and a killed run resumes from its
last checkpoint. Results: SYSU-MM01 protocol, all-search and indoor-search, single-shot, 10 trials.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "data" / "ablation"
REPORT = ROOT / "docs" / "results" / "ablation.md"
IMAGES = ROOT / "docs" / "results" / "ablation"

# The same budget for every run.
# 1,600 steps of 8 x (4 + 4) images. At 400 steps the baseline's all-search Rank-1 was 9% and at 1,000 steps 15%
# (100 test ids, chance 1%): too close to chance to tell methods apart, so the budget grew (see the report).
BUDGET = ["optim.epochs=8", "optim.warmup_epochs=1", "optim.milestones=[6]", "data.steps_per_epoch=200",
          "eval.trials=10", "eval.shots=1", "run.log_every=10", "run.threads=1"]
BASELINE = ["model.modality_specific_stages=1", "model.use_local=false", "model.test_feature=global",
            "loss.label_smoothing=0.1", "loss.alignment=none", "loss.lambda_dl=0", "loss.lambda_triplet=1"]
GLOBAL_EMD = ["loss.alignment=cmemd", "loss.align_granularities=global"]
# The full model as studied, spelled out so the study stays the same when configs/synth_cmemd.yaml's defaults move.
FULL = ["loss.lambda_align=0.5", "loss.lambda_dl=0.1", "model.num_stripes=4"]

ROWS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("baseline (AGW-style: stem-only split, CE + WRT triplet)", BASELINE),
    "emd_global": ("+ CM-EMD (global only)", BASELINE + GLOBAL_EMD),
    "emd_global_dl": ("+ CM-EMD (global) + CM-DL", BASELINE + GLOBAL_EMD + ["loss.lambda_dl=0.1"]),
    "emd_mgs_dl": ("+ CM-EMD + CM-DL + MGS (local + accumulated, CM-EMD on each)",
                   BASELINE[:1] + ["loss.label_smoothing=0.1", "loss.lambda_triplet=1", "loss.alignment=cmemd",
                                   "loss.align_granularities=all", "loss.lambda_dl=0.1"]),
    "full": ("full CM-EMD (lambda_emd 0.5, lambda_dl 0.1, 4 stripes)", FULL),
    "full_allpairs": ("full, CM-EMD replaced by all-pairs alignment", FULL + ["loss.alignment=all-pairs"]),
    "full_hetero": ("full, CM-EMD replaced by hetero-centre alignment", FULL + ["loss.alignment=hetero-center"]),
    "full_mmd": ("full, CM-EMD replaced by MMD alignment", FULL + ["loss.alignment=mmd"]),
    "full_sinkhorn": ("full, Sinkhorn plan instead of the exact one", FULL + ["loss.emd_solver=sinkhorn"]),
}
_SWEEP_POINTS = [  # most informative first: the neighbours of the defaults, then the ends
    ("lambda_emd", "loss.lambda_align", "1"), ("lambda_dl", "loss.lambda_dl", "0.3"), ("stripes", "model.num_stripes", "6"),
    ("lambda_emd", "loss.lambda_align", "0.25"), ("lambda_dl", "loss.lambda_dl", "0"), ("stripes", "model.num_stripes", "2"),
    ("lambda_emd", "loss.lambda_align", "0"), ("lambda_dl", "loss.lambda_dl", "1"), ("lambda_emd", "loss.lambda_align", "2"),
]
_SWEEP_LABEL = {"lambda_emd": "full, lambda_emd = {}", "lambda_dl": "full, lambda_dl = {}", "stripes": "full, {} stripes"}
SWEEPS: dict[str, tuple[str, list[str]]] = {
    f"{name}_{v}": (_SWEEP_LABEL[name].format(v), FULL + [f"{key}={v}"]) for name, key, v in _SWEEP_POINTS
}


# train : val : test ids. Training uses train + val; 100 test ids at the default 300 ids (CALIBRATION.md asks for
# at least 100), with fewer training classes than the generator's 60/20/20 so 1,000 steps go further.
SPLIT = (3.0, 1.0, 2.0)


def data_root(ids: int):
    """The generator config of the study's data and the folder it goes to (named by the config's hash)."""
    import hashlib

    from cmemd.data.synth import SynthConfig

    cfg = SynthConfig(ids=ids, images_per_camera=(10, 12), seed=0, split=SPLIT)
    tag = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return cfg, WORK / f"synth_{ids}_{tag}"


def ensure_data(ids: int) -> Path:
    from cmemd.data.synth import generate_sysu

    cfg, root = data_root(ids)
    summary = root / "synth_summary.json"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / ".data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shards started together: one generates, the others wait for it
        if not (summary.is_file() and json.loads(summary.read_text()).get("config") == cfg.to_dict()):
            shutil.rmtree(root, ignore_errors=True)
            print(f"generating {ids} identities into {root}", flush=True)
            generate_sysu(root, cfg, workers=2)
    return root


def run_one(name: str, overrides: list[str], seed: int, data: Path) -> dict:
    from cmemd.config import load_config
    from cmemd.engine.run import train
    from cmemd.evaluation.results import to_dict

    out = WORK / name / f"seed{seed}"
    done = out / "results.json"
    cfg = load_config(ROOT / "configs/synth_cmemd.yaml",
                      [f"data.root={data}", f"run.out_dir={out}", f"run.seed={seed}", *BUDGET, *overrides])
    # The run's own saved config (budget, data and overrides resolved) must still be what the row asks for:
    # configs/synth_cmemd.yaml may change after the study, and resuming a run of other settings would mix two.
    saved = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else None
    if saved != cfg.to_dict() and (done.is_file() or saved is not None):
        print(f"{name} seed {seed}: the run there used other settings; starting afresh", flush=True)
        shutil.rmtree(out)
    elif done.is_file():
        cached = json.loads(done.read_text())
        cached["_meta"] = dict(cached.get("_meta", {}), overrides=overrides)  # the row's current spelling
        return cached
    t0 = time.time()
    outcome = train(cfg, resume=(out / "last.pt").exists(), progress=False)
    res = {k: to_dict(v) for k, v in outcome.results.items()}
    res["_meta"] = {"row": name, "seed": seed, "overrides": overrides, "budget": BUDGET, "data": data.name,
                    "seconds": time.time() - t0}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    tmp.replace(done)
    r1 = res["sysu all-search single-shot"]["mean"]["R1"]
    print(f"{name} seed {seed}: all-search R1 {100 * r1:.2f} ({time.time() - t0:.0f} s)", flush=True)
    return res


def collect(names) -> dict[str, list[dict]]:
    out = {}
    for name in names:
        runs = [json.loads(p.read_text()) for p in sorted((WORK / name).glob("seed*/results.json"))]
        runs = [r for r in runs if r.get("_meta", {}).get("budget") == BUDGET]  # stale runs of another budget
        if runs:
            out[name] = runs
    return out


def _metric(run: dict, setting: str, key: str) -> float:
    return 100 * run[f"sysu {setting}-search single-shot"]["mean"][key]


def _split_sizes(ids: int) -> tuple[int, int, int]:
    """(train, val, test) id counts, as the generator's summary of the study's data records them."""
    summary = json.loads((data_root(ids)[1] / "synth_summary.json").read_text())
    return tuple(len(summary["ids"][k]) for k in ("train", "val", "test"))


def write_report(command: str, wall: float | None, ids: int) -> None:
    rows, sweeps = collect(ROWS), collect(SWEEPS)
    if not rows:
        print("no finished runs yet")
        return
    ntr, nva, nte = _split_sizes(ids)
    lines = ["# Ablation on the synthetic SYSU-layout benchmark", "",
             f"Command: `{command}` (rerun it to finish missing runs; finished ones are cached).", "",
             f"Data: `cmemd data synth` difficulty defaults, {ids} identities split {ntr} train + {nva} val (both used for "
             f"training) + {nte} test, "
             "SYSU-MM01 protocol (thermal queries, single-shot visible galleries, 10 trials, python-random draw). "
             "Budget per run: " + " ".join(BUDGET) + " on top of `configs/synth_cmemd.yaml` (ResNet-18 width 32, "
             f"64x32). Chance Rank-1 with {nte} gallery ids: about {100 / nte:.0f}%.", ""]
    if wall:
        lines += [f"Wall time of this invocation: {wall / 60:.0f} min.", ""]
    lines += ["| row | seeds | all R1 | all mAP | all mINP | indoor R1 | indoor mAP | indoor mINP | all R1 - baseline (paired) |",
              "|---|---|---|---|---|---|---|---|---|"]
    base = {r["_meta"]["seed"]: r for r in rows.get("baseline", [])}

    def fmt(vals):
        return f"{np.mean(vals):.2f} ± {np.std(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"

    for name, runs in list(rows.items()) + list(sweeps.items()):
        label = (ROWS.get(name) or SWEEPS.get(name))[0]
        cells = [fmt([_metric(r, s, k) for r in runs]) for s in ("all", "indoor") for k in ("R1", "mAP", "mINP")]
        diffs = [_metric(r, "all", "R1") - _metric(base[r["_meta"]["seed"]], "all", "R1")
                 for r in runs if r["_meta"]["seed"] in base]
        d = fmt(diffs) if diffs and name != "baseline" else "-"
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + f" | {d} |")
    lines += ["", "Mean ± population std over seeds; the last column is the per-seed difference to the baseline "
              "(same seed, same data), mean ± std. A difference smaller than its spread is not resolved.", ""]
    lines += _paired_table(rows)
    IMAGES.mkdir(parents=True, exist_ok=True)
    plots = _plots(rows, sweeps)
    lines += [f"![{p.stem}](ablation/{p.name})" for p in plots]
    notes = REPORT.with_name("ablation_notes.md")  # the hand-written reading of the numbers, kept across reruns
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


# (row a, row b): the questions the study asks, answered by per-seed differences a - b in all-search Rank-1.
COMPARISONS = [
    ("emd_global", "baseline"), ("emd_global_dl", "emd_global"), ("emd_mgs_dl", "emd_global_dl"),
    ("full", "baseline"), ("full", "full_allpairs"), ("full", "full_hetero"), ("full", "full_mmd"),
    ("full", "full_sinkhorn"),
]


def _paired_table(rows) -> list[str]:
    """Per-seed differences in all-search Rank-1 with a verdict: resolved when every seed agrees in sign and the
    mean exceeds the spread."""
    out = ["Paired differences in all-search Rank-1 (a - b, same seed and data):", "",
           "| a | b | per seed | mean ± std | resolved? |", "|---|---|---|---|---|"]
    for a, b in COMPARISONS:
        if a not in rows or b not in rows:
            continue
        bs = {r["_meta"]["seed"]: r for r in rows[b]}
        d = [_metric(r, "all", "R1") - _metric(bs[r["_meta"]["seed"]], "all", "R1")
             for r in rows[a] if r["_meta"]["seed"] in bs]
        if not d:
            continue
        m, sd = float(np.mean(d)), float(np.std(d))
        agree = all(x > 0 for x in d) or all(x < 0 for x in d)
        verdict = ("yes: a is better" if m > 0 else "yes: b is better") if len(d) > 1 and agree and abs(m) > sd else "no"
        out.append(f"| {ROWS[a][0]} | {ROWS[b][0]} | {', '.join(f'{x:+.2f}' for x in d)} | {m:+.2f} ± {sd:.2f} | {verdict} |")
    return out + [""]


def _plots(rows, sweeps) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    def setting(name: str, section: str, key: str) -> float:
        # read from the run's own saved config, so the plot stays right if the config's defaults change
        return float(yaml.safe_load((WORK / name / "seed0" / "config.yaml").read_text())[section][key])

    sweeps_for = [("lambda_emd", "loss", "lambda_align"), ("lambda_dl", "loss", "lambda_dl")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    any_points = False
    for ax, (prefix, section, key) in zip(axes, sweeps_for):
        pts = [(setting(n, section, key), runs) for n, runs in sweeps.items() if n.startswith(prefix + "_")]
        if "full" in rows:
            pts.append((setting("full", section, key), rows["full"]))
        if not pts:
            continue
        any_points = True
        pts.sort(key=lambda p: p[0])
        ax.errorbar([x for x, _ in pts], [np.mean([_metric(r, "all", "R1") for r in runs]) for _, runs in pts],
                    yerr=[np.std([_metric(r, "all", "R1") for r in runs]) for _, runs in pts], marker="o")
        ax.set_xlabel(prefix), ax.set_title(f"full model, Rank-1 vs {prefix}")
    axes[0].set_ylabel("all-search Rank-1 (%)")
    if any_points:
        fig.tight_layout(), fig.savefig(IMAGES / "rank1_vs_lambda.png", dpi=100)
        made.append(IMAGES / "rank1_vs_lambda.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ("baseline", "emd_global", "emd_mgs_dl", "full", "full_allpairs"):
        if name in rows:
            cmc = np.mean([np.mean([t["cmc"] for t in r["sysu all-search single-shot"]["trials"]], axis=0)
                           for r in rows[name]], axis=0)
            ax.plot(np.arange(1, len(cmc) + 1), 100 * cmc, label=name)
    ax.set_xlabel("rank"), ax.set_ylabel("matching rate (%)"), ax.set_title("CMC, all-search"), ax.legend()
    fig.tight_layout(), fig.savefig(IMAGES / "cmc.png", dpi=100), plt.close(fig)
    made.append(IMAGES / "cmc.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in ("baseline", "full"):
        path = WORK / name / "seed0" / "metrics.jsonl"
        if path.is_file():
            recs = [json.loads(x) for x in path.read_text().splitlines()]
            steps = [r for r in recs if r.get("kind") == "step"]
            ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label=name)
    ax.set_xlabel("step"), ax.set_ylabel("total loss"), ax.set_title("training curves (seed 0)"), ax.legend()
    fig.tight_layout(), fig.savefig(IMAGES / "training.png", dpi=100), plt.close(fig)
    made.append(IMAGES / "training.png")
    return made


def _strip_jobs(argv: list[str]) -> list[str]:
    """argv without --jobs N / --shard K/N (either spelling), for the shard processes."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--jobs", "--shard"):
            skip = True
        elif not a.startswith(("--jobs=", "--shard=")):
            out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", default=None, help=f"subset of {list(ROWS)}")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--ids", type=int, default=300)  # 100 test ids with SPLIT (CALIBRATION.md: at least 100)
    ap.add_argument("--shard", default="1/1", help="K/N: run every N-th run starting at the K-th, so N processes "
                    "(one thread each) can share the study; finish with --report-only")
    ap.add_argument("--jobs", type=int, default=1,
                    help="run the study as this many shard processes at once (one thread each; 2 on 2 cores)")
    ap.add_argument("--no-sweeps", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    # the command that produces the runs (--report-only only re-renders them; shards are one study)
    command = " ".join(["python bench/ablation.py --jobs 2", *_strip_jobs([a for a in sys.argv[1:] if a != "--report-only"])])
    t0 = time.time()
    if args.jobs > 1 and not args.report_only:
        import subprocess

        ensure_data(args.ids)  # once, before the shards start
        procs = [subprocess.Popen([sys.executable, __file__, *_strip_jobs(sys.argv[1:]), "--shard", f"{k}/{args.jobs}"])
                 for k in range(1, args.jobs + 1)]
        codes = [proc.wait() for proc in procs]
        write_report(command, time.time() - t0, args.ids)
        if any(codes):
            sys.exit(f"shard exit codes {codes}: rerun the same command to finish (finished runs are cached)")
        return
    if not args.report_only:
        data = ensure_data(args.ids)
        names = args.rows or list(ROWS)
        # seed-major: every row gets seed 0 before any gets seed 1
        plan = [(name, ROWS[name][1], seed) for seed in args.seeds for name in names]
        if not args.no_sweeps and not args.rows:
            plan += [(name, ov, 0) for name, (_, ov) in SWEEPS.items()]
        k, n = (int(v) for v in args.shard.split("/"))
        for name, ov, seed in plan[k - 1::n]:
            run_one(name, ov, seed, data)
            write_report(command, None, args.ids)
    write_report(command, None if args.report_only else time.time() - t0, args.ids)


if __name__ == "__main__":
    main()
