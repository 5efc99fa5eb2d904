"""The alignment study's report (study.py beside it): tables, paired intervals and plots from the run files."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

ALL = "sysu all-search single-shot"
INDOOR = "sysu indoor-search single-shot"


def r1(run: dict, setting: str = ALL, key: str = "R1") -> float:
    return 100 * run["results"][setting]["mean"][key]


def diag(run: dict, key: str) -> float:
    v = run["test_diagnostics"].get(key)
    return float("nan") if v is None else float(v)


def fmt(vals: list[float], digits: int = 2) -> str:
    vals = [v for v in vals if not np.isnan(v)]
    if not vals:
        return "-"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}" if len(vals) > 1 else f"{vals[0]:.{digits}f}"


def paired(a: list[dict], b: list[dict], value: Callable[[dict], float]) -> tuple[list[float], float, float, float]:
    """Per-seed differences a - b, their mean and a 95% t interval (NaN with fewer than 2 pairs). A seed whose
    value is NaN in either row (a measure that run did not record) makes no pair."""
    from scipy import stats

    bs = {r["seed"]: r for r in b}
    d = [value(r) - value(bs[r["seed"]]) for r in a if r["seed"] in bs]
    d = [x for x in d if not np.isnan(x)]
    if len(d) < 2:
        return d, float(np.mean(d)) if d else float("nan"), float("nan"), float("nan")
    m, se = float(np.mean(d)), float(np.std(d, ddof=1) / np.sqrt(len(d)))
    h = float(stats.t.ppf(0.975, len(d) - 1) * se)
    return d, m, m - h, m + h


def seeds_for(sd: float, half_width: float = 2.0) -> int:
    """Smallest number of seed pairs whose 95% t interval is at most ``half_width`` wide on each side, if the
    per-seed differences keep the standard deviation ``sd``."""
    from scipy import stats

    # t > z, so the normal approximation's n is a lower bound; walk up from it
    n = max(2, int(np.ceil((stats.norm.ppf(0.975) * sd / half_width) ** 2)))
    while stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) > half_width:
        n += 1
    return n


def verdict(lo: float, hi: float, above: str = "a better", below: str = "b better") -> str:
    """The verdict of a paired interval; ``above``/``below`` name what an interval above/below 0 means."""
    if np.isnan(lo):
        return "too few seeds"
    if lo > 0:
        return f"**{above}** (interval > 0)"
    if hi < 0:
        return f"**{below}** (interval < 0)"
    return "not resolved (interval spans 0)"


def row_table(rows: dict, runs: dict[str, list[dict]], baseline: str | None) -> list[str]:
    out = ["| row | seeds | all R1 | all mAP | indoor R1 | indoor mAP | gap ratio | modality probe | t->v R1 (diag) | "
           "within-id mixing | plan same-view x uniform |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (label, _) in rows.items():
        rs = runs.get(name)
        if not rs:
            out.append(f"| {label} | 0 | (not run yet) | | | | | | | | |")
            continue
        out.append(
            f"| {label} | {len(rs)} | {fmt([r1(r) for r in rs])} | {fmt([r1(r, ALL, 'mAP') for r in rs])} | "
            f"{fmt([r1(r, INDOOR) for r in rs])} | {fmt([r1(r, INDOOR, 'mAP') for r in rs])} | "
            f"{fmt([diag(r, 'gap_centre_ratio') for r in rs])} | {fmt([100 * diag(r, 'gap_probe_accuracy') for r in rs], 1)} | "
            f"{fmt([100 * diag(r, 'gap_r1_t2v') for r in rs], 1)} | {mixing_cell(rs)} | {purity_cell(rs)} |")
    return out


def mixing_cell(rs: list[dict]) -> str:
    """Within-identity modality mixing (the modality gap's `mixing`: 0 = two clusters per identity, 1 = as if the
    labels were random), over the runs that recorded it (added in session 7; `--backfill` adds it from a run's
    checkpoint), with their count when that is not every run."""
    have = [r for r in rs if "gap_mixing" in r["test_diagnostics"]]
    cell = fmt([diag(r, "gap_mixing") for r in have], 3)
    return cell if len(have) in (0, len(rs)) else f"{cell} ({len(have)} of {len(rs)} seeds)"


def purity_cell(rs: list[dict]) -> str:
    """The plan's same-view ratio; with the ceiling of its test groups where the run recorded it (runs from
    session 6 on; it depends on the data only: `--pixel-purity` prints it for every study set)."""
    ceiling = [r["test_diagnostics"]["purity_max_ratio"] for r in rs if "purity_max_ratio" in r["test_diagnostics"]]
    cell = fmt([diag(r, "purity_ratio") for r in rs])
    return cell + (f" (most possible x{np.mean(ceiling):.2f})" if ceiling else "")


def comparisons(pairs: list[tuple[str, str]], rows: dict, runs: dict, value=r1, what="all-search R1",
                resolve: float = 2.0, words: tuple[str, str] = ("a better", "b better"), digits: int = 2) -> list[str]:
    """Paired-difference rows; the last column: seeds needed for a 95% interval of ±``resolve`` at the spread of the
    differences so far (how far the study is from resolving a difference of that size)."""
    out = [f"| a | b | per-seed a - b ({what}) | mean [95% t interval] | verdict | seeds for ±{resolve:g} |",
           "|---|---|---|---|---|---|"]
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        d, m, lo, hi = paired(runs[a], runs[b], value)
        if not d:
            continue
        interval = f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" if not np.isnan(lo) else f"{m:+.{digits}f}"
        need_s = str(seeds_for(float(np.std(d, ddof=1)), resolve)) if len(d) > 1 else "-"
        out.append(f"| {rows[a][0]} | {rows[b][0]} | {', '.join(f'{x:+.{digits}f}' for x in d)} | {interval} | "
                   f"{verdict(lo, hi, *words)} | {need_s} |")
    return out


def health_table(rows: dict, runs: dict) -> list[str]:
    out = ["| candidate | all R1 | norm global | norm local | norm accum | dead units global / local / accum | "
           "zero entries local / accum | gap ratio | plan same-view x uniform |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, (label, _) in rows.items():
        for r in runs.get(name, []):
            e = r["last_epoch"]

            def g(k: str, pct: bool = False) -> str:
                return "-" if k not in e else (f"{100 * e[k]:.0f}%" if pct else f"{e[k]:.2f}")

            # runs recorded before the shared-unit count logged dead_accum per (prefix, unit); later ones log both
            acc = (f"{g('dead_accum', True)} (per prefix {g('dead_accum_prefix', True)})" if "dead_accum_prefix" in e
                   else f"per prefix {g('dead_accum', True)}")
            out.append(f"| {label} | {r1(r):.2f} | {g('norm_global')} | {g('norm_local')} | {g('norm_accum')} | "
                       f"{g('dead_global', True)} / {g('dead_local', True)} / {acc} | "
                       f"{g('zero_local', True)} / {g('zero_accum', True)} | "
                       f"{diag(r, 'gap_centre_ratio'):.2f} | {diag(r, 'purity_ratio'):.2f} |")
    return out


def budget_health_table(rows: dict, runs: dict, reference: Callable[[str], str | None]) -> list[str]:
    """The issue's first goal at the study's budget: each granularity's aligned-feature norm as a share of the same
    model's unaligned run (``reference(row)``, same seed), and the dead units, mean over seeds (worst seed in
    brackets). Rows without a reference (the unaligned ones) are left out."""
    out = ["| row | seeds | unaligned reference | norm global / local / accum (x reference, same seed) | "
           "dead units global / local / accum (worst seed) |", "|---|---|---|---|---|"]
    for name, (label, _) in rows.items():
        rs, refname = runs.get(name), reference(name)
        if not rs or refname is None:
            continue
        ref = {r["seed"]: r["last_epoch"] for r in runs.get(refname, [])}
        cells_n, cells_d = [], []
        for g in ("global", "local", "accum"):
            k = f"norm_{g}"
            ratios = [r["last_epoch"][k] / ref[r["seed"]][k] for r in rs
                      if k in r["last_epoch"] and r["seed"] in ref and ref[r["seed"]].get(k)]
            cells_n.append(f"{np.mean(ratios):.2f}x" if ratios else "-")
            # runs recorded before `dead_accum_prefix` existed counted accumulated units per prefix: left out here
            dead = [r["last_epoch"][f"dead_{g}"] for r in rs if f"dead_{g}" in r["last_epoch"]
                    and (g != "accum" or "dead_accum_prefix" in r["last_epoch"])]
            cells_d.append(f"{100 * np.mean(dead):.1f}% ({100 * max(dead):.1f}%)" if dead else "-")
        seeds = sum(r["seed"] in ref for r in rs)
        out.append(f"| {label} | {seeds} of {len(rs)} | {rows[refname][0] if refname in rows else refname} | "
                   f"{' / '.join(cells_n)} | {' / '.join(cells_d)} |")
    return out


def health_reference(row: str) -> str | None:
    """The unaligned run of the same model: the baseline for the rows that add one alignment to it, the full model
    at lambda 0 for the full model's variants."""
    if row in ("baseline", "full_none"):
        return None
    return "baseline" if row.endswith("_global") else "full_none"


