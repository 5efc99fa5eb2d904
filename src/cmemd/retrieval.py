"""Cross-modal search with a trained model: encode a folder once (``cmemd index``), then rank it
for any query image (``cmemd search``) without re-encoding the gallery.

The gallery file is the eval-features ``.npz`` (``feats``, ``pids``, ``cams``, ``paths``; pids -1 and
cams 0 when unknown) plus a ``modality`` array naming the gallery's modality and a ``model_fingerprint``
(:func:`model_fingerprint` of the model that indexed it); features are L2-normalised, so scores are
cosine similarities. Scores are only meaningful against queries encoded by the same model, so
``cmemd search`` refuses a gallery whose fingerprint is not its model's, or that has none (a gallery
indexed before fingerprints were recorded: re-index it). Every array is read without pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmemd.data.fs import is_symlink_loop, loop_message
from cmemd.errors import ConfigError, DatasetError, EvaluationError
from cmemd.evaluation.features import FeatureSet, check_feature_arrays, load_features
from cmemd.evaluation.metrics import top_k as ranked_top_k

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FINGERPRINT = "model_fingerprint"


def model_fingerprint(model: Any) -> str:
    """SHA-256 (hex) of what a :class:`cmemd.api.ReIDModel`'s features depend on: every weight and buffer of
    its network (name, dtype, shape and bytes, in state-dict order), its architecture (the config's
    ``model`` section, without the ImageNet-weights setting the checkpoint overrides) and its input size."""
    import torch

    settings = model.config.model
    arch = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) and not isinstance(settings, type) else {}
    arch.pop("pretrained", None)
    h = hashlib.sha256(
        json.dumps({"model": arch, "input": [model.height, model.width]}, sort_keys=True, default=str).encode()
    )
    for name, t in model.network.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted by path).

    Symlinked subfolders are followed (galleries are often linked in from other disks), each real folder
    once, so a link back to an enclosing folder cannot make the walk endless; a link that never resolves
    (a loop) is an error naming it rather than an image silently left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; pass --images DIR holding the gallery images")
    files: list[Path] = []
    loops: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        for name in filenames:  # a looping link is listed here too (os.walk cannot tell it is a folder)
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                files.append(p)
            elif is_symlink_loop(p):
                loops.append(loop_message(p, "image or folder"))
    if loops:
        raise DatasetError("\n".join(loops))
    if not files:
        raise DatasetError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found in it or below it")
    return sorted(files)


def build_index(
    model: Any, folder: str | Path, out: str | Path, *, modality: str, batch_size: int = 64, progress: bool = True
) -> FeatureSet:
    """Encode every image under ``folder`` with ``model`` (a :class:`cmemd.api.ReIDModel`) and write
    the gallery file ``out``; returns it as a :class:`FeatureSet`."""
    from cmemd.progress import progress_bar

    files = list_images(folder)
    out = Path(out)
    if not out.parent.exists():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it first")
    chunks = []
    with progress_bar(total=len(files), desc=f"encoding {modality}", unit="img", disable=not progress) as bar:
        for s in range(0, len(files), batch_size):
            part = files[s : s + batch_size]
            chunks.append(model.encode(part, modality, batch_size=batch_size))
            bar.update(len(part))
    feats = np.concatenate(chunks).astype(np.float32)
    pids = np.full(len(files), -1, np.int64)
    cams = np.zeros(len(files), np.int64)
    paths = np.asarray([str(p) for p in files], dtype=str)
    check_feature_arrays(feats, pids, cams, paths, str(out))
    arrays: dict[str, Any] = {
        "feats": feats,
        "pids": pids,
        "cams": cams,
        "paths": paths,
        "modality": np.asarray(modality),
        "feature_dim": np.asarray(feats.shape[1]),
        FINGERPRINT: np.asarray(model_fingerprint(model)),
    }
    np.savez(out, **arrays)
    return FeatureSet(feats, pids, cams, paths, str(out))


def load_gallery(path: str | Path) -> tuple[FeatureSet, str]:
    """A gallery file and its modality ("unknown" for a plain eval-features file)."""
    fs = load_features(path)
    modality = _gallery_string(path, "modality")
    return fs, "unknown" if modality is None else modality


def check_gallery_model(path: str | Path, model: Any) -> None:
    """:class:`EvaluationError` unless the gallery ``path`` was indexed by ``model`` (same fingerprint).

    A gallery without a fingerprint (indexed before they were recorded, or written by another tool) is
    refused too: nothing says its features came from this model, and scores against another model's
    features look like any others."""
    stored = _gallery_string(path, FINGERPRINT)
    source = getattr(model, "source", "") or "this checkpoint"
    again = f"re-index it with this checkpoint (cmemd index --checkpoint {source} --images ... --out {path})"
    if stored is None:
        raise EvaluationError(
            f"{path}: the gallery does not record which model indexed it (no '{FINGERPRINT}'; "
            f"written before cmemd recorded it, or by another tool), so its scores against "
            f"{source} cannot be trusted; {again}"
        )
    mine = model_fingerprint(model)
    if stored != mine:
        raise EvaluationError(
            f"{path}: the gallery was indexed by another model (fingerprint {stored[:12]}) than "
            f"{source} ({mine[:12]}); its scores would be meaningless. Search "
            f"with the checkpoint it was indexed with, or {again}"
        )


def _gallery_string(path: str | Path, key: str) -> str | None:
    """The string array ``key`` of a gallery file (None when absent), read without pickle."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                return None
            value = z[key]
    except ValueError as e:  # an object array: reading it would unpickle, which can run code
        raise EvaluationError(
            f"{path}: '{key}' is stored as a pickled object array ({e}); it was not read "
            "(unpickling can run code). A gallery holds it as a string array: re-index the "
            "gallery with cmemd index"
        ) from None
    except OSError as e:
        raise EvaluationError(f"{path}: not a readable .npz file ({e})") from None
    if value.ndim != 0 or value.dtype.kind != "U":
        raise EvaluationError(
            f"{path}: '{key}' must be a single string, got dtype {value.dtype} shape "
            f"{value.shape}; re-index the gallery with cmemd index"
        )
    return str(value)


