"""The report of bench/alignment_study.py (kept apart so the study script stays about running)."""
from __future__ import annotations


def write(groups, load_runs, report, out_dir, command, wall) -> None:
    print("report: not written yet")
