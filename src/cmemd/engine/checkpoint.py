"""Checkpoints that are never half-written and that prove their own integrity.

File format: a one-line header ``CMEMD-CKPT 1 <sha256 of payload> <payload bytes>\\n`` followed by
the ``torch.save`` payload. Writing goes to a temporary file in the same folder, is flushed and
fsynced, and only then renamed over the target (rename is atomic on POSIX), so a crash or a full
disk leaves the previous checkpoint intact. Before a new ``last.pt`` replaces the old one, the
old one is kept as ``last.prev.pt``: if the newest file is ever found corrupt (a disk fault, a
copy cut short), ``--resume`` falls back to the previous one and says so; a file named by the user
(``cmemd eval --checkpoint``, ``cmemd.load``) is read as named, with no fallback.

Loading never runs code from the file: the payload is read with ``torch.load(weights_only=True)``, which
rebuilds tensors, numbers, strings and containers only. The header's SHA-256 is unkeyed (anyone can
recompute it): it detects damage, not tampering. Checkpoints written before the numpy RNG state was
stored as a tensor hold it as a numpy array; exactly the numpy globals that rebuild such an array are
allowed besides torch's own list, so those files keep loading. Anything else a payload asks for (a
class, a function such as ``os.system``) is refused with a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmemd.errors import CheckpointError

MAGIC = b"CMEMD-CKPT"
VERSION = 1


class RefusedCheckpointError(CheckpointError):
    """A checkpoint whose payload needs more than tensors and plain data to load; it was not loaded."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path, *, keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename).

    With ``keep_previous`` the file being replaced is first hard-linked as ``<stem>.prev<suffix>``
    so one verified older checkpoint always survives. A failure (e.g. a full disk) removes the
    temporary file and re-raises as :class:`CheckpointError`; the old checkpoint is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = b"%s %d %s %d\n" % (MAGIC, VERSION, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        slow = os.environ.get("CMEMD_TEST_SLOW_CHECKPOINT_WRITE")
        if slow:  # test hook (see the module docstring)
            time.sleep(float(slow))
        if keep_previous and path.exists():
            prev = previous_path(path)
            prev_tmp = prev.with_name(f".{prev.name}.tmp-{os.getpid()}")
            if prev_tmp.exists():
                prev_tmp.unlink()
            os.link(path, prev_tmp)  # a second name for the old file, then an atomic rename
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CheckpointError(
            f"{path}: writing the checkpoint failed ({e.strerror or e}); the previous checkpoint is intact. "
            "Free disk space or choose another run.out_dir, then resume."
        ) from e
    _remove_stale_temps(path)
    return path


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of earlier writers of ``path`` that were killed mid-write (one writer per path)."""
    for name in (path.name, previous_path(path).name):
        for stale in path.parent.glob(f".{name}.tmp-*"):
            try:
                stale.unlink()
            except OSError:
                pass


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and verify one checkpoint file; :class:`CheckpointError` names the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path (runs write <out_dir>/last.pt)")
    data = path.read_bytes()
    nl = data.find(b"\n", 0, 256)
    if not data.startswith(MAGIC) or nl < 0:
        raise CheckpointError(
            f"{path}: not a cmemd checkpoint (no '{MAGIC.decode()}' header); pass a file written by `cmemd train`"
        )
    try:
        _, version_field, digest, size_field = data[:nl].split(b" ")
        version, size = int(version_field), int(size_field)
    except ValueError:
        raise CheckpointError(f"{path}: damaged checkpoint header") from None
    if version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this cmemd ({VERSION}); upgrade cmemd"
        )
    payload = data[nl + 1 :]
    if len(payload) != size:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(payload)} of {size} payload bytes)")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: corrupted checkpoint (checksum mismatch)")
    try:
        with _numpy_array_globals():
            state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise RefusedCheckpointError(
            f"{path}: refused: the checkpoint needs {_what_was_refused(e)}, which a weights-only load does not "
            "allow (loading it could run code). cmemd checkpoints hold only tensors, numbers, strings and "
            "containers, so this file was altered or written by another program; it was not loaded. "
            "Use a checkpoint written by `cmemd train` that comes from a source you trust"
        ) from None
    except Exception as e:  # a verified payload that still fails is a version problem
        raise CheckpointError(f"{path}: checkpoint payload does not load ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: the checkpoint holds a {type(state).__name__}, not a training state "
            "(a dict); pass a file written by `cmemd train`"
        )
    return state


def _numpy_array_globals():
    """A context that allows the numpy globals which rebuild an unsigned 32-bit array (the numpy RNG state of
    checkpoints written before it was stored as a tensor), under the module names of numpy 1.x and 2.x."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]  # the same function, numpy 1.x
    allowed: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    allowed += [(_reconstruct, f"{mod}.multiarray._reconstruct") for mod in ("numpy._core", "numpy.core")]
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: torch's own list only (older files are then refused, naming numpy)
        return nullcontext()
    return safe_globals(allowed)


def _what_was_refused(err: Exception) -> str:
    """What a weights-only unpickler refused (``the Python global posix.system``), from its message."""
    text = str(err)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"the Python global {m.group(1)}"
    m = re.search(r"unrecognized function (.+?)(?: which belongs|$)", text, re.M)
    if m:
        return f"a call of {m.group(1).strip()}"
    boilerplate = (
        "Weights only load failed",
        "In PyTorch",
        "Check the documentation",
        "Please file an issue",
        "(1)",
        "(2)",
    )
    detail = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    detail = [d.split("WeightsUnpickler error:", 1)[-1].strip() for d in detail]
    return "more than tensors and plain data" + (f" ({detail[0][:200]})" if detail and detail[0] else "")


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", *, fallback: bool = True
) -> tuple[dict[str, Any], Path]:
    """Load ``path``; if it is damaged or missing and ``fallback`` is on, load its ``.prev`` twin with a warning.

    The fallback is for resuming a run (``<out_dir>/last.pt``), where the previous checkpoint of the same run
    is the right thing to continue from. A file the user named (evaluation, export, ``cmemd.load``) is read
    with ``fallback=False``: a damaged file is then an error, not a silent switch to another file.
    A file refused as unsafe never falls back. Returns the state and the path actually read.
    """
    path = Path(path)
    try:
        return read_checkpoint(path, map_location), path
    except RefusedCheckpointError:
        raise  # an altered file is not damage: the user must see it, not a quiet switch to another file
    except CheckpointError as first:
        prev = previous_path(path)
        if not fallback or not prev.is_file():
            raise
        state = read_checkpoint(prev, map_location)
        why = str(first) if path.exists() else f"{path} is missing"
        warnings.warn(f"{why}; resuming from the previous good checkpoint {prev}", stacklevel=2)
        return state, prev
