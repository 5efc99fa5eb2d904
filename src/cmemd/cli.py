"""The command line: each command is a thin composition of library calls.

Heavy imports (torch, the generator) happen inside the commands so that ``cmemd --help``
stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from cmemd.errors import CmemdError, ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="cmemd: visible-thermal person re-identification with CM-EMD.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: inspect, validate, generate, preview.")
app.add_typer(data_app, name="data")


_RERANK_HELP = (
    "Also report k-reciprocal re-ranked results (Zhong et al. 2017), printed and saved beside the plain "
    "ones and labelled: transductive (uses all queries and the whole gallery), never comparable with plain numbers."
)


def _version(value: bool) -> None:
    if value:
        from cmemd import __version__

        typer.echo(f"cmemd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cmemd: visible-thermal person re-identification with CM-EMD."""


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


#: The range of every numeric flag, checked before any work: a 0 or a negative is an error (never read as "the
#: default", which ``value or default`` did).
_FLAG_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "--trial": (lambda v: 1 <= v <= 10, "an integer in 1..10 (the numbered split)"),
    "--k1": (lambda v: v >= 1, "an integer >= 1 (k-reciprocal neighbours; the paper's 20)"),
    "--k2": (lambda v: v >= 1, "an integer >= 1 (query-expansion neighbours; the paper's 6)"),
    "--lambda-value": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1] (the weight of the original distance)"),
    "--batch-size": (lambda v: v >= 1, "an integer >= 1 (images per forward pass)"),
    "--top-k": (lambda v: v >= 1, "an integer >= 1 (matches listed per query)"),
    "--epochs": (lambda v: v >= 1, "an integer >= 1"),
    "--ids": (lambda v: v >= 3, "an integer >= 3 (at least one identity per split)"),
    "--workers": (lambda v: v >= 1, "an integer >= 1 (worker processes)"),
}


def _check_flags(**values: Any) -> None:
    """ConfigError naming the first flag (keyword ``lambda_value`` = ``--lambda-value``) outside its range in
    :data:`_FLAG_RANGES`; ``None`` (not given: the default applies) passes."""
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        ok, allowed = _FLAG_RANGES[flag]
        if value is not None and not ok(value):
            raise ConfigError(
                f"{flag}={value:g}: must be {allowed}"
                if isinstance(value, float)
                else f"{flag}={value}: must be {allowed}"
            )


# --------------------------------------------------------------------------- data


@data_app.command("stats")
def data_stats(
    root: Path = typer.Argument(..., help="Dataset root (any known layout)."),
    layout: Optional[str] = typer.Option(
        None,
        help=(
            "Benchmark name in cmemd.benchmarks.registry (an unknown one lists them); detected from the folder when "
            "omitted."
        ),
    ),
) -> None:
    """Print per-split, per-camera and per-modality image counts and the totals per modality."""
    from cmemd.benchmarks.stats import dataset_stats, format_stats

    try:
        typer.echo(format_stats(dataset_stats(root, layout=layout)))
    except CmemdError as e:
        _fail(e)