def gap(run: dict) -> float:
    return diag(run, "gap_centre_ratio")


# The variation sweeps: (group, CM-EMD row, all-pairs row, the group holding the default level's rows, label)
VARIATION_SERIES = (("variation", "full", "full_allpairs", "core", "full model, pooled cost"),
                    ("variation_bn", "bn1_global", "bn1_allpairs_global", "space", "baseline + alignment, BN-neck cost"))


def variation_points(groups: dict, load_runs, default: float) -> list[tuple[str, list[tuple]]]:
    """Per sweep, ``(label, [(variation, mean R1 advantage, interval half-width, mean purity ratio, its std,
    seed pairs)])``: CM-EMD minus all-pairs, paired by seed; the ``default`` level from the group that ran it."""
    series = []
    for gname, emd, allp, base_group, label in VARIATION_SERIES:
        if gname not in groups:
            continue
        runs = load_runs(gname)
        tags = {n.rsplit("_v", 1)[1] for n in runs}
        levels = {float(t): (runs.get(f"{emd}_v{t}", []), runs.get(f"{allp}_v{t}", [])) for t in tags}
        if not levels:
            continue
        base = load_runs(base_group)
        levels[default] = (base.get(emd, []), base.get(allp, []))
        points = []
        for v in sorted(levels):
            a, b = levels[v]
            d, m, lo, hi = paired(a, b, r1)
            if not d:
                continue
            p = [diag(r, "purity_ratio") for r in a]
            points.append((v, m, (hi - lo) / 2 if not np.isnan(lo) else 0.0, np.mean(p), np.std(p), len(d)))
        if points:
            series.append((label, points))
    return series


