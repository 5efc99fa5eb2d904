"""CPU thread policy under contention: demo-config training steps, quiet and beside competing CPU-bound processes.

    python bench/threads.py                                   # writes docs/results/threads.md
    python bench/threads.py --steps 40 --reps 2 --workloads demo  # longer, demo model only

Each cell is a fresh worker process (so OMP_WAIT_POLICY is read when torch starts its OpenMP runtime) that builds
the `synth_cmemd` config's loader, model, objective and optimiser exactly as `cmemd train` does, trains a few
warm-up steps, then times ``--steps`` training steps (wall clock, and the worker's own CPU seconds: a spinning
OpenMP thread shows up as CPU time without progress). Competitors are busy-loop Python processes at normal
priority, started before the cells of their load level and stopped after. Policies: 1 or 2 torch threads x
OMP_WAIT_POLICY unset (torch's default), ACTIVE or PASSIVE, plus the row `cmemd default` (what `cmemd train`
chooses when run.threads is unset). Ratios are against the same policy's quiet time, and against the fastest
quiet time of the run, both measured in this one run. Anything else running on the machine (check `uptime`)
is part of the load and is reported in the header.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (label, torch threads or None for cmemd's default, OMP_WAIT_POLICY or None for unset)
POLICIES = [
    ("2 threads, wait policy unset (torch default)", 2, None),
    ("2 threads, OMP_WAIT_POLICY=ACTIVE", 2, "ACTIVE"),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, "PASSIVE"),
    ("1 thread, wait policy unset", 1, None),
    ("1 thread, OMP_WAIT_POLICY=PASSIVE", 1, "PASSIVE"),
    ("cmemd default (run.threads unset)", None, "cmemd"),
]
# name -> (config, overrides, policies (indices into POLICIES), steps, warm-up steps)
WORKLOADS = {
    "demo": ("synth_cmemd", [], [0, 1, 2, 3, 5], None, None),
    # the paper model (ResNet-50, 288x144) at a small batch: does a second thread pay for a large model?
    "paper": ("sysu_cmemd", ["model.pretrained=null", "data.num_ids=2", "data.num_instances=2", "data.num_workers=0",
                             "data.random_erasing=0", "data.channel_aug=0"], [0, 2, 4, 5], 3, 1),
}
# the paper workload is slow on CPU: one repetition, loads 0 and 1 only
WORKLOAD_LIMITS = {"paper": {"reps": 1, "max_load": 1}
}


def worker(args: argparse.Namespace) -> None:
    """One cell: time training steps of the demo config in this (fresh) process; prints one JSON line."""
    import torch

    from cmemd.config import load_config
    from cmemd.data.dataset import build_train_loader
    from cmemd.app.train import model_config, objective_from_config, training_data
    from cmemd.engine.schedule import build_optimizer
    from cmemd.engine.trainer import Trainer
    from cmemd.models import build_model
    from cmemd.threads import apply_thread_policy

    name, overrides = WORKLOADS[args.workload][:2]
    cfg = load_config(name, overrides + [f"data.root={args.data}", f"data.cache_dir={args.cache}"])
    # what `cmemd train` does with run.threads unset (or set)
    policy = apply_thread_policy(args.threads if args.threads > 0 else None, torch.device("cpu"),
                                 (cfg.data.height, cfg.data.width))
    torch.manual_seed(0)
    data = training_data(cfg)
    d, o = cfg.data, cfg.optim
    loader = build_train_loader(data.records, height=d.height, width=d.width, P=d.num_ids, K=d.num_instances, seed=0,
                                num_workers=d.num_workers, use_cache=d.cache, cache_dir=d.cache_dir,
                                dataset_root=d.root, num_batches=args.warmup + args.steps, pad=d.pad, flip=d.flip,
                                random_erasing=d.random_erasing, channel_aug=d.channel_aug)
    model = build_model(model_config(cfg, data.num_classes))
    optimizer = build_optimizer(model, o.optimizer, lr=o.lr, backbone_lr=o.backbone_lr, weight_decay=o.weight_decay,
                                momentum=o.momentum, nesterov=o.nesterov)
    trainer = Trainer(model, objective_from_config(cfg), optimizer, loader, epochs=1,
                      out_dir=tempfile.mkdtemp(prefix="threads_bench_"), progress=False)
    model.train()
    it = iter(loader)
    for _ in range(args.warmup):
        trainer.forward_backward(next(it))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.forward_backward(next(it))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "policy": policy}), flush=True)


def run_cell(args: argparse.Namespace, workload: str, threads: int | None, wait: str | None) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if wait == "cmemd":  # what the CLI does at start-up, before torch is imported
        from cmemd.threads import wait_policy_default

        env["OMP_WAIT_POLICY"] = wait_policy_default()
    elif wait:
        env["OMP_WAIT_POLICY"] = wait
    steps, warmup = WORKLOADS[workload][3:]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--workload", workload,
           "--threads", str(threads or 0),
           "--data", str(args.data), "--cache", str(args.cache), "--steps", str(steps or args.steps),
           "--warmup", str(warmup or args.warmup)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"worker failed ({threads}, {wait}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _parallel_backend(torch) -> str:
    info = torch.__config__.parallel_info().splitlines()
    return "; ".join(x.strip() for x in info if x.startswith(("ATen parallel backend", "OpenMP")))


def load_snapshot() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1 / 5 / 15 min)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1, help="Repetitions of the whole grid (the median is reported).")
    ap.add_argument("--loads", default="0,1,2", help="Numbers of competing busy-loop processes.")
    ap.add_argument("--ids", type=int, default=60, help="Identities of the synthetic set (the step time does not depend on it).")
    ap.add_argument("--data", type=Path, default=None, help="An existing synthetic SYSU-layout root (generated when omitted).")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--workloads", default="demo,paper", help="demo (the CPU default model), paper (ResNet-50 288x144).")
    ap.add_argument("--policies", default=None, help="Indices into POLICIES to run (default: each workload's list).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--workload", default="demo", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/threads.md")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="cmemd_threads_"))
    if args.data is None:
        from cmemd.data.synth import SynthConfig, generate_sysu

        args.data = tmp / "synth"
        generate_sysu(args.data, SynthConfig(ids=args.ids, images_per_camera=(10, 12), seed=0), workers=1)
    args.cache = args.cache or tmp / "cache"
    loads = [int(x) for x in args.loads.split(",")]
    workloads = args.workloads.split(",")
    before = load_snapshot()
    print(f"before: {before}", flush=True)
    for w in workloads:
        run_cell(args, w, 1, None)  # builds the decoded-image cache once; not timed

    results: dict[tuple[str, int, int], list[dict]] = {}
    t_start = time.time()
    for rep in range(args.reps):
        for load in loads:
            procs = [busy_loop() for _ in range(load)]
            try:
                time.sleep(1.0)
                for w in workloads:
                    lim = WORKLOAD_LIMITS.get(w, {})
                    if rep >= lim.get("reps", args.reps) or load > lim.get("max_load", load):
                        continue
                    order = [i for i in WORKLOADS[w][2] if args.policies is None
                             or str(i) in args.policies.split(",")]
                    if rep % 2:
                        order.reverse()  # alternate the order so drift in the background load favours no policy
                    for i in order:
                        label, threads, wait = POLICIES[i]
                        r = run_cell(args, w, threads, wait)
                        results.setdefault((w, i, load), []).append(r)
                        print(f"rep {rep + 1} load {load} {w} | {label}: {r['seconds']:.2f} s wall, "
                              f"{r['cpu_seconds']:.2f} s CPU ({r['threads']} threads, "
                              f"OMP_WAIT_POLICY={r['omp_wait_policy']})", flush=True)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    after = load_snapshot()
    total = time.time() - t_start

    def med(w, i, load, key="seconds"):
        return statistics.median(r[key] for r in results[(w, i, load)])

    import torch

    lines = [
        "# CPU threads and OpenMP wait policy under contention",
        "",
        f"`python bench/threads.py {' '.join(sys.argv[1:])}` (--steps {args.steps} --warmup {args.warmup} --reps "
        f"{args.reps} --loads {args.loads} --workloads {args.workloads}"
        f"{' --policies ' + args.policies if args.policies else ''}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{total / 60:.1f} min). "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{_parallel_backend(torch)}.",
        "",
        "Each cell is a fresh process. Load = competing busy-loop Python processes at normal priority. Median of "
        f"{args.reps} repetition(s); the order of the policies alternates between repetitions. CPU s / wall s: the "
        "worker's own CPU time over its wall time (above 1 with two threads that work; a spinning thread adds CPU "
        "time without progress).",
        "",
        f"Background at the start: {before}; at the end: {after} (the load average counts this benchmark's own "
        "processes too). Other jobs on the machine are part of every cell, quiet ones included.",
    ]
    for w in workloads:
        name, overrides, pol, steps, warmup = WORKLOADS[w]
        wl = sorted({n for (w2, _, n) in results if w2 == w})
        quiet = wl[0]
        pol = [i for i in pol if (w, i, quiet) in results]
        best_quiet = min(med(w, i, quiet) for i in pol)
        lines += ["", f"## {w}: `{name}`{' ' + ' '.join(overrides) if overrides else ''}, {steps or args.steps} steps "
                  f"after {warmup or args.warmup} warm-up", "",
                  "| policy | " + " | ".join(f"{n} competing: s" for n in wl) + f" | CPU s / wall s ({quiet}) | "
                  + " | ".join(f"x own quiet ({n})" for n in wl if n != quiet) + " | "
                  + " | ".join(f"x fastest quiet ({n})" for n in wl if n != quiet) + " |",
                  "|---" * (2 + len(wl) + 2 * (len(wl) - 1)) + "|"]
        lines[-2] = lines[-2].replace(" |  |  |", " |")  # quiet only: no ratio columns
        for i in pol:
            q = med(w, i, quiet)
            row = [POLICIES[i][0]] + [f"{med(w, i, n):.2f}" for n in wl]
            row.append(f"{med(w, i, quiet, 'cpu_seconds') / q:.2f}")
            row += [f"{med(w, i, n) / q:.2f}" for n in wl if n != quiet]
            row += [f"{med(w, i, n) / best_quiet:.2f}" for n in wl if n != quiet]
            lines.append("| " + " | ".join(row) + " |")
        if (w, len(POLICIES) - 1, quiet) in results:
            default = results[(w, len(POLICIES) - 1, quiet)][0]
            lines += ["", f"`cmemd default` resolved to {default['policy']['threads']} thread(s), OMP_WAIT_POLICY="
                      f"{default['omp_wait_policy']} ({default['policy']['reason']})."]
        lines += ["", "Per cell and repetition (wall s):", ""]
        for (w2, i, n), rs in sorted(results.items()):
            if w2 == w:
                lines.append(f"- {POLICIES[i][0]}, {n} competing: " + ", ".join(f"{r['seconds']:.2f}" for r in rs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    notes = args.out.with_name(args.out.stem + "_notes.md")
    if notes.is_file():  # the reading of the numbers is written by hand and kept across reruns
        text += "\n" + notes.read_text()
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
