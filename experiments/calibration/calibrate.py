"""Calibrate the synthetic benchmark: generate (cached), train the CPU model, print v->v, t->t, t->v side by side.

    python experiments/calibration/calibrate.py --ids 200 --synth-palette-size 4 optim.epochs=4 \
        model.modality_specific_stages=1

key=value arguments override the packaged `synth_cmemd` config; --synth-* flags set SynthConfig fields. Each run
appends a row to experiments/calibration/calibration.md with its command. How the generator was calibrated:
docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KNOBS = ("palette_size", "variation", "occlusion_rate", "thermal_noise", "camera_gap")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="data/calibration")
    for k in KNOBS:
        ap.add_argument(f"--synth-{k.replace('_', '-')}", type=float, default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from cmemd.config import load_config
    from cmemd.data.synth import SynthConfig, generate_sysu
    from cmemd.app.evaluate import modality_diagnostics
    from cmemd.app.train import train

    knobs = {k: getattr(args, f"synth_{k}") for k in KNOBS if getattr(args, f"synth_{k}") is not None}
    if "palette_size" in knobs:
        knobs["palette_size"] = int(knobs["palette_size"])
    synth = SynthConfig(ids=args.ids, images_per_camera=(10, 12), seed=args.seed, **knobs)
    key = "_".join(f"{k}{v}" for k, v in sorted(synth.to_dict().items()) if k in KNOBS)
    data = ROOT / args.work / f"ids{args.ids}_seed{args.seed}_{key}"
    summary = data / "synth_summary.json"
    if not (summary.is_file() and json.loads(summary.read_text()).get("config") == synth.to_dict()):
        shutil.rmtree(data, ignore_errors=True)
        generate_sysu(data, synth, workers=2)
    run_dir = ROOT / args.work / "runs" / f"{int(time.time())}"
    cfg = load_config("synth_cmemd",
                      [f"data.root={data}", f"run.out_dir={run_dir}", "run.log_every=1000", *args.overrides])
    t0 = time.time()
    out = train(cfg, progress=False, evaluate_after=False)
    d = modality_diagnostics(out.model, str(data), height=cfg.data.height, width=cfg.data.width)
    row = {k: round(100 * v, 1) for k, v in d.items()}
    print(json.dumps({"knobs": synth.to_dict(), "overrides": args.overrides, "train_s": round(time.time() - t0), **row}))
    report = HERE / "calibration.md"
    if not report.exists():
        report.write_text("# Calibration runs (experiments/calibration/calibrate.py)\n\n| command | v2v R1 | t2t R1 | t2v R1 | t2v mAP | train s |\n|---|---|---|---|---|---|\n")
    cmd = "python experiments/calibration/calibrate.py " + " ".join(sys.argv[1:])
    with open(report, "a") as f:
        f.write(f"| `{cmd}` | {row['v2v_R1']} | {row['t2t_R1']} | {row['t2v_R1']} | {row['t2v_mAP']} | {time.time() - t0:.0f} |\n")


if __name__ == "__main__":
    main()
