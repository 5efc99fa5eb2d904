"""Decoded-image cache: every image decoded once, resized to (H, W), in one memory-mapped .npy.

Layout: ``<stem>.npy`` holds an ``N x H x W x 3`` uint8 array (row i = paths[i]) and
``<stem>.json`` its index: format version, (H, W), interpolation, and per image the path,
file size and mtime (ns). The cache is valid only while the path list and every file's
size and mtime match the index; otherwise it is rebuilt. Both files are written to a
temporary file, fsynced and moved into place with ``os.replace``; the index is removed
before and written after the array, so a crash never leaves an index that vouches for a
partial array.

Where: ``cache_dir`` if given, else ``<dataset root>/.cmemd_cache/``, and if that is not
writable (read-only dataset mounts) ``$XDG_CACHE_HOME/cmemd`` (default ``~/.cache/cmemd``),
with a warning saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmemd.data.fs import os_error_message
from cmemd.data.images import load_image
from cmemd.data.transforms import resize_pil
from cmemd.errors import DatasetError
from cmemd.progress import progress_bar

# 2: images are decoded upright (EXIF orientation applied); a version-1 cache may hold them sideways, so it is rebuilt.
FORMAT_VERSION = 2


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cmemd`` or ``~/.cache/cmemd``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cmemd"


def _writable_dir(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def resolve_cache_dir(cache_dir: str | Path | None, dataset_root: str | Path | None) -> Path:
    """The directory the cache lives in (created); see the module docstring for the order."""
    if cache_dir is not None:
        d = Path(cache_dir)
        if not _writable_dir(d):
            raise DatasetError(f"cache_dir {d}: cannot create or write to it; pass a writable directory")
        return d
    if dataset_root is not None:
        d = Path(dataset_root) / ".cmemd_cache"
        if _writable_dir(d):
            return d
        fallback = user_cache_dir()
        warnings.warn(
            f"image cache: dataset root {dataset_root} is not writable; caching in {fallback} instead "
            "(pass cache_dir to choose)",
            stacklevel=3,
        )
    else:
        fallback = user_cache_dir()
    if not _writable_dir(fallback):
        raise DatasetError(f"image cache: neither the dataset root nor {fallback} is writable; pass cache_dir")
    return fallback


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found; check the dataset root and split files") from None
    except OSError as e:  # a symlink loop, no permission
        raise DatasetError(os_error_message(path, e, "image")) from None
    return int(st.st_size), int(st.st_mtime_ns)


def _fsync_replace(tmp: str, final: Path) -> None:
    with open(tmp, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    try:  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class ImageCache:
    """Read side of a built cache: ``cache[i]`` is image i as a 3 x H x W uint8 tensor.

    The memory map is opened lazily in each process and is not pickled, so DataLoader
    workers (fork or spawn) share the page cache instead of copying the array.
    """

    def __init__(self, array_path: Path, index: dict[str, Any]) -> None:
        self.array_path = Path(array_path)
        self.index = index
        self.height, self.width = int(index["height"]), int(index["width"])
        self.paths: list[str] = [e["path"] for e in index["images"]]
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.paths)

    def numpy(self, i: int) -> np.ndarray:
        """Image i as an H x W x 3 uint8 array (a copy)."""
        return np.array(self.array[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.numpy(i)).permute(2, 0, 1).contiguous()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None
        return state


def cache_stem(paths: Sequence[str], height: int, width: int, interpolation: str, name: str | None = None) -> str:
    """File stem: ``<name>_<H>x<W>_<interp>``; the default name is a hash of the path list."""
    if name is None:
        digest = hashlib.sha1("\n".join(paths).encode("utf-8")).hexdigest()[:16]
        name = f"images-{digest}"
    return f"{name}_{height}x{width}_{interpolation}"


def _index_matches(index: dict[str, Any], paths: Sequence[str], height: int, width: int, interpolation: str) -> bool:
    if index.get("version") != FORMAT_VERSION or (index.get("height"), index.get("width")) != (height, width):
        return False
    if index.get("interpolation") != interpolation:
        return False
    images = index.get("images", [])
    if len(images) != len(paths):
        return False
    return all(e["path"] == p and (e["size"], e["mtime_ns"]) == _stat(p) for e, p in zip(images, paths))


def load_cache(
    paths: Sequence[str],
    height: int,
    width: int,
    *,
    cache_dir: Path,
    name: str | None = None,
    interpolation: str = "bilinear",
) -> ImageCache | None:
    """The cache for exactly these sources if one is present and valid, else ``None``."""
    paths = [str(p) for p in paths]
    stem = cache_stem(paths, height, width, interpolation, name)
    index_path, array_path = cache_dir / f"{stem}.json", cache_dir / f"{stem}.npy"
    if not index_path.is_file() or not array_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return None
    if not _index_matches(index, paths, height, width, interpolation):
        return None
    if array_path.stat().st_size != index.get("array_bytes"):
        return None
    return ImageCache(array_path, index)


def build_cache(
    paths: Sequence[str | Path],
    height: int,
    width: int,
    *,
    cache_dir: str | Path | None = None,
    dataset_root: str | Path | None = None,
    name: str | None = None,
    interpolation: str = "bilinear",
    progress: bool = True,
) -> ImageCache:
    """Open the cache of ``paths`` at (height, width), building (or rebuilding) it if needed.

    ``dataset_root`` chooses the default location (``<root>/.cmemd_cache``); without it the
    common parent directory of the paths is used. ``name`` names the files (default: a hash
    of the path list, so train and test sets of one dataset get separate caches).
    """
    str_paths = [str(p) for p in paths]
    if not str_paths:
        raise DatasetError("build_cache: the path list is empty; nothing to cache")
    if dataset_root is None and cache_dir is None:
        dataset_root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in str_paths])
    d = resolve_cache_dir(cache_dir, dataset_root)
    cached = load_cache(str_paths, height, width, cache_dir=d, name=name, interpolation=interpolation)
    if cached is not None:
        return cached

    stem = cache_stem(str_paths, height, width, interpolation, name)
    index_path, array_path = d / f"{stem}.json", d / f"{stem}.npy"
    index_path.unlink(missing_ok=True)  # from here on no index vouches for the array
    # Every image is tried and every failure collected, so that one run names all the files to fix;
    # a single failure still leaves no cache (the temp array is removed below).
    problems: dict[int, str] = {}  # path index -> problem, so they are listed in path order
    stats: list[tuple[int, int]] = []
    for i, p in enumerate(str_paths):
        try:
            stats.append(_stat(p))
        except DatasetError as e:
            problems[i] = str(e)
            stats.append((-1, -1))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{stem}.", suffix=".npy.tmp")
    os.close(fd)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(str_paths), height, width, 3))
        for i, p in enumerate(
            progress_bar(
                str_paths, desc=f"caching {len(str_paths)} images at {height}x{width}", disable=not progress, unit="img"
            )
        ):
            if i in problems:  # missing: already listed
                continue
            try:
                arr[i] = np.asarray(resize_pil(load_image(p), height, width, interpolation), dtype=np.uint8)
            except DatasetError as e:
                problems[i] = str(e)
        if problems:
            raise DatasetError(
                f"image cache: {len(problems)} of {len(str_paths)} images cannot be read, so nothing was "
                "cached; replace or remove them (`cmemd data check <root>` lists every dataset problem)",
                [problems[i] for i in sorted(problems)],
            )
        arr.flush()
        del arr
        _fsync_replace(tmp, array_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    index = {
        "version": FORMAT_VERSION,
        "height": height,
        "width": width,
        "interpolation": interpolation,
        "layout": "NHWC uint8",
        "array_bytes": array_path.stat().st_size,
        "images": [{"path": p, "size": s, "mtime_ns": m} for p, (s, m) in zip(str_paths, stats)],
    }
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{stem}.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(index, f)
        _fsync_replace(tmp, index_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ImageCache(array_path, index)
