"""Saved features: one ``.npz`` per image set with arrays ``feats``, ``pids``, ``cams``, ``paths``.

Any model can write them; ``cmemd eval-features`` evaluates them. Paths are stored as a numpy
unicode array so that files load without pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmemd.errors import EvaluationError

FEATURE_ARRAYS = ("feats", "pids", "cams", "paths")


@dataclass
class FeatureSet:
    """Features of an image set: (N, D) ``feats`` and per-row ``pids``, ``cams``, ``paths``."""

    feats: np.ndarray
    pids: np.ndarray
    cams: np.ndarray
    paths: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.feats.shape[0])


def _to_numpy(x, name: str, where: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def check_feature_arrays(feats: np.ndarray, pids: np.ndarray, cams: np.ndarray, paths: np.ndarray, where: str) -> None:
    """Raise :class:`EvaluationError` naming ``where`` unless ``feats`` is a numeric (N, D) matrix and the
    other arrays hold one entry per row."""
    if feats.ndim != 2 or feats.dtype.kind not in "fiu":
        raise EvaluationError(
            f"{where}: 'feats' must be a numeric (N, D) matrix, got shape {feats.shape} dtype {feats.dtype}"
        )
    n = feats.shape[0]
    for name, a in (("pids", pids), ("cams", cams), ("paths", paths)):
        if a.ndim != 1 or a.shape[0] != n:
            raise EvaluationError(
                f"{where}: '{name}' must be 1-D with one entry per feature row ({n}), got shape {a.shape}"
            )
    for name, a in (("pids", pids), ("cams", cams)):
        if a.dtype.kind not in "iu":
            raise EvaluationError(f"{where}: '{name}' must hold integers, got dtype {a.dtype}")
    if feats.dtype.kind == "f" and not np.isfinite(feats).all():
        bad = np.nonzero(~np.isfinite(feats).all(1))[0]
        raise EvaluationError(
            f"{where}: 'feats' has {len(bad)} row(s) with NaN/inf (first {bad[:10].tolist()}); re-extract them"
        )


def save_features(path: str | Path, feats, pids, cams, paths: Sequence[str]) -> Path:
    """Write a feature file (``np.savez``; the ``.npz`` suffix is added by numpy when missing)."""
    path = Path(path)
    where = str(path)
    f = _to_numpy(feats, "feats", where)
    p = _to_numpy(pids, "pids", where)
    c = _to_numpy(cams, "cams", where)
    s = np.asarray([str(x) for x in paths], dtype=str)
    if s.ndim != 1:
        s = s.reshape(-1)
    check_feature_arrays(f, p, c, s, where)
    if not path.parent.exists():
        raise EvaluationError(f"{where}: folder {path.parent} does not exist; create it first")
    np.savez(path, feats=f, pids=p.astype(np.int64), cams=c.astype(np.int64), paths=s)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_features(path: str | Path) -> FeatureSet:
    """Read and check a feature file written by :func:`save_features` (or any tool writing the
    same four arrays)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: feature file not found; write it with cmemd.evaluation.save_features")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in FEATURE_ARRAYS if k not in z.files]
            if missing:
                raise EvaluationError(
                    f"{path}: array(s) {missing} missing (found {sorted(z.files)}); a feature file needs "
                    f"{list(FEATURE_ARRAYS)} (np.savez(path, feats=..., pids=..., cams=..., paths=...))"
                )
            arrays = {k: z[k] for k in FEATURE_ARRAYS}
    except EvaluationError:
        raise
    except ValueError as e:
        raise EvaluationError(
            f"{path}: cannot read without pickle ({e}); store 'paths' as a string array (np.asarray(paths, dtype=str))"
        ) from None
    except Exception as e:
        raise EvaluationError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    check_feature_arrays(arrays["feats"], arrays["pids"], arrays["cams"], arrays["paths"], str(path))
    return FeatureSet(
        arrays["feats"],
        arrays["pids"].astype(np.int64),
        arrays["cams"].astype(np.int64),
        arrays["paths"].astype(str),
        str(path),
    )
