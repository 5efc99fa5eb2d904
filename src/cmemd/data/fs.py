"""What the dataset readers share: listing an image folder, reading an id file, and telling a symlink loop
from a missing path.

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

from cmemd.errors import DatasetError

#: The image files a reader lists (lower-case suffixes).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


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
    return (
        f"{path}: symlink loop{target}: following it never reaches {article} {what}; remove the link or point "
        f"it at the real {what}"
    )


def missing_or_loop(path: str | Path, message: str, what: str = "file") -> str:
    """``message`` (the reader's own "not found" text for ``path``), or the loop message when ``path`` is a
    symlink loop rather than absent."""
    return loop_message(path, what) if is_symlink_loop(path) else message


def os_error_message(path: str | Path, err: OSError, what: str = "file") -> str:
    """The problem text for an ``OSError`` met while reading ``path``: a loop is named as one."""
    if err.errno == errno.ELOOP:
        return loop_message(path, what)
    return f"{path}: cannot read this {what} ({err.strerror or err}); check that it exists and is readable"


def list_images(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """Sorted image file names in a folder, the names of non-image files (hidden files ignored), and the
    problems of entries that cannot be followed (a symlink loop, no permission), each naming its path.

    Symlinks are followed: an image or folder linked in from elsewhere counts as if it were here."""
    images: list[str] = []
    others: list[str] = []
    problems: list[str] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    is_file = e.is_file()  # follows a symlink; raises on a loop (ELOOP)
                except OSError as err:
                    problems.append(os_error_message(folder / e.name, err, "image"))
                    continue
                (images if e.name.lower().endswith(IMAGE_EXTENSIONS) and is_file else others).append(e.name)
    except OSError as err:
        problems.append(os_error_message(folder, err, "folder"))
    return sorted(images), sorted(others), sorted(problems)


def read_id_file(path: str | Path, missing: str) -> list[int]:
    """Parse an id file (e.g. SYSU-MM01's ``exp/*_id.txt``): one line of comma-separated
    positive integers, each once. ``missing`` says where the file comes from, for the not-found message."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(missing_or_loop(path, f"{path}: split file not found; {missing}", "split file"))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path}: not a text file ({e.reason} at byte {e.start}); expected one line of "
            "comma-separated ids, e.g. '1,2,4'"
        ) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise DatasetError(
            f"{path}: expected exactly one non-empty line of comma-separated ids (e.g. '1,2,4'), found {len(lines)}"
        )
    ids = []
    for i, token in enumerate(lines[0].split(",")):
        token = token.strip()
        if not (token.isascii() and token.isdigit()) or int(token) <= 0:  # isdigit alone accepts '²'
            raise DatasetError(
                f"{path}: id #{i + 1} is {token!r}, expected a positive integer (line: {lines[0][:80]!r})"
            )
        ids.append(int(token))
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})
        raise DatasetError(f"{path}: ids listed twice: {dup[:10]}; each id must appear once")
    return ids
