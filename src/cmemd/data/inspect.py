"""`cmemd data stats` and `cmemd data check`: counts and validation for a dataset root."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cmemd.data.images import load_image
from cmemd.data.records import ImageRecord, count_by
from cmemd.errors import DatasetError

LAYOUTS = ("sysu", "regdb")


def detect_layout(root: str | Path) -> str:
    """``"sysu"`` or ``"regdb"`` from the folders under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    if (root / "Visible").is_dir() or (root / "Thermal").is_dir() or (root / "idx").is_dir():
        return "regdb"
    if any((root / f"cam{c}").is_dir() for c in range(1, 7)) or (root / "exp").is_dir():
        return "sysu"
    raise DatasetError(
        f"{root}: neither a SYSU-MM01 root (cam1..cam6/, exp/) nor a RegDB root (Visible/, Thermal/, idx/); "
        "pass the dataset's top folder or generate one with `cmemd data synth`"
    )


def _resolve_layout(root: str | Path, layout: str | None) -> str:
    if layout is None:
        return detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def _summary(records: list[ImageRecord]) -> dict[str, Any]:
    return {
        "images": len(records),
        "ids": len({r.pid for r in records}),
        "by_camera": count_by(records, "camid"),
        "by_modality": count_by(records, "modality"),
    }


def dataset_stats(root: str | Path, layout: str | None = None) -> dict[str, Any]:
    """Per-split, per-camera and per-modality counts, as plain data."""
    layout = _resolve_layout(root, layout)
    if layout == "sysu":
        from cmemd.data.sysu import SYSUMM01

        ds = SYSUMM01(root)
        splits = {
            "train (train+val)": ds.train(),
            "query (test, cam3+cam6)": ds.query(),
            "gallery pool all-search": ds.gallery_pool("all"),
            "gallery pool indoor-search": ds.gallery_pool("indoor"),
        }
        extra = {f"{k}_ids": len(v) for k, v in ds.split_ids.items()}
    else:
        from cmemd.data.regdb import RegDB

        ds = RegDB(root)
        vis, th = ds.test(1)
        splits = {"train (trial 1)": ds.train(1), "test visible (trial 1)": vis, "test thermal (trial 1)": th}
        extra = {}
    return {"root": str(root), "layout": layout, **extra, "splits": {k: _summary(v) for k, v in splits.items()}}


def format_stats(stats: dict[str, Any]) -> str:
    """A small aligned table of :func:`dataset_stats`."""
    lines = [f"{stats['root']} ({stats['layout']} layout)"]
    for k in ("train_ids", "val_ids", "test_ids"):
        if k in stats:
            lines.append(f"  {k.replace('_', ' ')}: {stats[k]}")
    width = max(len(k) for k in stats["splits"])
    for name, s in stats["splits"].items():
        cams = " ".join(f"cam{c}={n}" for c, n in s["by_camera"].items())
        mods = " ".join(f"{m}={n}" for m, n in s["by_modality"].items())
        lines.append(f"  {name:<{width}}  {s['images']:>6} images  {s['ids']:>4} ids  | {mods} | {cams}")
    return "\n".join(lines)


def check_dataset(root: str | Path, layout: str | None = None, *, decode: bool = True) -> list[str]:
    """Every problem found in a dataset root (empty list when it is valid).

    Structural problems of all splits and trials are collected first; then, with ``decode``,
    every referenced image is decoded once.
    """
    problems: list[str] = []
    try:
        layout = _resolve_layout(root, layout)
    except DatasetError as e:
        return e.problems
    records: list[ImageRecord] = []
    if layout == "sysu":
        from cmemd.data.sysu import SYSUMM01

        try:
            ds = SYSUMM01(root)
            records = ds.train() + ds.query() + ds.gallery_pool("all")
        except DatasetError as e:
            problems += e.problems
    else:
        from cmemd.data.regdb import TRIALS, RegDB

        try:
            ds = RegDB(root)
        except DatasetError as e:
            return e.problems
        seen: dict[str, ImageRecord] = {}
        for t in TRIALS:
            for split in ("train", "test"):
                try:
                    recs = ds.train(t) if split == "train" else [r for part in ds.test(t) for r in part]
                except DatasetError as e:
                    problems += e.problems
                    continue
                for r in recs:
                    seen.setdefault(r.path, r)
        records = list(seen.values())
    if decode:
        for r in records:
            try:
                load_image(r.path)
            except DatasetError as e:
                problems.append(str(e))
    return problems
