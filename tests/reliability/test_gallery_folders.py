"""`cmemd index --images DIR`: symlinked subfolders are followed, each real folder once; loops are named."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from cmemd.errors import DatasetError
from cmemd.retrieval import list_images


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8)).save(path)
    return path


def test_symlinked_subfolder_is_followed_and_a_cycle_ends(tmp_path):
    elsewhere = tmp_path / "other_disk" / "cam2"
    b = _png(elsewhere / "b.png")
    root = tmp_path / "gallery"
    a = _png(root / "cam1" / "a.png")
    os.symlink(elsewhere, root / "cam2")
    os.symlink(root, root / "cam1" / "back_to_root")  # a link to an enclosing folder: walked once, not forever
    found = list_images(root)
    assert sorted(p.resolve() for p in found) == sorted([a.resolve(), b.resolve()])
    assert len(found) == 2


def test_a_looping_link_is_named_not_skipped(tmp_path):
    root = tmp_path / "gallery"
    _png(root / "a.png")
    os.symlink(root / "loop.png", root / "loop.png")
    with pytest.raises(DatasetError, match=r"loop\.png: symlink loop"):
        list_images(root)