@data_app.command("check")
def data_check(
    root: Path = typer.Argument(..., help="Dataset root (any known layout)."),
    layout: Optional[str] = typer.Option(
        None,
        help=(
            "Benchmark name in cmemd.benchmarks.registry (an unknown one lists them); detected from the folder when "
            "omitted."
        ),
    ),
    decode: bool = typer.Option(True, help="Decode every image (slow on the full datasets)."),
) -> None:
    """Validate a dataset root and report every problem at once."""
    from cmemd.benchmarks.stats import check_dataset

    try:
        problems = check_dataset(root, layout=layout, decode=decode)
    except CmemdError as e:
        _fail(e)
    if problems:
        for p in problems:
            typer.echo(f"  - {p}")
        typer.secho(f"{len(problems)} problem(s) found in {root}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    typer.secho(f"{root}: OK", fg=typer.colors.GREEN)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Output folder (must be empty or absent unless --force)."),
    layout: str = typer.Option(
        "sysu",
        help=(
            "Dataset layout to write: any benchmark in cmemd.benchmarks.registry with a generator (an unknown one "
            "lists them)."
        ),
    ),
    ids: Optional[int] = typer.Option(None, help="Number of identities [the layout's default: sysu 300]."),
    seed: int = typer.Option(0, help="Seed; the same seed gives byte-identical files."),
    height: int = typer.Option(128, help="Image height in pixels."),
    width: int = typer.Option(64, help="Image width in pixels."),
    workers: int = typer.Option(1, help="Worker processes (the output does not depend on it)."),
    images_min: Optional[int] = typer.Option(
        None, help="Fewest images per (id, camera), where the layout draws a count [the layout's default: sysu 10]."
    ),
    images_max: Optional[int] = typer.Option(
        None, help="Most images per (id, camera), where the layout draws a count [the layout's default: sysu 20]."
    ),
    palette_size: int = typer.Option(4, help="Colours in the shared palette (2..16)."),
    variation: float = typer.Option(0.4, help="Pose / view / box variation strength (0..1)."),
    occlusion_rate: float = typer.Option(0.1, help="Probability that an image is partly occluded."),
    thermal_noise: float = typer.Option(0.01, help="Thermal sensor noise (0..0.5); blur grows with it."),
    camera_gap: float = typer.Option(0.2, help="How different the cameras look (0..1)."),
    force: bool = typer.Option(
        False,
        "--force",
        help=(
            "Replace the synthetic set in a non-empty folder the generator made (its files are removed first); a "
            "folder cmemd did not make is refused."
        ),
    ),
) -> None:
    """Generate the synthetic visible-thermal benchmark in a dataset's layout (any registered benchmark with a
    generator)."""
    import json
    import time

    from cmemd.benchmarks.registry import BENCHMARKS
    from cmemd.data.synth import SynthConfig
    from cmemd.errors import ConfigError
    from cmemd.folders import check_replaceable, folder_entries

    try:
        _check_flags(ids=ids, workers=workers)
        spec = BENCHMARKS.get(layout)
        if spec is None or spec.synthesize is None:
            makers = [n for n, s in BENCHMARKS.items() if s.synthesize is not None]
            raise ConfigError(f"--layout {layout!r} is unknown: use one of {', '.join(makers)}")
        check_replaceable(out, "dataset", "--out")  # a folder cmemd did not make is never written into
        if folder_entries(out) and not force:
            raise ConfigError(
                f"--out {out} holds an earlier synthetic set: pass --force to replace it (its images "
                "are removed first), or choose an empty folder"
            )
        lo, hi = spec.synth_defaults.get("images_per_camera", (10, 20))
        cfg = SynthConfig(
            ids=ids if ids is not None else spec.synth_defaults.get("ids", 300),
            images_per_camera=(
                images_min if images_min is not None else lo,
                images_max if images_max is not None else hi,
            ),
            seed=seed,
            height=height,
            width=width,
            palette_size=palette_size,
            variation=variation,
            occlusion_rate=occlusion_rate,
            thermal_noise=thermal_noise,
            camera_gap=camera_gap,
        )
        t0 = time.perf_counter()
        summary = spec.synthesize(out, cfg, workers=workers)
        dt = time.perf_counter() - t0
    except CmemdError as e:
        _fail(e)
    brief = {k: v for k, v in summary.items() if k not in ("ids", "trials", "config")}
    if "ids" in summary:
        brief["ids"] = {s: len(v) for s, v in summary["ids"].items()}
    typer.echo(json.dumps(brief, indent=1))
    typer.echo(
        f"wrote {summary['total']} images to {out} in {dt:.1f} s ({summary['total'] / max(dt, 1e-9):.0f} images/s)"
    )


@data_app.command("preview")
def data_preview(
    root: Path = typer.Argument(..., help="Dataset root (any known layout, real or synthetic)."),
    out: Path = typer.Option(Path("preview.png"), "--out", help="Image file to write: .png, .jpg or .bmp."),
    ids: int = typer.Option(6, help="Number of identities (rows)."),
    per_camera: int = typer.Option(
        2, help="Images per camera (per sensor, or pairs / 2 for an aligned rig; the benchmark lays out the columns)."
    ),
) -> None:
    """Write a grid of images: rows are identities, columns cameras and modalities (as the dataset lays them out)."""
    from cmemd.benchmarks.stats import preview_grid
    from cmemd.data.preview import check_preview_args

    try:
        check_preview_args(out, ids, per_camera)
        if not out.parent.is_dir():
            raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it first")
        path = preview_grid(root, out, ids=ids, per_camera=per_camera)
    except CmemdError as e:
        _fail(e)
    typer.echo(f"wrote {path}")


