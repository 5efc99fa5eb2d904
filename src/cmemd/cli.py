"""The command line: each command is a thin composition of library calls.

Heavy imports (torch, the generator) happen inside the commands so that ``cmemd --help``
stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from cmemd.errors import CmemdError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="cmemd: visible-thermal person re-identification with CM-EMD.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: inspect, validate, generate, preview.")
app.add_typer(data_app, name="data")


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# --------------------------------------------------------------------------- data


@data_app.command("stats")
def data_stats(
    root: Path = typer.Argument(..., help="Dataset root (SYSU-MM01 or RegDB layout)."),
    layout: Optional[str] = typer.Option(None, help="sysu or regdb; detected from the folder when omitted."),
) -> None:
    """Print per-split, per-camera and per-modality image counts."""
    from cmemd.data.inspect import dataset_stats, format_stats

    try:
        typer.echo(format_stats(dataset_stats(root, layout=layout)))
    except CmemdError as e:
        _fail(e)


@data_app.command("check")
def data_check(
    root: Path = typer.Argument(..., help="Dataset root (SYSU-MM01 or RegDB layout)."),
    layout: Optional[str] = typer.Option(None, help="sysu or regdb; detected from the folder when omitted."),
    decode: bool = typer.Option(True, help="Decode every image (slow on the full datasets)."),
) -> None:
    """Validate a dataset root and report every problem at once."""
    from cmemd.data.inspect import check_dataset

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


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="cmemd")
