"""The datasets cmemd knows: one plain dict, name -> :class:`~cmemd.data.spec.DatasetSpec`.

Adding a dataset = a module that defines its ``SPEC`` + one line here + its tests
(docs/developing.md). Nothing outside the dataset modules compares a dataset's name.
"""
from __future__ import annotations

from pathlib import Path

from cmemd.data import llcm, regdb, sysu
from cmemd.data.fs import missing_or_loop
from cmemd.data.spec import DatasetSpec
from cmemd.errors import DatasetError

DATASETS: dict[str, DatasetSpec] = {
    "sysu": sysu.SPEC,
    "regdb": regdb.SPEC,
    "llcm": llcm.SPEC,
}


def known() -> str:
    """One line per dataset: its name, title and what it expects on disk."""
    return "; ".join(f"{s.name} ({s.title}: {s.on_disk})" for s in DATASETS.values())


def get_dataset(name: str) -> DatasetSpec:
    """The spec of ``name``; an unknown name raises :class:`DatasetError` listing the known datasets."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DatasetError(f"dataset {name!r} is unknown; known datasets: {known()}") from None


def detect_layout(root: str | Path) -> str:
    """The name of the one dataset whose layout ``root`` has.

    A missing root, a root no dataset recognises, or one that several recognise raises
    :class:`DatasetError` listing the known datasets and what each expects on disk.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(missing_or_loop(root, f"{root}: dataset root not found; pass the dataset's top folder "
                                                 f"({known()})", "folder"))
    hits = [name for name, spec in DATASETS.items() if spec.detect(root)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DatasetError(f"{root}: not the root of a known dataset; expected one of: {known()}. Pass the dataset's "
                           "top folder, name the dataset (--layout / data.dataset), or generate one with `cmemd data synth`")
    raise DatasetError(f"{root}: looks like several datasets at once ({', '.join(hits)}); name the one you mean "
                       "with --layout / data.dataset")


def wrong_layout(root: str | Path, expected: str) -> DatasetError | None:
    """A :class:`DatasetError` naming the dataset ``root`` looks like when it is not ``expected``'s layout
    (the readers raise it before listing every missing folder); None when ``root`` looks like ``expected``
    or like nothing known."""
    root = Path(root)
    spec = DATASETS[expected]
    if spec.detect(root):
        return None
    others = [s for s in DATASETS.values() if s.name != expected and s.detect(root)]
    if len(others) != 1:
        return None
    other = others[0]
    return DatasetError(f"{root}: this looks like a {other.title} root ({other.on_disk}), not {spec.title} "
                        f"({spec.on_disk}); use data.dataset={other.name} (or --layout {other.name}), or point "
                        f"data.root at the {spec.title} folder")


def resolve(root: str | Path, name: str | None = None) -> DatasetSpec:
    """The spec named ``name``, or the one detected from ``root`` when ``name`` is None."""
    return get_dataset(name) if name is not None else DATASETS[detect_layout(root)]


__all__ = ["DATASETS", "DatasetSpec", "get_dataset", "detect_layout", "resolve", "known", "wrong_layout"]
