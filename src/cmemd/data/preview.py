"""A contact sheet of a dataset on disk: rows are identities, columns are cameras / modalities.

Reads only the folder layout and the image files (via :func:`cmemd.data.images.load_image`), so it
works on the real SYSU-MM01 and RegDB as well as on the synthetic sets.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from PIL import Image, ImageDraw

from cmemd.data.images import load_image
from cmemd.errors import DatasetError

_SYSU_MOD = {1: "RGB", 2: "RGB", 3: "IR", 4: "RGB", 5: "RGB", 6: "IR"}


def detect_layout(root: Path) -> str:
    """``"sysu"`` when ``cam1..cam6`` exist, ``"regdb"`` when ``Visible``/``Thermal`` exist."""
    root = Path(root)
    if any((root / f"cam{c}").is_dir() for c in range(1, 7)):
        return "sysu"
    if (root / "Visible").is_dir() and (root / "Thermal").is_dir():
        return "regdb"
    raise DatasetError(
        f"{root}: neither a SYSU-MM01 root (cam1..cam6 folders) nor a RegDB root (Visible/ and Thermal/); "
        "point the command at the dataset's top folder"
    )


def _images(d: Path) -> List[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")) if d.is_dir() else []


def _pick_ids(candidates: List[str], n: int) -> List[str]:
    if not candidates:
        raise DatasetError("no identity folders found; check the dataset root")
    if len(candidates) <= n:
        return candidates
    step = len(candidates) / n
    return [candidates[int(i * step)] for i in range(n)]


def preview_grid(
    root: str | Path,
    out: str | Path,
    ids: int = 6,
    per_camera: int = 2,
    tile: Tuple[int, int] = (128, 64),
    layout: Optional[str] = None,
) -> Path:
    """Write a PNG grid of ``ids`` identities; returns the output path.

    SYSU layout: ``per_camera`` images from each of cam1..cam6 (blank where the id is absent).
    RegDB layout: the first ``2 * per_camera`` visible/thermal pairs. Column headers name the
    camera and modality (PIL's default font).
    """
    root = Path(root)
    layout = layout or detect_layout(root)
    th, tw = tile
    rows: List[Tuple[str, List[Optional[Path]]]] = []
    if layout == "sysu":
        headers = [f"c{c} {_SYSU_MOD[c]}" for c in range(1, 7) for _ in range(per_camera)]
        all_ids = sorted({p.name for c in range(1, 7) if (root / f"cam{c}").is_dir()
                          for p in (root / f"cam{c}").iterdir() if p.is_dir()})
        # prefer ids seen by most cameras so that rows are informative
        full = [i for i in all_ids if sum((root / f"cam{c}" / i).is_dir() for c in range(1, 7)) >= 4]
        for pid in _pick_ids(full or all_ids, ids):
            cells: List[Optional[Path]] = []
            for c in range(1, 7):
                files = _images(root / f"cam{c}" / pid)
                chosen = [files[int(j * len(files) / per_camera)] for j in range(per_camera)] if files else []
                cells += chosen + [None] * (per_camera - len(chosen))
            rows.append((pid, cells))
    elif layout == "regdb":
        k = 2 * per_camera
        headers = [h for j in range(k) for h in (f"V{j + 1}", f"T{j + 1}")]
        pids = sorted((p.name for p in (root / "Visible").iterdir() if p.is_dir()), key=lambda s: (len(s), s))
        for pid in _pick_ids(pids, ids):
            vis, thr = _images(root / "Visible" / pid), _images(root / "Thermal" / pid)
            cells = []
            for j in range(k):
                cells += [vis[j] if j < len(vis) else None, thr[j] if j < len(thr) else None]
            rows.append((pid, cells))
    else:
        raise DatasetError(f"layout {layout!r} is unknown: use 'sysu' or 'regdb'")
    label_w, head_h, gap = 34, 14, 2
    W = label_w + len(headers) * (tw + gap)
    H = head_h + len(rows) * (th + gap)
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, h in enumerate(headers):
        draw.text((label_w + j * (tw + gap) + 2, 1), h, fill=(0, 0, 0))
    for i, (pid, cells) in enumerate(rows):
        y = head_h + i * (th + gap)
        draw.text((2, y + th // 2 - 5), pid, fill=(0, 0, 0))
        for j, p in enumerate(cells):
            x = label_w + j * (tw + gap)
            if p is None:
                draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=(220, 220, 220))
                continue
            sheet.paste(load_image(p).resize((tw, th), Image.Resampling.BILINEAR), (x, y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
