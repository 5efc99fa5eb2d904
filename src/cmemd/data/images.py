"""Decoding images with Pillow, whatever mode the file comes in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmemd.errors import DatasetError


def load_image(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB.

    Thermal images often come single-channel (``L``), 16-bit (``I;16`` / ``I``), with an
    alpha channel or with a palette; all are converted rather than rejected. 16-bit images
    are scaled by their own range so that a 12-bit sensor image does not come out black.
    A file that does not decode raises :class:`DatasetError` naming it.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found; check the dataset root and split files") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"{path}: image does not decode ({type(e).__name__}: {e}); the file is corrupt or truncated, "
            "replace it from the original dataset archive"
        ) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scaled = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Composite on black: a transparent pixel carries no evidence, black is the neutral value.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")
