"""Folders and files cmemd writes: which folders are its own, the run-folder lock, output paths checked early.

Three rules, each for a way a command could lose a user's work (docs/reliability.md, "Nothing lost"):

* **Never delete a folder cmemd did not make.** A folder cmemd may later replace (a synthetic dataset, the
  demo's run folder) carries a marker file, :data:`MARKER`, saying what made it. Folders written before the
  marker existed are recognised by their own contents: a dataset by the generator's ``synth_summary.json``, a
  run folder by its ``config.yaml`` (with a training config's sections) beside a cmemd ``last.pt`` or a
  ``metrics.jsonl``. Replacing a folder
  (:func:`clear_folder`) removes only the entries cmemd writes there, and only in a folder of the right kind;
  a non-empty folder that is not cmemd's is refused with a :class:`ConfigError` naming it, before any work.
* **One writer per run folder.** :func:`lock_folder` takes an OS lock (``flock``) on :data:`LOCK` inside the
  folder; the kernel releases it when the process exits in any way (a lock left by a killed process is free),
  so a second run into the same folder is refused with the holder's pid instead of interleaving the files.
* **Check where the output goes before the work.** :func:`check_output_file` / :func:`check_output_folder`
  refuse a path that cannot be written (missing or unwritable parent folder, a folder where a file is
  expected, a file where a folder is expected) before a long computation whose result would then be lost.
  :func:`write_atomic` writes a file through a temporary file, so a full disk leaves the old file intact.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import yaml

from cmemd.errors import ConfigError, TrainingError

MARKER = ".cmemd-made"
LOCK = ".cmemd-lock"
KINDS = ("dataset", "run")
_RUN_SECTIONS = {"data", "model", "loss", "optim", "eval", "run"}  # of a run's config.yaml (cmemd.config.TrainConfig)

# What a cmemd run writes into its folder (the patterns :func:`clear_folder` removes when a run folder is replaced).
RUN_ENTRIES = (
    "last.pt",
    "last.prev.pt",
    "best.pt",
    "best.prev.pt",
    "config.yaml",
    "environment.json",
    "metrics.jsonl",
    "metrics.tmp",
    "results.json",
    "results.tmp",
    "report",
    "tensorboard",
    ".*.tmp-*",
)

PathLike = str | Path


# ---------------------------------------------------------------------- own folders


def mark_folder(folder: PathLike, kind: str, made_by: str) -> Path:
    """Create ``folder`` (with parents) and write its :data:`MARKER`: ``{"kind": kind, "made_by": made_by}``.

    The content is fixed (no time, no pid) so that a generator's output stays byte-identical between runs."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: use one of {KINDS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    marker.write_text(json.dumps({"kind": kind, "made_by": made_by}) + "\n")
    return marker


def folder_kind(folder: PathLike) -> str | None:
    """``"dataset"`` or ``"run"`` when ``folder`` is cmemd's own (its marker, or the contents of a folder written
    before markers existed: see the module docstring); None for anything else (a missing folder included)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        kind = json.loads((folder / MARKER).read_text()).get("kind")
        if kind in KINDS:
            return kind
    except (OSError, ValueError, AttributeError):
        pass
    if _is_synth_summary(folder / "synth_summary.json"):
        return "dataset"
    if _is_run_config(folder / "config.yaml") and (
        _is_cmemd_checkpoint(folder / "last.pt") or (folder / "metrics.jsonl").is_file()
    ):
        return "run"
    return None


def _is_run_config(path: Path) -> bool:
    """A ``config.yaml`` as ``cmemd train`` writes it (its sections), not any YAML file of that name."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and set(cfg) >= _RUN_SECTIONS


def _is_synth_summary(path: Path) -> bool:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    # the generator's summary: its settings and the layout it wrote (the registry's names are not this module's)
    return (
        isinstance(summary, dict) and isinstance(summary.get("config"), dict) and isinstance(summary.get("layout"), str)
    )