# --------------------------------------------------------------------------- training


def _load_cfg(config: Optional[Path], overrides: list[str]):
    from cmemd.config import load_config

    return load_config(config, overrides)


@app.command("configs")
def configs_cmd() -> None:
    """List the configs shipped with cmemd: pass a name to -c (cmemd train -c sysu_cmemd)."""
    from cmemd.config import packaged_configs

    found = packaged_configs()
    width = max(map(len, found), default=0)
    for name, description in found.items():
        typer.echo(f"{name:<{width}}  {description}")
    typer.echo("a file path works too (cmemd train -c my.yaml); its `base:` may name one of these")


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train_cmd(
    config: Path = typer.Option(
        ..., "--config", "-c", help="YAML config file, or a packaged config's name (`cmemd configs`)."
    ),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="key=value overrides, e.g. optim.epochs=5 run.out_dir=runs/x"
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in run.out_dir from its last checkpoint."),
    all_trials: bool = typer.Option(
        False,
        "--all-trials",
        help="Datasets with numbered training splits: train one model per trial and report the mean.",
    ),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the evaluation after training."),
) -> None:
    """Train a model (CM-EMD or a baseline) and evaluate it on the test protocol.

    Ctrl-C (SIGINT) or SIGTERM stops at the next step boundary, saves a resumable checkpoint, prints the command
    that resumes and exits 130 / 143; a second signal a few seconds later stops at once without saving (the last
    complete checkpoint stays: checkpoints are written atomically)."""
    from cmemd.app.evaluate import format_all
    from cmemd.app.runtime import TrainingInterrupted
    from cmemd.app.train import train

    try:
        cfg = _load_cfg(config, overrides or [])
        if all_trials:
            from cmemd.app.train import train_all_trials

            combined = train_all_trials(cfg, resume=resume, evaluate_after=not no_eval, echo=typer.echo)
            if combined:
                typer.echo(format_all(combined))
            return
        outcome = train(cfg, resume=resume, evaluate_after=not no_eval)
        if outcome.results:
            typer.echo(format_all(outcome.results))
            typer.echo(outcome.modality_gap.format())
            typer.echo(
                f"run directory: {outcome.out_dir} (checkpoint {outcome.checkpoint}, results.json, metrics.jsonl)"
            )
    except CmemdError as e:
        _fail(e)
    except TrainingInterrupted as e:
        if e.rank == 0:
            typer.echo(
                f"interrupted at epoch {e.epoch + 1} step {e.step} ({_signal_name(e.signum)}); the resumable "
                f"checkpoint is {e.checkpoint}; resume with: {_resume_command()}"
            )
        raise typer.Exit(code=e.exit_code) from None
    except KeyboardInterrupt:
        # outside the training steps (setup, evaluation) or a second Ctrl-C: nothing is saved, nothing corrupted
        typer.secho(
            "interrupted: stopped at once, without saving (outside the training steps, or a second signal); "
            f"the last complete checkpoint, if any, is intact; resume with: {_resume_command()}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=130) from None


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _resume_command() -> str:
    """The command line this process was started with, plus ``--resume`` (under torchrun: a torchrun line with
    this machine's number of processes)."""
    import os
    import shlex

    args = sys.argv[1:] + ([] if "--resume" in sys.argv[1:] else ["--resume"])
    prog = ["python", "-m", "cmemd"] if Path(sys.argv[0]).name == "__main__.py" else ["cmemd"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        nodes = int(os.environ["WORLD_SIZE"]) // int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        prog = [
            "torchrun",
            *([f"--nnodes={nodes}"] if nodes > 1 else []),
            f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])}",
            "-m",
            "cmemd",
        ]
    return shlex.join(prog + args)


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A last.pt written by `cmemd train`."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Dataset root (default: the one the model was trained on)."
    ),
    options: Optional[list[str]] = typer.Argument(
        None,
        metavar="[KEY=VALUE]...",
        help=(
            "The benchmark's protocol options as KEY=VALUE (its eval.* settings; omitted ones keep the "
            "checkpoint's), e.g. SYSU-MM01 modes=[all,indoor] shots=10 method=official rand_perm=PATH trials=10; an "
            "unknown key lists the benchmark's options."
        ),
    ),
    protocol: Optional[str] = typer.Option(
        None, help="Dataset whose protocol to run (default and only choice: the training dataset's)."
    ),
    trial: Optional[int] = typer.Option(
        None, help="The numbered training split (1..10; must be the one the model was trained on)."
    ),
    out: Optional[Path] = typer.Option(None, help="Write the results as JSON here."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    report: Optional[Path] = typer.Option(
        None, "--report", help="Write an HTML report (CMC, ranked lists, t-SNE, per-trial table) into this folder."
    ),
    flip: Optional[bool] = typer.Option(
        None,
        "--flip/--no-flip",
        help="Test-time flip: average each image's feature with its mirror's (default: the model's eval.flip).",
    ),
    rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help=_RERANK_HELP),
    k1: Optional[int] = typer.Option(
        None, "--k1", help="Re-ranking k1 (k-reciprocal neighbours) [eval.rerank_k1, 20]."
    ),
    k2: Optional[int] = typer.Option(None, "--k2", help="Re-ranking k2 (query expansion) [eval.rerank_k2, 6]."),
    lambda_value: Optional[float] = typer.Option(
        None, "--lambda-value", help="Re-ranking weight of the original distance [eval.rerank_lambda, 0.3]."
    ),
) -> None:
    """Evaluate a trained checkpoint with its benchmark's protocol."""
    import typing
    from dataclasses import replace

    from cmemd.app.evaluate import evaluate_model, format_all, load_trained, modality_gap_of, save_results
    from cmemd.app.runtime import resolve_device
    from cmemd.folders import check_output_file, check_output_folder
    from cmemd.report import write_evaluation_report

    try:
        _check_flags(trial=trial, k1=k1, k2=k2, lambda_value=lambda_value)
        if out:  # where the results go is checked before the evaluation, not after it
            check_output_file(out, "--out")
        if report:
            check_output_folder(report, "--report")
        dev = resolve_device(device)
        model, cfg = load_trained(checkpoint, device=dev)
        from cmemd.benchmarks.registry import get_benchmark
        from cmemd.config import option_values

        d, e = cfg.data, cfg.eval
        spec = get_benchmark(d.dataset)
        if protocol is not None and get_benchmark(protocol) is not spec:
            raise ConfigError(
                f"--protocol {protocol}: this model was trained on {d.dataset}; its classes and "
                "modality branches belong to that dataset (pass --data to evaluate on another root)"
            )
        if trial is not None and spec.training_trials and trial != d.trial:
            raise ConfigError(
                f"--trial {trial}: this model was trained on {spec.title} trial {d.trial}; testing it on "
                "another trial's split leaks training ids (one model per trial)"
            )
        d = replace(d, root=str(data) if data else d.root)
        hints = typing.get_type_hints(type(e))  # the eval: section, derived from the benchmarks' Options
        e = replace(
            e,
            flip=e.flip if flip is None else flip,
            **option_values(options or [], {k: hints[k] for k in spec.option_names()}, spec.title),
        )
        e = replace(
            e,
            rerank=e.rerank if rerank is None else rerank,
            rerank_k1=e.rerank_k1 if k1 is None else k1,
            rerank_k2=e.rerank_k2 if k2 is None else k2,
            rerank_lambda=e.rerank_lambda if lambda_value is None else lambda_value,
        )
        cfg = replace(cfg, data=d, eval=e)
        from cmemd.config import validate

        validate(cfg)
        typer.echo(
            f"checkpoint {checkpoint}: {cfg.model.arch}, test feature '{cfg.model.test_feature}'; data {d.root}; "
            + (
                f"plain and re-ranked (k-reciprocal, k1={e.rerank_k1}, k2={e.rerank_k2}, λ={e.rerank_lambda:g})"
                if e.rerank
                else "no re-ranking"
            )
        )
        results, feats = evaluate_model(model, cfg, device=dev, return_features=True, spec=spec)
        gap = modality_gap_of(feats)
        typer.echo(format_all(results))
        typer.echo(gap.format())
        if out:
            save_results(results, out, gap)
            typer.echo(f"results written to {out}")
        if report:
            index = write_evaluation_report(report, results, feats, checkpoint=checkpoint, data=d.root)
            typer.echo(f"report written to {index}")
    except CmemdError as err:
        _fail(err)


