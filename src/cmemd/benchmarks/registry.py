"""The benchmarks cmemd knows: one plain dict, name -> :class:`~cmemd.benchmarks.base.Benchmark`.

Adding a benchmark = a module that defines its ``BENCHMARK`` + one line here + its tests
(docs/developing.md). Nothing outside the benchmark modules compares a benchmark's name.
"""

from __future__ import annotations

from pathlib import Path

from cmemd.benchmarks import llcm, regdb, sysu
from cmemd.benchmarks.base import Benchmark
from cmemd.data.fs import missing_or_loop
from cmemd.errors import DatasetError

BENCHMARKS: dict[str, Benchmark] = {
    "sysu": sysu.BENCHMARK,
    "regdb": regdb.BENCHMARK,
    "llcm": llcm.BENCHMARK,
}
Benchmark.catalogue = BENCHMARKS  # the wrong-layout guard compares a root with every registered layout


def register(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` under its name (a benchmark defined outside cmemd, or in a test); returns it."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register() takes a Benchmark instance, got {type(benchmark).__name__}")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def known() -> str:
    """One line per benchmark: its name, title and what it expects on disk."""
    return "; ".join(f"{b.name} ({b.title}: {b.on_disk})" for b in BENCHMARKS.values())


def get_benchmark(name: str) -> Benchmark:
    """The benchmark ``name``; an unknown name raises :class:`DatasetError` listing the known ones."""
    try:
        return BENCHMARKS[name]
    except (KeyError, TypeError):
        raise DatasetError(f"dataset {name!r} is unknown; known datasets: {known()}") from None


def detect_layout(root: str | Path) -> str:
    """The name of the one benchmark whose layout ``root`` has.

    A missing root, a root no benchmark recognises, or one that several recognise raises
    :class:`DatasetError` listing the known benchmarks and what each expects on disk.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            missing_or_loop(
                root, f"{root}: dataset root not found; pass the dataset's top folder ({known()})", "folder"
            )
        )
    hits = [name for name, b in BENCHMARKS.items() if b.detect(root)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DatasetError(
            f"{root}: not the root of a known dataset; expected one of: {known()}. Pass the dataset's "
            "top folder, name the dataset (--layout / data.dataset), or generate one with `cmemd data synth`"
        )
    raise DatasetError(
        f"{root}: looks like several datasets at once ({', '.join(hits)}); name the one you mean "
        "with --layout / data.dataset"
    )


def resolve(root: str | Path, name: str | None = None) -> Benchmark:
    """The benchmark named ``name``, or the one detected from ``root`` when ``name`` is None."""
    return get_benchmark(name) if name is not None else BENCHMARKS[detect_layout(root)]


__all__ = ["BENCHMARKS", "Benchmark", "detect_layout", "get_benchmark", "known", "register", "resolve"]