def _is_cmemd_checkpoint(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(10) == b"CMEMD-CKPT"
    except OSError:
        return False


def folder_entries(folder: PathLike) -> list[str]:
    """Names in ``folder`` other than cmemd's marker and lock file, sorted ([] for a missing folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in (MARKER, LOCK))


def check_replaceable(folder: PathLike, kind: str, option: str) -> None:
    """Refuse (:class:`ConfigError`) a ``folder`` that cmemd may not replace: a file, or a non-empty folder that is
    not cmemd's own folder of ``kind``. ``option`` names where the path came from (``--out``, ``run.out_dir``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder} is a file, not a folder; choose a folder path")
    names = folder_entries(folder)
    if not names:
        return
    found = folder_kind(folder)
    if found == kind:
        return
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    what = f"a cmemd {found} folder, not a {kind} folder" if found else "files cmemd did not write"
    raise ConfigError(
        f"{option} {folder} holds {what} ({shown}); cmemd replaces only {kind} folders it made itself "
        f"(marked by {MARKER}). Nothing was changed: choose a new or empty folder, or move those files away yourself"
    )


def clear_folder(folder: PathLike, kind: str, entries: Iterable[str], *, option: str, made_by: str) -> list[str]:
    """Make ``folder`` ready to be written again: refuse it unless :func:`check_replaceable`, remove the top-level
    entries matching the patterns ``entries`` (what cmemd writes there), mark it; returns the names kept (entries
    cmemd did not write, left as they were). Symbolic links are removed, never followed."""
    folder = Path(folder)
    check_replaceable(folder, kind, option)
    patterns = tuple(entries)
    kept = []
    for name in folder_entries(folder):
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            kept.append(name)
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    mark_folder(folder, kind, made_by)
    return kept


# ---------------------------------------------------------------------- the run-folder lock

_HELD: dict[str, FolderLock] = {}  # lock file (real path) -> the lock this process holds on it


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.cmemd-lock``, held until :meth:`release` (or the process ends).

    Re-entrant within one process (the demo holds its run folder and the training it starts takes it again);
    another process, or another open file description, is refused. Use :func:`lock_folder` to take one."""

    def __init__(self, folder: Path, fd: int, key: str) -> None:
        self.folder, self._fd, self._key, self._count = folder, fd, key, 1

    def release(self) -> None:
        self._count -= 1
        if self._count > 0 or self._fd < 0:
            return
        _HELD.pop(self._key, None)
        try:
            os.ftruncate(self._fd, 0)  # no pid left behind to mislead a reader
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: PathLike, *, option: str = "run.out_dir") -> FolderLock:
    """Create ``folder`` if needed and lock it for this process; a folder another process holds is a
    :class:`TrainingError` naming the folder and the holder's pid. Use as ``with lock_folder(d): ...``."""
    folder = Path(folder)
    check_output_folder(folder, option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"{option} {folder}: cannot create the folder ({e.strerror or e}); choose another path"
        ) from e
    path = folder / LOCK
    key = os.path.realpath(path)
    held = _HELD.get(key)
    if held is not None:
        held._count += 1
        return held
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ConfigError(
            f"{option} {folder}: cannot open the lock file {path} ({e.strerror or e}); choose a folder you can write"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"{option} {folder}: cannot lock {path} ({e.strerror or e})") from e
        raise TrainingError(
            f"{option} {folder} is in use by another cmemd run (pid {holder}, lock {path}); two runs writing one "
            "folder would mix their checkpoints and logs. Wait for it to finish (or stop it), or choose another "
            f"{option}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    lock = FolderLock(folder, fd, key)
    _HELD[key] = lock
    return lock


# ---------------------------------------------------------------------- output paths


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable(folder: Path, option: str, path: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".cmemd-probe-", dir=folder)
    except OSError as e:
        raise ConfigError(
            f"{option} {path}: cannot write into {folder} ({e.strerror or e}); choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: PathLike, option: str) -> Path:
    """Check, before the work, that a file can be written at ``path``: its folder exists and is writable, and
    ``path`` is not a folder. The folder is not created (make it, or choose another path). :class:`ConfigError`
    names ``option`` and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give the path of the file to write (e.g. {path}/results.json)")
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"{option} {path}: folder {parent} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    _check_writable(parent, option, path)
    return path


def check_output_folder(path: PathLike, option: str) -> Path:
    """Check, before the work, that ``path`` is (or can be created as) a writable folder: not a file, and its
    nearest existing ancestor a writable folder. Nothing is created. :class:`ConfigError` names ``option``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder; choose a folder path")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ConfigError(f"{option} {path}: {base} is a file, so the folder cannot be created; choose another path")
    _check_writable(base, option, path)
    return path


def write_atomic(path: PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder (written, fsynced, renamed over
    ``path``): ``path`` is the old file or the new one, never a part. On failure (a full disk) the temporary
    file is removed and the ``OSError`` re-raised; ``path`` is unchanged."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _remove_dead_temps(path)
    return path


def _remove_dead_temps(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` files of ``path`` left by writers that were killed mid-write (their pid is gone)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            try:
                stale.unlink()
            except OSError:
                pass
        except OSError:  # alive under another user (EPERM): not ours to touch
            continue


__all__ = [
    "MARKER",
    "LOCK",
    "KINDS",
    "RUN_ENTRIES",
    "mark_folder",
    "folder_kind",
    "folder_entries",
    "check_replaceable",
    "clear_folder",
    "FolderLock",
    "lock_folder",
    "check_output_file",
    "check_output_folder",
    "write_atomic",
]
