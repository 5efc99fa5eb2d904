"""A contact sheet of a dataset on disk: rows are identities, columns are cameras / modalities.

Reads only the folder layout and the image files (via :func:`cmemd.data.images.load_image`), so it
works on the real datasets as well as on the synthetic sets; each benchmark says which folders make the
rows and columns (``Benchmark.preview``) and :func:`cmemd.benchmarks.stats.preview_grid` draws them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from cmemd.data.images import load_image
from cmemd.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: The files :func:`draw_sheet` writes, by suffix (PIL picks the format from it).
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []


def images_in(folder: Path, n: int, first: bool = False) -> list[Path | None]:
    """``n`` cells from a folder's sorted images: evenly spaced (or the first ``n``), None-padded."""
    files = _images(Path(folder))
    if first:
        chosen = files[:n]
    else:
        chosen = [files[int(j * len(files) / n)] for j in range(n)] if files else []
    return chosen + [None] * (n - len(chosen))


def pick_evenly(candidates: list[str], n: int) -> list[str]:
    """``n`` evenly spaced entries of ``candidates`` (all of them when there are fewer)."""
    if not candidates:
        raise DatasetError("no identity folders found; check the dataset root")
    if len(candidates) <= n:
        return candidates
    step = len(candidates) / n
    return [candidates[int(i * step)] for i in range(n)]


def check_preview_args(out: str | Path, ids: int, per_camera: int) -> None:
    """Refuse an output file or counts the preview cannot use, before any image is read."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(
            f"preview output {out}: is a folder; name the image file to write, e.g. {out / 'preview.png'}"
        )
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(
            f"preview output {out}: unsupported file type {out.suffix or '(no suffix)'!r}; name a "
            f"{', '.join(OUTPUT_SUFFIXES)} file (PNG keeps the tiles exact)"
        )
    if ids < 1:
        raise ConfigError(f"preview: ids (--ids) must be >= 1, one identity per row; got {ids}")
    if per_camera < 1:
        raise ConfigError(f"preview: per_camera (--per-camera) must be >= 1 image per column group; got {per_camera}")


def draw_sheet(
    headers: Sequence[str],
    rows: Sequence[tuple[str, Sequence[str | Path | None]]],
    out: str | Path,
    tile: tuple[int, int] = (128, 64),
) -> Path:
    """Write a grid (PNG, or JPEG/BMP by ``out``'s suffix): one row per ``(label, cells)``, one column per header;
    a cell is an image path or None (a blank tile). A missing output folder is created; returns the output path."""
    th, tw = tile
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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
    except OSError as e:
        raise ConfigError(
            f"preview output {out}: cannot write it ({e.strerror or e}); choose a writable path"
        ) from None
    return out
