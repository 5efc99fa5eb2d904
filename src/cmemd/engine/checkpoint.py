"""Checkpoints that are never half-written and that prove their own integrity.

File format: a one-line header ``CMEMD-CKPT 1 <sha256 of payload> <payload bytes>\\n`` followed by
the ``torch.save`` payload. Writing goes to a temporary file in the same folder, is flushed and
fsynced, and only then renamed over the target (rename is atomic on POSIX), so a crash or a full
disk leaves the previous checkpoint intact. Before a new ``last.pt`` replaces the old one, the
old one is kept as ``last.prev.pt``: if the newest file is ever found corrupt (a disk fault, a
copy cut short), loading falls back to the previous one and says so.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from cmemd.errors import CheckpointError

MAGIC = b"CMEMD-CKPT"
VERSION = 1


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
        _, version, digest, size = data[:nl].split(b" ")
        version, size = int(version), int(size)
    except ValueError:
        raise CheckpointError(f"{path}: damaged checkpoint header") from None
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this cmemd ({VERSION}); upgrade cmemd")
    payload = data[nl + 1:]
    if len(payload) != size:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(payload)} of {size} payload bytes)")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: corrupted checkpoint (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as e:  # a verified payload that still fails is a version problem
        raise CheckpointError(f"{path}: checkpoint payload does not load ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | Path, map_location: Any = "cpu", *, fallback: bool = True) -> tuple[dict[str, Any], Path]:
    """Load ``path``; if it is damaged and ``fallback`` is on, load its ``.prev`` twin with a warning.

    Returns the state and the path actually read.
    """
    path = Path(path)
    try:
        return read_checkpoint(path, map_location), path
    except CheckpointError as first:
        prev = previous_path(path)
        if not fallback or not path.exists() or not prev.is_file():
            raise
        state = read_checkpoint(prev, map_location)
        warnings.warn(f"{first}; resuming from the previous good checkpoint {prev}", stacklevel=2)
        return state, prev
