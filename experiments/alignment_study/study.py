"""Does CM-EMD align the modalities, and does its plan pick the pairs with small intra-identity variation?
The study is finished (README.md); this driver reproduces any of its runs and rebuilds its report. From the
repository root, with cmemd installed (`make venv`; `.venv/bin/python` below):

    python experiments/alignment_study/study.py --report-only      # rebuild README.md from runs/ (seconds)
    python experiments/alignment_study/study.py --jobs 2           # every run not finished, then the report
    python experiments/alignment_study/study.py --groups cost --jobs 2               # one group
    python experiments/alignment_study/study.py --groups core --rows full --seeds 5  # one more run
    python experiments/alignment_study/study.py --groups core --rows full --seeds 1 --again  # redo a finished run
    python experiments/alignment_study/study.py --backfill --groups space   # newer test diagnostics from checkpoints

Each row is a cmemd config, configs/<group>/<row>.yaml (its `base:` chain ends at the packaged synth_cmemd; the first
comment line is the row's label); study.yaml lists the groups (data set, seeds, rows, the report's pairs).

Groups (each run: train, evaluate with the SYSU-MM01 protocol, then diagnostics on the test ids):
  cost       the alignment-cost candidates at a short budget: feature norms and dead units per granularity
  core       baseline, + CM-EMD or all-pairs (global), full CM-EMD unaligned, and its alignment swapped (all-pairs,
             hetero-centre, Sinkhorn plan, cosine cost, lambda 0.5), seeds 0..4 at the study budget (pooled cost;
             the swapped rows were retired short of 5 seeds when the BN-neck cost replaced it: their
             counterparts on the BN-neck output are in the space group)
  settings   what separates the full model from the best earlier row: modality-specific stages, triplet,
             label smoothing (each switched alone on the full model, and the last two together), the accumulated
             features' classifiers, seeds 0..4
  space      + CM-EMD (global) with the cost on batch-centred pooled features (lambda 0.5, 1) or on the BN-neck
             output (lambda 1, 2; all-pairs, hetero-centre, the Sinkhorn plan and MMD at 1); the full model with
             its cost on the BN-neck outputs (lambda 1; all granularities, or the global one, alone or with CM-DL
             on it or the triplet, or with the baseline's whole recipe); seeds 0..4
  variation  the generator's view/pose variation at three levels, full CM-EMD against all-pairs, seeds 0..2
             (pooled cost; only seed 0 was run before the BN-neck cost replaced it)
  variation_bn  the same levels for + CM-EMD against + all-pairs, both on the BN-neck output of the global
             feature (the space group's best rows), seeds 0..3

Each finished run writes a small JSON file, runs/<group>/<row>/seed<N>.json (commit it): a rerun on any machine
skips every run whose file is there with the same settings, so the study outlives a session. (One file per run: two
shard processes, or two machines, write runs at once without a lock, and their commits never conflict.)
Checkpoints of unfinished runs live under data/alignment_study/ and resume.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = ROOT / "data" / "alignment_study"
OUT = HERE
RUNS = HERE / "runs"
REPORT = HERE / "README.md"
COMMAND = "python experiments/alignment_study/study.py --jobs 2"

ALL = "sysu all-search single-shot"
SPLIT = (3.0, 1.0, 2.0)  # train : val : test ids, as the earlier ablation (history/; 100 test ids of 300)


def row_label(path: Path) -> str:
    """A row config's label: its first line, a comment."""
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    if not first.startswith("# "):
        sys.exit(f"{path}: the first line must be a comment naming the row (its label in the report)")
    return first[2:].strip()