@app.command("extract")
def extract_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A last.pt written by `cmemd train`."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Folder for the .npz files (eval-features format)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root (default: the training one)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    flip: Optional[bool] = typer.Option(
        None,
        "--flip/--no-flip",
        help="Test-time flip: average each image's feature with its mirror's (default: the model's eval.flip).",
    ),
) -> None:
    """Save the features of the benchmark's test sets as .npz, one file per set (SYSU-MM01: query + gallery_pool)."""
    from cmemd.app.evaluate import evaluation_sets, extraction_settings, load_trained
    from cmemd.app.runtime import resolve_device
    from cmemd.engine.extract import extract_features
    from cmemd.evaluation.features import save_features
    from cmemd.folders import check_output_folder

    try:
        check_output_folder(out_dir, "--out-dir")  # before the model is loaded
        dev = resolve_device(device)
        model, cfg = load_trained(checkpoint, device=dev)
        root = str(data) if data else None
        sets = evaluation_sets(cfg, root)
        flip = cfg.eval.flip if flip is None else flip
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, recs in sets.items():
            feats = extract_features(model, recs, progress=True, desc=name, **extraction_settings(cfg, dev, root, flip))
            path = save_features(
                out_dir / f"{name}.npz", feats, [r.pid for r in recs], [r.camid for r in recs], [r.path for r in recs]
            )
            typer.echo(f"{path}: {feats.shape[0]} x {feats.shape[1]} (test-time flip {'on' if flip else 'off'})")
    except CmemdError as err:
        _fail(err)