@dataclass
class Match:
    rank: int
    index: int
    path: str
    score: float
    pid: int


def search(gallery: FeatureSet, query_feats: np.ndarray, *, top_k: int = 10) -> list[list[Match]]:
    """Top-``top_k`` gallery matches (cosine similarity, ties by gallery order) of each query row."""
    q = np.asarray(query_feats, dtype=np.float32)
    if q.ndim != 2:
        raise EvaluationError(f"search: query features must be (N, D), got shape {q.shape}")
    if q.shape[1] != gallery.feats.shape[1]:
        raise EvaluationError(
            f"{gallery.source or 'gallery'}: features are {gallery.feats.shape[1]}-d but the model gives "
            f"{q.shape[1]}-d features; re-index the gallery with this checkpoint (cmemd index)"
        )
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    order, scores = ranked_top_k(q, gallery.feats, top_k)  # the evaluation's ranking: ties by gallery index
    return [
        [
            Match(r + 1, int(i), str(gallery.paths[i]), float(scores[n, r]), int(gallery.pids[i]))
            for r, i in enumerate(row)
        ]
        for n, row in enumerate(order)
    ]


def draw_strip(
    query_image: str | Path,
    matches: Sequence[Match],
    out: str | Path,
    *,
    query_modality: str,
    gallery_modality: str,
    height: int = 160,
    width: int | None = None,
) -> Path:
    """A PNG strip: the query, then each match with its rank and score, modalities labelled."""
    from PIL import Image, ImageDraw

    from cmemd.data.images import load_image

    width = width or height // 2
    label_h, pad = 30, 6
    n = len(matches) + 1
    canvas = Image.new("RGB", (pad + n * (width + pad) + pad, label_h + height + pad), "white")
    draw = ImageDraw.Draw(canvas)

    def tile(path: str | Path, x: int) -> None:
        try:
            im = load_image(path).resize((width, height), Image.Resampling.BILINEAR)
        except DatasetError:
            im = Image.new("RGB", (width, height), (128, 128, 128))
        canvas.paste(im, (x, label_h))

    x = pad
    tile(query_image, x)
    draw.rectangle([x - 3, label_h - 3, x + width + 2, label_h + height + 2], outline=(40, 90, 200), width=3)
    draw.text((x, 2), f"query\n{query_modality}", fill="black")
    x += width + 2 * pad  # a gap after the query
    for m in matches:
        tile(m.path, x)
        draw.text((x, 2), f"#{m.rank} {m.score:.3f}\n{gallery_modality}", fill="black")
        x += width + pad
    out = Path(out)
    canvas.save(out)
    return out
