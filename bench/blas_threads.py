"""Give numpy's BLAS the benchmark's --threads before numpy loads (imported first by the speed benchmarks).

The reference implementations' matrix products run in numpy's BLAS, which takes its thread count from the
environment when it is imported; torch's side is set with torch.set_num_threads. Both sides then use the same
number of threads.
"""
from __future__ import annotations

import os
import sys


def early_threads(argv: list[str] | None = None) -> str | None:
    """The value of ``--threads N`` / ``--threads=N`` in ``argv`` (default ``sys.argv``), read before argparse runs."""
    argv = sys.argv if argv is None else argv
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


def apply() -> None:
    threads = early_threads()
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = threads
