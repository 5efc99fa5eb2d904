"""Filesystem checks the dataset readers share: telling a symlink loop from a missing path.

A symlink to a folder or file elsewhere (users link datasets in from other disks) is followed like
the real thing. A link that never resolves because it points back at itself, directly or through
other links, is a layout problem: the readers report it by name instead of calling it "not found"
or letting the ``OSError`` (ELOOP) out as a traceback. No reader walks folders recursively, so a
link to an enclosing folder cannot make a scan endless; it is listed like any other stray entry.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path


def is_symlink_loop(path: str | Path) -> bool:
    """True when ``path`` itself is a symlink and following it runs into a loop (ELOOP).

    A path *below* a looping link is not one (its own ``lstat`` fails): the loop is reported once,
    at the link, not again for everything the reader expected under it.
    """
    if not os.path.islink(path):
        return False
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def loop_message(path: str | Path, what: str = "file") -> str:
    """The problem text for a symlink loop at ``path`` (``what``: what the reader expected there)."""
    try:
        target = f" (it points to {os.readlink(path)!r})"
    except OSError:
        target = ""
    article = "an" if what[:1] in "aeiou" else "a"
    return (f"{path}: symlink loop{target}: following it never reaches {article} {what}; remove the link or point "
            f"it at the real {what}")


def missing_or_loop(path: str | Path, message: str, what: str = "file") -> str:
    """``message`` (the reader's own "not found" text for ``path``), or the loop message when ``path`` is a
    symlink loop rather than absent."""
    return loop_message(path, what) if is_symlink_loop(path) else message


def os_error_message(path: str | Path, err: OSError, what: str = "file") -> str:
    """The problem text for an ``OSError`` met while reading ``path``: a loop is named as one."""
    if err.errno == errno.ELOOP:
        return loop_message(path, what)
    return f"{path}: cannot read this {what} ({err.strerror or err}); check that it exists and is readable"
