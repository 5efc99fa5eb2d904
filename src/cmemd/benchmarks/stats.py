"""`cmemd data stats`, `cmemd data check` and `cmemd data preview`: counts, validation and a contact sheet of a
dataset root.

Which benchmark a root holds, which splits it has and what is wrong with it are questions for the
benchmark (:mod:`cmemd.benchmarks.registry`); this module only counts, formats and draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmemd.benchmarks.registry import BENCHMARKS, detect_layout, resolve
from cmemd.data.images import load_image
from cmemd.data.preview import check_preview_args, draw_sheet
from cmemd.data.records import MODALITIES, ImageRecord, count_by
from cmemd.errors import DatasetError

LAYOUTS = tuple(BENCHMARKS)

__all__ = ["LAYOUTS", "detect_layout", "dataset_stats", "format_stats", "check_dataset", "preview_grid"]


def _summary(records: list[ImageRecord]) -> dict[str, Any]:
    return {
        "images": len(records),
        "ids": len({r.pid for r in records}),
        "by_camera": count_by(records, "camid"),
        "by_modality": count_by(records, "modality"),
    }


def dataset_stats(root: str | Path, layout: str | None = None) -> dict[str, Any]:
    """Per-split, per-camera and per-modality counts, and totals per modality (each image counted once)."""
    spec = resolve(root, layout)
    ids, splits = spec.stats(root)
    union = {r.path: r for recs in splits.values() for r in recs}
    totals = dict.fromkeys(MODALITIES, 0)
    totals.update(count_by(union.values(), "modality"))
    return {
        "root": str(root),
        "layout": spec.name,
        "title": spec.title,
        **ids,
        "splits": {k: _summary(v) for k, v in splits.items()},
        "totals": totals,
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A small aligned table of :func:`dataset_stats`."""
    lines = [f"{stats['root']} ({stats.get('title', stats['layout'])} layout)"]
    for k, v in stats.items():
        if k.endswith("_ids"):
            lines.append(f"  {k.replace('_', ' ')}: {v}")
    width = max(len(k) for k in stats["splits"])
    for name, s in stats["splits"].items():
        cams = " ".join(f"cam{c}={n}" for c, n in s["by_camera"].items())
        mods = " ".join(f"{m}={n}" for m, n in s["by_modality"].items())
        lines.append(f"  {name:<{width}}  {s['images']:>6} images  {s['ids']:>4} ids  | {mods} | {cams}")
    if "totals" in stats:
        t = stats["totals"]
        lines.append(
            f"  total (each image once): {sum(t.values())} images | " + " ".join(f"{m}={n}" for m, n in t.items())
        )
    return "\n".join(lines)


def check_dataset(root: str | Path, layout: str | None = None, *, decode: bool = True) -> list[str]:
    """Every problem found in a dataset root (empty list when it is valid).

    Structural problems of all splits (and trials) are collected first; then, with ``decode``,
    every referenced image is decoded once.
    """
    try:
        spec = resolve(root, layout)
    except DatasetError as e:
        return e.problems
    problems, records = spec.check(root)
    problems = list(problems)
    if decode:
        for r in records:
            try:
                load_image(r.path)
            except DatasetError as e:
                problems.append(str(e))
    return problems


def preview_grid(
    root: str | Path,
    out: str | Path,
    ids: int = 6,
    per_camera: int = 2,
    tile: tuple[int, int] = (128, 64),
    layout: str | None = None,
) -> Path:
    """Write a grid of ``ids`` identities (PNG, or JPEG/BMP by ``out``'s suffix); returns the output path.

    The benchmark (``layout``, detected from ``root`` when None) chooses rows and columns
    (:meth:`~cmemd.benchmarks.base.Benchmark.preview`), e.g. SYSU-MM01 ``per_camera`` images from
    each of cam1..cam6. Blank tiles where an id has no image; column
    headers name the camera and modality (PIL's default font). A missing output folder is created;
    an unsupported suffix or a count below 1 raises :class:`ConfigError` before any image is read.
    """
    check_preview_args(out, ids, per_camera)
    root = Path(root)
    headers, rows = resolve(root, layout).preview(root, ids, per_camera)
    return draw_sheet(headers, rows, out, tile)