def load_groups(study: Path = HERE / "study.yaml") -> dict[str, dict]:
    """The groups of ``study.yaml``, each row as ``(label, config file)`` (``configs/<group>/<row>.yaml``), with the
    rows the group's pairs name from other groups (``pairs_from``) as ``pair_rows`` for the report."""
    import yaml

    groups = yaml.safe_load(study.read_text(encoding="utf-8"))["groups"]
    for name, g in groups.items():
        files = {row: study.parent / "configs" / name / f"{row}.yaml" for row in g["rows"]}
        g["rows"] = {row: (row_label(f), f) for row, f in files.items()}
        g["row_seeds"] = {row: g.get("row_seeds", {}).get(row, g["seeds"]) for row in g["rows"]}
        g["variation"] = g.get("variation") or {}
        g["pairs"] = [tuple(pair) for pair in g.get("pairs", [])]
        g["pairs_from"] = tuple(g.get("pairs_from", ()))
    for g in groups.values():
        g["pair_rows"] = {row: v for other in g["pairs_from"] for row, v in groups[other]["rows"].items()}
    return groups


GROUPS = load_groups()
# The generator variations the study sweeps beside the calibrated default (--pixel-purity prints each set's ceiling)
VARIATIONS = tuple(sorted({v for g in GROUPS.values() for v in g["variation"].values()}))


def synth_config(ids: int, variation: float | None):
    from cmemd.data.synth import SynthConfig

    kw = {} if variation is None else {"variation": variation}
    return SynthConfig(ids=ids, images_per_camera=(10, 12), seed=0, split=SPLIT, **kw)


def ensure_data(ids: int, variation: float | None) -> Path:
    from cmemd.data.synth import NUISANCE_FILE, generate_sysu

    cfg = synth_config(ids, variation)
    tag = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    root = WORK / f"synth_{ids}_{tag}"
    summary = root / "synth_summary.json"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / ".data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shards started together: one generates, the others wait
        ok = summary.is_file() and json.loads(summary.read_text()).get("config") == cfg.to_dict()
        if not ok or not (root / NUISANCE_FILE).is_file():
            shutil.rmtree(root, ignore_errors=True)
            print(f"generating {ids} identities (variation {cfg.variation}) into {root}", flush=True)
            generate_sysu(root, cfg, workers=2)
    return root


def _stable(cfg_dict: dict) -> dict:
    """The settings that define a run (paths left out: they differ between machines)."""
    d = json.loads(json.dumps(cfg_dict))
    d["data"].pop("root", None), d["data"].pop("cache_dir", None), d["run"].pop("out_dir", None)
    return d


# Options added to the project after runs were saved, and why their value cannot change a saved run's outcome.
NEUTRAL_NEW_KEYS = {
    ("data", "channel_aug_kind"): "the study trains with data.channel_aug=0, so no channel augmentation of either kind",
}


def same_settings(saved: dict, new: dict) -> bool:
    """Whether a saved run is the run ``new`` asks for. An option the saved config does not have (added to the
    project later) matches when ``new`` leaves it at its default or it is listed in NEUTRAL_NEW_KEYS."""
    from cmemd.config import TrainConfig

    default = _stable(TrainConfig().to_dict())
    for section, values in new.items():
        old = saved.get(section, {})
        for key, value in values.items():
            if key in old:
                if old[key] != value:
                    return False
            elif value != default.get(section, {}).get(key) and (section, key) not in NEUTRAL_NEW_KEYS:
                return False
    return True


def run_path(group: str, row: str, seed: int) -> Path:
    return RUNS / group / row / f"seed{seed}.json"


def work_dir(group: str, row: str, seed: int) -> Path:
    """The run's training directory (checkpoints, metrics.jsonl); machine-local, not committed."""
    return WORK / group / row / f"seed{seed}"


def run_diagnostics(model, cfg, data: Path) -> dict[str, float]:
    """The flat diagnostics record of ``model`` on the SYSU-layout test set at ``data`` (queries + all-search pool),
    as the config's loss sees them."""
    from cmemd.app.train import config_diagnostics
    from cmemd.benchmarks.synthetic import nuisance_of
    from cmemd.data.sysu import SYSUMM01
    from cmemd.engine.diagnostics import diagnostics_record

    ds = SYSUMM01(data)
    test = ds.thermal() + ds.visible()
    return diagnostics_record(config_diagnostics(model, test, cfg, nuisance=nuisance_of(test, data)))


