"""Protocol Rank-1 / mAP of trained runs with the global feature taken before or after the BN-neck
(`model.test_global` bn | pooled), or with `--part local` the holistic part (`model.test_local` pooled | bn):
one set of weights, two test features, side by side.

    python experiments/alignment_study/test_space.py RUN_DIR [RUN_DIR ...] [--test-feature concat global] [--part global|local]
        [--out test_space.md]

The alignment losses act on the pooled (pre-BN) features; the BN-neck standardises each unit, which can undo what
they aligned (gap_spaces.py). Each run's own config gives the protocol (its eval section, its data root);
`--test-feature` also evaluates other test features of the same weights (a full model's global part alone, say).
With two or more runs, a paired summary follows: pooled minus bn per run, the mean and a 95% t interval (runs are
the pairs: the same weights are evaluated both ways).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import paired, verdict  # noqa: E402

FORMS = ("bn", "pooled")


def evaluate_forms(run: Path, test_features: list[str] | None, part: str = "global") -> list[dict]:
    """One dict per (test feature, form of ``part``) of the run's last checkpoint: R1, mAP (all-search, %), gap
    ratio, modality probe (%). ``part``: ``"global"`` varies ``model.test_global``, ``"local"`` the holistic
    part's ``model.test_local``."""
    from cmemd.app.evaluate import evaluate_model, load_trained, modality_gap_of

    model, cfg = load_trained(run / "last.pt")
    out = []
    for feature in test_features or [cfg.model.test_feature]:
        for form in FORMS:
            m_cfg = dataclasses.replace(cfg.model, test_feature=feature, **{f"test_{part}": form})
            model.cfg = m_cfg
            # the features the protocol extracted give the gap too (as `cmemd eval` reports it): no second pass
            res, feats = evaluate_model(model, dataclasses.replace(cfg, model=m_cfg), progress=False,
                                        return_features=True)
            name = next(k for k in res if "all-search" in k and "re-ranked" not in k)
            g, m = modality_gap_of(feats), res[name].mean
            out.append({"run": str(run), "feature": feature, "form": form, "R1": 100 * m["R1"],
                        "mAP": 100 * m["mAP"], "gap": g.centre_ratio, "probe": 100 * g.probe_accuracy})
    return out


def summary(rows: list[dict]) -> list[str]:
    """Paired pooled - bn differences over runs (the runs are the pairs), per test feature."""
    lines = ["| test feature | runs | per-run pooled - bn (R1) | R1 mean [95% t] | mAP mean [95% t] | "
             "gap ratio mean [95% t] | R1 verdict |", "|---|---|---|---|---|---|---|"]
    for feature in dict.fromkeys(r["feature"] for r in rows):
        by = {form: [dict(r, seed=r["run"]) for r in rows if r["feature"] == feature and r["form"] == form]
              for form in FORMS}
        stats = {k: paired(by["pooled"], by["bn"], lambda r, k=k: r[k]) for k in ("R1", "mAP", "gap")}
        cells = [f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for _, m, lo, hi in stats.values()]
        d, _, lo, hi = stats["R1"]
        lines.append(f"| {feature} | {len(d)} | {', '.join(f'{x:+.2f}' for x in d)} | {' | '.join(cells)} | "
                     f"{verdict(lo, hi, 'pooled better', 'bn better')} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="training runs' out_dirs (their last.pt is read)")
    ap.add_argument("--test-feature", nargs="+", default=None, choices=("concat", "global", "local"),
                    help="test features to evaluate (default: each run's own)")
    ap.add_argument("--part", choices=("global", "local"), default="global",
                    help="which part's form to vary: the global feature's (default) or the holistic part's")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables (markdown) here")
    args = ap.parse_args()
    for run in args.runs:
        if not (run / "last.pt").is_file():
            ap.error(f"{run / 'last.pt'} not found: pass training runs' out_dirs (each holds last.pt)")
    lines = [f"| run | test feature | test {args.part} | all-search R1 | mAP | gap ratio | modality probe |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for run in args.runs:
        for r in evaluate_forms(run, args.test_feature, args.part):
            rows.append(r)
            lines.append(f"| {r['run']} | {r['feature']} | {r['form']} | {r['R1']:.2f} | {r['mAP']:.2f} | "
                         f"{r['gap']:.2f} | {r['probe']:.1f} |")
            print(lines[-1], flush=True)
    if len(args.runs) > 1:
        lines += [""] + summary(rows)
        print("\n".join(summary(rows)))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
