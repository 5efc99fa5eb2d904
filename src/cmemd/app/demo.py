"""``cmemd demo``: generate the synthetic benchmark (cached), train CM-EMD on CPU, evaluate SYSU-MM01
all/indoor-search plain and re-ranked, print the tables, write the report. The CLI's default config is
``synth_cmemd_global`` (the baseline + CM-EMD on the BN-neck output; why: docs/method.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def run_demo(
    *,
    data_dir: Path,
    out_dir: Path,
    config: Any,
    ids: int = 200,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
    report: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns the results (``{setting: ProtocolResult}``). With ``report`` the HTML report
    (:func:`cmemd.report.write_evaluation_report`) goes into ``<out_dir>/report``."""
    import json
    import time

    from cmemd.config import load_config
    from cmemd.data.synth import SynthConfig, generate_sysu
    from cmemd.folders import RUN_ENTRIES, check_output_folder, check_replaceable, clear_folder, lock_folder

    phases: dict[str, float] = {}
    t0 = time.time()
    synth = SynthConfig(ids=ids, images_per_camera=(10, 12), seed=0)
    try:
        cached = json.loads((data_dir / "synth_summary.json").read_text()).get("config") == synth.to_dict()
    except (OSError, ValueError, AttributeError):
        cached = False
    # Every refusal comes before any work: a folder cmemd did not make is never replaced (cmemd.folders), and a
    # run folder another process is writing is never touched.
    check_output_folder(data_dir, "--data-dir")
    if not cached:
        check_replaceable(data_dir, "dataset", "--data-dir")
    check_output_folder(out_dir, "--out-dir")
    check_replaceable(out_dir, "run", "--out-dir")
    # the demo reports plain AND re-ranked numbers, each labelled (eval.rerank only adds the second table)
    cfg = load_config(
        config,
        [f"data.root={data_dir}", f"run.out_dir={out_dir}", "eval.rerank=true", *(overrides or [])]
        + ([f"optim.epochs={epochs}"] if epochs is not None else []),
    )
    with lock_folder(out_dir, option="--out-dir"):  # train() takes it again (re-entrant in one process)
        kept = clear_folder(out_dir, "run", RUN_ENTRIES, option="--out-dir", made_by="cmemd demo")
        if kept:
            echo(f"note: {out_dir} keeps entries cmemd did not write: {', '.join(kept)}")
        if cached:
            echo(f"[1/4] synthetic data: reusing {data_dir} (same generator settings)")
        else:
            echo(f"[1/4] synthetic data: generating {ids} identities into {data_dir} ...")
            generate_sysu(data_dir, synth, workers=2)  # replaces only an earlier synthetic set (checked above)
        return _train_and_evaluate(cfg, config, data_dir, out_dir, phases, t0, echo, report)


def _train_and_evaluate(
    cfg: Any,
    config: Any,
    data_dir: Path,
    out_dir: Path,
    phases: dict[str, float],
    t0: float,
    echo: Callable[[str], None],
    report: bool,
) -> dict[str, Any]:
    """The demo after its folders are ready (its run folder locked): train, evaluate, print, write the report."""
    import time

    from cmemd.app.evaluate import evaluate_model, format_all, modality_gap_of, save_results
    from cmemd.app.train import train
    from cmemd.benchmarks.stats import dataset_stats, format_stats, preview_grid
    from cmemd.report import write_evaluation_report

    echo(format_stats(dataset_stats(data_dir)))
    preview = preview_grid(data_dir, out_dir.parent / f"{out_dir.name}_preview.png", ids=6, per_camera=2)
    echo(f"preview of the data: {preview}")
    phases["data"] = time.time() - t0

    t0 = time.time()
    echo(
        f"[2/4] training {config} ({cfg.model.arch} width {cfg.model.width}, {cfg.data.height}x{cfg.data.width}, "
        f"{cfg.optim.epochs} epochs, alignment {cfg.loss.alignment}"
        + (
            f" on {cfg.loss.align_granularities} / {cfg.loss.align_feature}, λ={cfg.loss.lambda_align:g}"
            if cfg.loss.alignment != "none"
            else ""
        )
        + ") ..."
    )
    outcome = train(cfg, resume=False, evaluate_after=False)
    phases["train"] = time.time() - t0

    t0 = time.time()
    echo(
        "[3/4] evaluating: SYSU-MM01 protocol, all-search and indoor-search, single-shot, 10 trials; plain and "
        f"re-ranked (k-reciprocal, k1={cfg.eval.rerank_k1}, k2={cfg.eval.rerank_k2}, "
        f"λ={cfg.eval.rerank_lambda:g}), each labelled ..."
    )
    results, feats = evaluate_model(outcome.model, cfg, progress=False, return_features=True)
    gap = modality_gap_of(feats)
    save_results(results, out_dir / "results.json", gap)
    purity = _test_plan_purity(outcome.model, cfg, data_dir)
    phases["evaluate"] = time.time() - t0
    echo("[4/4] results")
    echo(format_all(results))
    echo(gap.format())
    if purity is not None:
        echo(f"test ids' {purity.format()}")
    echo(f"chance Rank-1 is about 1/#test ids; run directory {out_dir}")
    echo(
        "time per phase: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + f" (total {sum(phases.values()):.0f} s)"
    )
    if report:
        index = write_evaluation_report(
            out_dir / "report", results, feats, checkpoint=outcome.checkpoint, data=data_dir, config=config
        )
        echo(f"evaluation report (open in a browser): {index.resolve()}")
    return results


def _test_plan_purity(model: Any, cfg: Any, data_dir: Path):
    """The plan's same-view preference on the test ids (the mechanism the paper claims), measured on the feature and
    cost the loss aligns; None without the generator's nuisance sidecar."""
    from cmemd.app.train import config_diagnostics
    from cmemd.benchmarks.synthetic import nuisance_of_test_ids

    records, nuisance = nuisance_of_test_ids(data_dir)
    if nuisance is None:
        return None
    diag = config_diagnostics(model, records, cfg, nuisance=nuisance, device=next(model.parameters()).device)
    return diag["plan_purity"]
