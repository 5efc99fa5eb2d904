"""Benchmarks: one module per benchmark (its constants, draws, protocol, options and registry entry), built on
the readers of :mod:`cmemd.data` and the metric core of :mod:`cmemd.evaluation`, neither of which imports it."""

from cmemd.benchmarks.base import Benchmark, EvalOutput, Featurize, NoOptions, feature_set
from cmemd.benchmarks.registry import BENCHMARKS, detect_layout, get_benchmark, known, register, resolve

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EvalOutput",
    "Featurize",
    "NoOptions",
    "detect_layout",
    "feature_set",
    "get_benchmark",
    "known",
    "register",
    "resolve",
]