def write_run(done: Path, rec: dict) -> None:
    """Write a run file atomically (a half-written file would be read as a finished run)."""
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(done)


def run_config(group: str, row: str, seed: int, data: Path | str = "<data>", out: Path | None = None):
    """The TrainConfig of one run: the row's config, its data set, its work dir and the seed."""
    from cmemd.config import load_config

    out = out or work_dir(group, row, seed)
    return load_config(GROUPS[group]["rows"][row][1], [f"data.root={data}", f"run.out_dir={out}", f"run.seed={seed}"])


def finished(group: str, row: str, seed: int) -> dict | None:
    """The run's saved record if its file is there with the settings the row asks for now, else None (the data root
    is not part of the settings, so this needs no data set)."""
    done = run_path(group, row, seed)
    if not done.is_file():
        return None
    rec = json.loads(done.read_text())
    return rec if same_settings(rec.get("config", {}), _stable(run_config(group, row, seed).to_dict())) else None


def run_one(group: str, row: str, seed: int, again: bool = False) -> dict:
    """Train, evaluate and diagnose one run, and write its file; a finished run is skipped (its record returned).
    ``again``: train it anyway, in data/alignment_study/again/, and print its Rank-1 beside the committed one."""
    from cmemd.app.train import train

    rec = None if again else finished(group, row, seed)
    if rec is not None:
        return rec
    g = GROUPS[group]
    label, config = g["rows"][row]
    if run_path(group, row, seed).is_file() and not again:
        print(f"{group}/{row} seed {seed}: the saved run used other settings; running it again", flush=True)
    data = ensure_data(g["ids"], g["variation"].get(row))
    out = WORK / "again" / group / row / f"seed{seed}" if again else work_dir(group, row, seed)
    cfg = run_config(group, row, seed, data, out)
    done = out.with_suffix(".json") if again else run_path(group, row, seed)
    saved = out / "config.yaml"
    if saved.is_file():
        import yaml

        if not same_settings(_stable(yaml.safe_load(saved.read_text())), _stable(cfg.to_dict())):
            shutil.rmtree(out)
    t0 = time.time()
    outcome = train(cfg, resume=(out / "last.pt").exists(), progress=False)
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if h.get("kind") == "epoch"]
    diags = [h for h in hist if h.get("kind") == "diag"]
    rec = {
        "group": group, "row": row, "label": label, "seed": seed, "row_config": str(config.relative_to(HERE)),
        "config": _stable(cfg.to_dict()), "seconds": time.time() - t0,
        "results": {name: {"mean": r.mean, "std": r.std, "trials": [t["R1"] for t in r.rows()]}
                    for name, r in outcome.results.items()},
        "test_diagnostics": run_diagnostics(outcome.model, cfg, data),
        "last_epoch": {k: v for k, v in epochs[-1].items() if k.startswith(("norm_", "dead_", "zero_", "align", "ce_", "loss"))},
        "epochs": [{k: v for k, v in e.items() if k.startswith(("norm_", "dead_", "zero_", "align", "epoch"))} for e in epochs],
        "val_diagnostics": diags,
        "data": data.name,
    }
    write_run(done, rec)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    r1 = rec["results"][ALL]["mean"]["R1"]
    print(f"{group}/{row} seed {seed}: all-search R1 {100 * r1:.2f}, "
          f"gap ratio {rec['test_diagnostics']['gap_centre_ratio']:.2f} ({time.time() - t0:.0f} s)", flush=True)
    committed = run_path(group, row, seed)
    if again and committed.is_file():
        old = json.loads(committed.read_text())
        print(f"  committed run: all-search R1 {100 * old['results'][ALL]['mean']['R1']:.2f}, gap ratio "
              f"{old['test_diagnostics']['gap_centre_ratio']:.2f}", flush=True)
    return rec