@app.command("eval-features")
def eval_features_cmd(
    query: Path = typer.Argument(..., help="Query features .npz (arrays feats, pids, cams, paths)."),
    gallery: Path = typer.Argument(
        ...,
        help=(
            "The gallery side as the benchmark's evaluate_features takes it (SYSU-MM01: the gallery POOL .npz, all "
            "visible test images; each trial draws from it)."
        ),
    ),
    options: Optional[list[str]] = typer.Argument(
        None,
        metavar="[KEY=VALUE]...",
        help=(
            "The protocol's options as KEY=VALUE (the keyword arguments of the benchmark's evaluate_features), e.g. "
            "SYSU-MM01 mode=indoor shots=10 method=official rand_perm=PATH trials=10, a two-direction benchmark "
            "direction=t2v (QUERY thermal); an unknown key lists the benchmark's options."
        ),
    ),
    protocol: str = typer.Option(
        ..., help="Benchmark whose protocol to run (a name in cmemd.benchmarks.registry; an unknown one lists them)."
    ),
    trial: int = typer.Option(1, help="The numbered split (1..10) the features belong to (a label)."),
    feature_name: Optional[str] = typer.Option(None, help="Name of the feature, shown in the table (e.g. bn-neck)."),
    per_trial: bool = typer.Option(False, help="Print one row per trial as well."),
    out: Optional[Path] = typer.Option(None, help="Write the results as JSON here."),
    rerank: bool = typer.Option(False, "--rerank", help=_RERANK_HELP),
    k1: int = typer.Option(20, "--k1", help="Re-ranking: k-reciprocal neighbours."),
    k2: int = typer.Option(6, "--k2", help="Re-ranking: query-expansion neighbours."),
    lambda_value: float = typer.Option(0.3, "--lambda-value", help="Re-ranking: weight of the original distance."),
) -> None:
    """Evaluate saved features with a dataset's protocol (no model involved)."""
    import json
    import typing

    from cmemd.benchmarks.registry import BENCHMARKS, known
    from cmemd.config import option_values
    from cmemd.evaluation import ReRanking, format_results, load_features, save_json, to_dict
    from cmemd.folders import check_output_file

    try:
        _check_flags(trial=trial, k1=k1, k2=k2, lambda_value=lambda_value)
        if protocol not in BENCHMARKS:
            raise ConfigError(f"--protocol {protocol!r} is unknown; use one of {', '.join(BENCHMARKS)} ({known()})")
        spec = BENCHMARKS[protocol]
        if out is not None:  # before the work, not after
            check_output_file(out, "--out")
        hints = typing.get_type_hints(type(spec).evaluate_features)
        names = [n for n in spec.feature_option_names() if n != "trial"]  # --trial is the common flag
        kwargs = option_values(options or [], {n: hints[n] for n in names}, spec.title)  # before any file is read
        if "trial" in spec.feature_option_names():
            kwargs["trial"] = trial
        q, g = load_features(query), load_features(gallery)
        runs: dict[str, ReRanking | None] = {"plain": None}
        if rerank:
            runs["reranked"] = ReRanking(k1, k2, lambda_value)
        res = {
            key: spec.evaluate_features(q, g, feature_name=feature_name, rerank=rr, **kwargs)
            for key, rr in runs.items()
        }
        typer.echo("\n\n".join(format_results(r, per_trial=per_trial) for r in res.values()))
        if out is not None:
            if rerank:  # both, side by side: {"plain": ..., "reranked": ...}
                out.write_text(json.dumps({k: to_dict(r) for k, r in res.items()}, indent=2) + "\n")
            else:
                save_json(res["plain"], out)
            typer.echo(f"wrote {out}")
    except CmemdError as e:
        _fail(e)


