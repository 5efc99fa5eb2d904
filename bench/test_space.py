"""Protocol Rank-1 / mAP of trained runs with the global feature taken before or after the BN-neck
(`model.test_global` bn | pooled): one set of weights, two test features, side by side.

    python bench/test_space.py RUN_DIR [RUN_DIR ...] [--out docs/results/test_space.md]

The alignment losses act on the pooled (pre-BN) features; the BN-neck standardises each unit, which can undo what
they aligned (bench/gap_spaces.py). Each run's own config gives the protocol (its eval section, its data root).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def main() -> None:
    from cmemd.app.run import evaluate_model, load_trained, modality_gap_of

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="training runs' out_dirs (their last.pt is read)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    lines = ["| run | test global | all-search R1 | mAP | gap ratio | modality probe |", "|---|---|---|---|---|---|"]
    for run in args.runs:
        model, cfg = load_trained(run / "last.pt")
        for form in ("bn", "pooled"):
            model.cfg = dataclasses.replace(model.cfg, test_global=form)
            c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, test_global=form))
            # the features the protocol extracted give the gap too (as `cmemd eval` reports it): no second pass
            res, feats = evaluate_model(model, c, progress=False, return_features=True)
            name = next(k for k in res if "all-search" in k and "re-ranked" not in k)
            g = modality_gap_of(feats)
            m = res[name].mean
            lines.append(f"| {run} | {form} | {100 * m['R1']:.2f} | {100 * m['mAP']:.2f} | {g.centre_ratio:.2f} | "
                         f"{100 * g.probe_accuracy:.1f} |")
            print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