def backfill(group: str, row: str, seed: int) -> str:
    """Add test diagnostics that a finished run's file lacks (a measure added after it ran), computed on the run's
    own checkpoint; the stored gap ratio, recomputed from the same checkpoint, must come back unchanged, which
    checks that the checkpoint is the run's. Returns what was done, one word."""
    import torch

    from cmemd.app.evaluate import load_trained

    done, ckpt = run_path(group, row, seed), work_dir(group, row, seed) / "last.pt"
    if not done.is_file():
        return "not-run"
    rec = json.loads(done.read_text())
    if not ckpt.is_file():
        return "no-checkpoint"
    model, cfg = load_trained(ckpt)
    if not same_settings(rec["config"], _stable(cfg.to_dict())):
        return "other-settings"
    if {"gap_mixing", "gap_overlap_share"} <= rec["test_diagnostics"].keys():
        return "complete"
    torch.set_num_threads(1)
    new = run_diagnostics(model, cfg, Path(cfg.data.root))
    old = rec["test_diagnostics"]["gap_centre_ratio"]
    if abs(new["gap_centre_ratio"] - old) > 1e-4:
        sys.exit(f"{ckpt}: its gap ratio is {new['gap_centre_ratio']:.6f}, the run file {done} says {old:.6f}: "
                 "the checkpoint is not the run's (delete the checkpoint, or the run file to run it again)")
    rec["test_diagnostics"].update({k: v for k, v in new.items() if k not in rec["test_diagnostics"]})
    write_run(done, rec)
    return "backfilled"


def pixel_purity(ids: int = 80) -> None:
    """Plan purity of plans computed on the images themselves (test ids of the cost group's data): how much view
    structure a cross-modality cost can find at all, before any learning; then the ceiling (the most same-view
    mass any plan can put on the test ids' groups) of each 300-id set the study trains on."""
    import torch
    from PIL import Image

    from cmemd.benchmarks.synthetic import NUISANCE_NUMBERS, nuisance_of
    from cmemd.data.records import modality_index
    from cmemd.data.sysu import SYSUMM01
    from cmemd.evaluation.modality import plan_purity, sample_identity_groups

    root = ensure_data(ids, None)
    ds = SYSUMM01(root)
    recs = ds.thermal() + ds.visible()
    nz = nuisance_of(recs, root)
    x = np.stack([np.asarray(Image.open(r.path).convert("L").resize((16, 32)), np.float32).ravel() for r in recs])
    x = x - x.mean(1, keepdims=True)
    groups = sample_identity_groups([r.pid for r in recs], [modality_index(r.modality) for r in recs], 4, draws=4)
    for name, f in (("grey pixels, centred per image", x),
                    ("distance of each pixel from the image's median (a silhouette proxy)",
                     np.abs(x - np.median(x, 1, keepdims=True)))):
        res = plan_purity(torch.from_numpy(f), groups, nz["view"], {n: nz[n] for n in NUISANCE_NUMBERS})
        print(f"{name}: {res.format()}")
    # The ceiling depends on the data and the seeded groups only, not on a model: the same for every run of a set.
    for v in (None, *VARIATIONS):
        root = ensure_data(300, v)
        ds = SYSUMM01(root)
        recs = ds.thermal() + ds.visible()
        groups = sample_identity_groups([r.pid for r in recs], [modality_index(r.modality) for r in recs], 4, draws=4)
        views = nuisance_of(recs, root)["view"]
        onehot = torch.from_numpy(np.equal.outer(views, np.unique(views)).astype(np.float32))
        res = plan_purity(onehot, groups, views)
        print(f"300-id set, variation {synth_config(300, v).variation}: same-view mass uniform "
              f"{100 * res.same_view_uniform:.1f}%, most a plan can reach {100 * res.same_view_max:.1f}% "
              f"(x{res.max_ratio:.2f} uniform)")