@app.command("demo")
def demo_cmd(
    data_dir: Path = typer.Option(
        Path("data/demo_sysu"),
        help=(
            "Where the synthetic SYSU-layout set goes (reused when it matches, regenerated only in a folder cmemd "
            "made)."
        ),
    ),
    out_dir: Path = typer.Option(
        Path("runs/demo"),
        help=(
            "Run directory (replaced on each demo run; only a run folder cmemd made is, any other non-empty folder "
            "is refused)."
        ),
    ),
    config: Path = typer.Option(
        Path("synth_cmemd_global"),
        "--config",
        "-c",
        help="Training config (file or packaged name); synth_cmemd is the paper's full model.",
    ),
    ids: int = typer.Option(200, help="Identities in the synthetic set."),
    epochs: Optional[int] = typer.Option(None, help="Override optim.epochs of the config."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="key=value overrides of the config, e.g. data.steps_per_epoch=20"
    ),
) -> None:
    """Generate the synthetic benchmark (cached), train CM-EMD on CPU, evaluate SYSU all/indoor-search, print the table.

    The default config is the baseline + CM-EMD on the global feature's BN-neck output (synth_cmemd_global), the
    alignment the study measured to work on this benchmark; -c synth_cmemd trains the paper's full model.
    Data and runs go under the current folder (data/demo_sysu, runs/demo) unless --data-dir / --out-dir say otherwise.
    """
    from cmemd.app.demo import run_demo
    from cmemd.app.runtime import TrainingInterrupted

    try:
        _check_flags(ids=ids, epochs=epochs)
        run_demo(
            data_dir=data_dir,
            out_dir=out_dir,
            config=config,
            ids=ids,
            epochs=epochs,
            overrides=overrides or [],
            echo=typer.echo,
        )
    except CmemdError as e:
        _fail(e)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        # the demo trains from scratch each time (its run folder is replaced), so there is nothing to resume
        typer.secho(
            f"demo interrupted; its run folder {out_dir} is incomplete and the next `cmemd demo` (or "
            "`make demo`) replaces it",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=getattr(e, "exit_code", 130)) from None


# --------------------------------------------------------------------------- using a trained model


