"""Decoding images with Pillow, whatever mode the file comes in, upright as the camera meant."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cmemd.data.fs import os_error_message
from cmemd.errors import DatasetError


def load_image(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB, upright.

    Every image cmemd reads goes through here (training and test loaders, the decoded-image
    cache, ``data check``, ``data preview``, ``cmemd index`` / ``search`` and the Python API).

    - EXIF orientation is applied (phone cameras store pixels sideways and a tag saying how to
      turn them), so the pixels are those a photo viewer shows.
    - Thermal images often come single-channel (``L``), 16-bit (``I;16`` / ``I``), with an
      alpha channel or with a palette; all are converted rather than rejected. 16-bit images
      are scaled by their own range so that a 12-bit sensor image does not come out black.
    - Images larger than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, by
      default 89,478,485 pixels, about 9459 x 9459) are refused: PIL would decode one between
      that limit and twice it with only a warning, at hundreds of MB per image.

    A file that is missing, a symlink loop, too large or does not decode raises
    :class:`DatasetError` naming it and the fix.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            # Between PIL's limit and twice it PIL only warns (in Image.open, where its warning is shown
            # under the process's own filters): refuse before decoding. No warnings.catch_warnings here:
            # changing the filters on every image would make every "once" warning of the process repeat.
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and im.width * im.height > limit:
                raise DatasetError(_too_large(path, im.width * im.height, limit))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return _to_rgb(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found; check the dataset root and split files") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning: under -W error
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise DatasetError(_too_large(path, int(m.group(1)) if m else None, Image.MAX_IMAGE_PIXELS)) from None
    except OSError as e:
        if e.errno is not None:  # the file could not be opened (a loop, no permission), not a decoding failure
            raise DatasetError(os_error_message(path, e, "image")) from None
        raise DatasetError(_undecodable(path, e)) from None
    except (UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(_undecodable(path, e)) from None


def _undecodable(path: Path, e: Exception) -> str:
    return (
        f"{path}: image does not decode ({type(e).__name__}: {e}); the file is corrupt or truncated, "
        "replace it from the original dataset archive"
    )


def _too_large(path: Path, pixels: int | None, limit: int | None) -> str:
    size = f"{pixels:,} pixels; " if pixels is not None else ""
    return (
        f"{path}: image too large to decode safely ({size}the limit is PIL's decompression-bomb guard, "
        f"PIL.Image.MAX_IMAGE_PIXELS = {limit:,} pixels); resize the image (a person crop needs a few "
        "hundred pixels a side) or remove it from the dataset"
    )


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