def load_runs(group: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in GROUPS[group]["rows"]:
        runs = [json.loads(p.read_text()) for p in sorted((RUNS / group / row).glob("seed*.json"))]
        if runs:
            out[row] = runs
    return out


def plan(groups: list[str]) -> list[tuple[str, str, int]]:
    """Seed-major across the groups: every row of every group gets seed 0 before any gets seed 1, so a study cut
    short (it spans sessions) has the broad picture first and the seeds to resolve it after."""
    seeds = sorted({s for g in groups for v in GROUPS[g]["row_seeds"].values() for s in v})
    return [(g, row, seed) for seed in seeds for g in groups for row in GROUPS[g]["rows"]
            if seed in GROUPS[g]["row_seeds"][row]]


def write_report(wall: float | None = None) -> None:
    from report import write  # noqa: the report lives beside this script

    write(GROUPS, load_runs, REPORT, OUT, COMMAND, wall)


def _strip(argv: list[str], flags=("--jobs", "--shard")) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", nargs="*", default=None, help=f"subset of {list(GROUPS)}")
    ap.add_argument("--rows", nargs="*", default=None)
    ap.add_argument("--seeds", nargs="*", type=int, default=None,
                    help="seeds to run (default: each group's planned ones; others run too when named)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--shard", default="1/1")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--again", action="store_true",
                    help="train the named runs (--groups, --rows, --seeds) even if finished, into "
                         "data/alignment_study/again/, and compare with the committed run; runs/ is left as it is")
    ap.add_argument("--pixel-purity", action="store_true", help="plan purity of plans on raw pixels (a reference)")
    ap.add_argument("--backfill", action="store_true",
                    help="add the test diagnostics finished runs' files lack, from their checkpoints (on the "
                         "machine that ran them); nothing is trained")
    args = ap.parse_args()
    if args.pixel_purity:
        pixel_purity()
        return
    if args.backfill:
        for g in args.groups or list(GROUPS):
            for row in args.rows or GROUPS[g]["rows"]:
                for seed in args.seeds or GROUPS[g]["row_seeds"].get(row, []):
                    if row in GROUPS[g]["rows"]:
                        print(f"{g}/{row} seed {seed}: {backfill(g, row, seed)}", flush=True)
        write_report()
        return
    t0 = time.time()
    if args.report_only:
        write_report()
        return
    groups = args.groups or list(GROUPS)
    # explicit seeds run even beyond a group's planned ones: more pairs for one comparison
    runs = plan(groups) if args.seeds is None else [(g, r, s) for s in args.seeds for g in groups for r in GROUPS[g]["rows"]]
    todo = [(g, r, s) for g, r, s in runs if not args.rows or r in args.rows]
    k, n = (int(v) for v in args.shard.split("/"))
    if n == 1:  # the invoking process (shards run their share of `todo`; run_one skips what is finished)
        pending = todo if args.again else [(g, r, s) for g, r, s in todo if finished(g, r, s) is None]
        print(f"{len(todo) - len(pending)} of {len(todo)} runs finished (their files are in runs/); "
              f"{len(pending)} to run", flush=True)
        if not pending:
            write_report()  # no wall time: nothing ran
            return
    if args.jobs > 1:
        for ids, v in {(GROUPS[g]["ids"], GROUPS[g]["variation"].get(r)) for g, r, _ in pending}:  # data first, once
            ensure_data(ids, v)
        procs = [subprocess.Popen([sys.executable, __file__, *_strip(sys.argv[1:]), "--shard", f"{k}/{args.jobs}"])
                 for k in range(1, args.jobs + 1)]
        codes = [p.wait() for p in procs]
        if not args.again:
            write_report(time.time() - t0)
        if any(codes):
            sys.exit(f"shard exit codes {codes}: rerun the same command to finish (finished runs are kept)")
        return
    for g, row, seed in todo[k - 1::n]:
        run_one(g, row, seed, again=args.again)
    if n == 1 and not args.again:
        write_report(time.time() - t0)


if __name__ == "__main__":
    main()