@app.command("index")
def index_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A last.pt written by `cmemd train`."),
    images: Path = typer.Option(..., "--images", help="Folder of gallery images (searched recursively)."),
    modality: str = typer.Option(
        ..., "--modality", help="visible or thermal: the modality of every image in the folder."
    ),
    out: Path = typer.Option(..., "--out", help="Gallery file to write (.npz, the eval-features format)."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Encode a folder of images once into a gallery file for `cmemd search`."""
    import time

    from cmemd.api import load
    from cmemd.retrieval import build_index

    try:
        _check_flags(batch_size=batch_size)
        if modality not in ("visible", "thermal"):
            raise ConfigError(f"--modality {modality!r} is unknown: use visible or thermal")
        model = load(checkpoint, device=device)
        t0 = time.perf_counter()
        fs = build_index(model, images, out, modality=modality, batch_size=batch_size)
        dt = time.perf_counter() - t0
    except CmemdError as e:
        _fail(e)
    typer.echo(f"wrote {fs.source}: {len(fs)} {modality} images x {fs.feats.shape[1]}-d features in {dt:.1f} s")


@app.command("search")
def search_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="The checkpoint the gallery was indexed with."),
    gallery: Path = typer.Option(..., "--gallery", help="Gallery file written by `cmemd index`."),
    query: list[Path] = typer.Option(..., "--query", help="Query image (repeat the option for several)."),
    query_modality: str = typer.Option(..., "--query-modality", help="visible or thermal."),
    top_k: int = typer.Option(10, "--top-k", help="Matches to show per query."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="PNG strip (query + top-k), NAME.png; with several queries NAME_1.png, NAME_2.png, ..."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Rank the gallery for each query image (cosine similarity); the gallery is not re-encoded.

    The gallery must have been indexed with this checkpoint (its file records the model's fingerprint).
    """
    from cmemd.api import load
    from cmemd.retrieval import check_gallery_model, draw_strip, load_gallery, search

    try:
        _check_flags(top_k=top_k)
        if query_modality not in ("visible", "thermal"):
            raise ConfigError(f"--query-modality {query_modality!r} is unknown: use visible or thermal")
        if out is not None:  # before any work
            out = out if out.suffix else out.with_suffix(".png")
            if out.suffix.lower() != ".png":
                raise ConfigError(f"--out {out}: the strip is a PNG image; name a .png file")
            if not out.parent.is_dir():
                raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it first")
        g, g_mod = load_gallery(gallery)
        model = load(checkpoint, device=device)
        if model.feature_dim != g.feats.shape[1]:
            raise ConfigError(
                f"{gallery}: features are {g.feats.shape[1]}-d but {checkpoint} gives "
                f"{model.feature_dim}-d features; re-index the gallery with this checkpoint (cmemd index)"
            )
        check_gallery_model(gallery, model)
        feats = model.encode(list(query), query_modality)
        ranked = search(g, feats, top_k=top_k)
        for i, (q, matches) in enumerate(zip(query, ranked)):
            typer.echo(f"query {q} ({query_modality}) -> {g_mod} gallery {gallery} ({len(g)} images)")
            for m in matches:
                typer.echo(f"  {m.rank:>3}  {m.score:+.4f}  {m.path}")
            if out is not None:
                path = out if len(query) == 1 else out.with_name(f"{out.stem}_{i + 1}{out.suffix}")
                h = max(128, model.height)
                draw_strip(
                    q,
                    matches,
                    path,
                    query_modality=query_modality,
                    gallery_modality=g_mod,
                    height=h,
                    width=round(h * model.width / model.height),
                )
                typer.echo(f"  strip: {path}")
    except CmemdError as e:
        _fail(e)


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A last.pt written by `cmemd train`."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    opset: int = typer.Option(17, help="ONNX opset version (10 up to the newest this torch's exporter writes)."),
    flip: Optional[bool] = typer.Option(
        None, "--flip/--no-flip", help="Include test-time flip in the graph (default: the model's eval.flip)."
    ),
) -> None:
    """Export the feature extractor to ONNX: inputs images (N x 3 x H x W) and modality (int64 N), dynamic batch."""
    import json

    from cmemd.export import export_checkpoint

    try:
        summary = export_checkpoint(checkpoint, out, opset=opset, flip=flip)
    except CmemdError as e:
        _fail(e)
    typer.echo(json.dumps(summary, indent=1))


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    # before anything imports torch: its OpenMP runtime reads the wait policy once, at start-up
    from cmemd.threads import set_wait_policy

    set_wait_policy()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="cmemd")