def variation_plot(groups: dict, load_runs, out_dir: Path) -> Path | None:
    """CM-EMD's Rank-1 advantage over all-pairs and its plan's same-view preference against the generator's
    variation, one line per sweep (:func:`variation_points`)."""
    from cmemd.data.synth import SynthConfig

    series = variation_points(groups, load_runs, SynthConfig().variation)
    if not series:
        return None
    # the ceiling depends on the data only (about the same at every level); runs from session 6 on record it
    ceilings = [r["test_diagnostics"]["purity_max_ratio"] for gname, *_ in VARIATION_SERIES if gname in groups
                for rs in load_runs(gname).values() for r in rs if "purity_max_ratio" in r["test_diagnostics"]]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, (label, pts) in enumerate(series):
        v, m, e, pm, ps, n = (np.array(x) for x in zip(*pts))
        shift = (k - (len(series) - 1) / 2) * 0.01  # side by side where the levels coincide
        axes[0].errorbar(v + shift, m, yerr=e, marker="o", capsize=3, label=label)
        for x, y, c in zip(v + shift, m, n):
            axes[0].annotate(f"{c}", (x, y), textcoords="offset points", xytext=(5, -10), fontsize=7)
        axes[1].errorbar(v + shift, pm, yerr=ps, marker="o", capsize=3, label=label)
    axes[0].axhline(0, color="grey", lw=0.8), axes[1].axhline(1, color="grey", lw=0.8)
    axes[1].axhline(1.5, color="tab:red", ls=":", lw=0.8, label="the issue's goal (x1.5)")
    if ceilings:
        axes[1].axhline(np.mean(ceilings), color="grey", ls="--", lw=0.8,
                        label=f"most any plan can reach (x{np.mean(ceilings):.2f})")
    axes[1].legend(fontsize=8, loc="center right")
    axes[0].set_xlabel("generator variation"), axes[0].set_ylabel("R1: CM-EMD - all-pairs (points)")
    axes[0].set_title("CM-EMD advantage (95% t interval; n = seeds)", fontsize=10)
    axes[1].set_xlabel("generator variation"), axes[1].set_ylabel("plan same-view mass / uniform")
    axes[1].set_title("plan purity of CM-EMD (test ids; ± std)", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "variation.png"
    fig.savefig(path, dpi=100), plt.close(fig)
    return path


def write(groups: dict, load_runs, report: Path, out_dir: Path, command: str, wall: float | None) -> None:
    load_runs = functools.lru_cache(maxsize=None)(load_runs)  # groups are read again for pairs and health
    lines = ["# Alignment study: does CM-EMD align the modalities, and does its plan pick low-variation pairs?", "",
             f"Command: `{command}` (resumable: every finished run is a JSON file under "
             "[`runs/`](runs/), and a rerun skips it). `--report-only` rebuilds this page.", "",
             "Measures (from features only, `cmemd.evaluation.modality`, on the 100 test ids after training): "
             "**gap ratio** = distance between an identity's visible and thermal feature centres over the "
             "within-modality spread (bias-corrected; 0 = modalities share a centre); **modality probe** = balanced "
             "accuracy of a linear probe telling visible from thermal on held-out ids (50% = indistinguishable); "
             "**t->v R1 (diag)** = thermal->visible Rank-1 against every visible test image (not the protocol's "
             "number); **within-id mixing** = share of test images whose nearest other image of their identity is of "
             "the other modality, over the share a random labelling gives (0 = each identity forms a visible and a "
             "thermal cluster, 1 = mixed as if at random: the number behind a t-SNE's overlap); "
             "**plan same-view x uniform** = share of the exact CM-EMD plan's mass (cost and feature of the "
             "row's loss, global feature, groups of 4 + 4 images per id) on same-view visible-thermal pairs, over the "
             "share the uniform all-pairs coupling gives them (1 = no preference; in brackets, where recorded, the most "
             "any plan with the same marginals can reach on those groups). Rank-1 and mAP: SYSU-MM01 "
             "protocol, single-shot, 10 trials; mean ± std over seeds. Paired differences: same seed, same data; "
             "95% t interval over seeds.", ""]
    if wall:
        lines += [f"Wall time of the last invocation: {wall / 60:.0f} min.", ""]
    for gname, g in groups.items():
        runs = load_runs(gname)
        lines += [f"## {g['title']}", "", g["about"], ""]
        if gname == "cost":
            lines += health_table(g["rows"], runs)
        else:
            lines += row_table(g["rows"], runs, None)
            if g.get("pairs"):
                rows = {**g["rows"], **g.get("pair_rows", {})}
                both = dict(runs)
                for other in g.get("pairs_from", ()):  # the groups whose rows the pairs also name
                    both.update(load_runs(other))
                lines += ["", "Paired differences:", ""] + comparisons(g["pairs"], rows, both)
                lines += ["", "Paired differences in the gap ratio (test ids; negative = a closes more of the gap):", ""]
                lines += comparisons(g["pairs"], rows, both, value=gap, what="gap ratio", resolve=0.1,
                                     words=("a leaves the larger gap", "a closes more of the gap"))
                if any("gap_mixing" in r["test_diagnostics"] for rs in both.values() for r in rs):
                    lines += ["", "Paired differences in within-identity mixing (test ids; the seeds both rows "
                              "recorded it for; positive = a mixes the modalities more):", ""]
                    lines += comparisons(g["pairs"], rows, both, value=lambda r: diag(r, "gap_mixing"),
                                         what="mixing", resolve=0.005, words=("a mixes more", "a mixes less"),
                                         digits=3)
        if gname == "core" and runs:
            lines += ["", "Feature health at this budget (last epoch's steps; the issue's goal: every ratio at least "
                      "0.5x, dead units under 10%):", ""]
            others = [n for n in ("settings", "space") if n in groups]
            all_rows = {**g["rows"], **{k: v for n in others for k, v in groups[n]["rows"].items()}}
            all_runs = {**runs, **{k: v for n in others for k, v in load_runs(n).items()}}
            lines += budget_health_table(all_rows, all_runs, health_reference)
        if gname == ("variation_bn" if "variation_bn" in groups else "variation"):  # one plot after the last sweep
            p = variation_plot(groups, load_runs, out_dir)
            if p:
                lines += ["", f"![variation]({p.name})"]
        lines += [""]
    notes = report.with_name("notes.md")
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report}")
