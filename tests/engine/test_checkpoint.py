from __future__ import annotations

import errno
import os

import pytest
import torch

from cmemd.engine.checkpoint import load_checkpoint, previous_path, read_checkpoint, save_checkpoint
from cmemd.errors import CheckpointError


def _state(v: float) -> dict:
    return {"w": torch.full((64, 64), v), "epoch": int(v)}


def test_roundtrip_and_previous_kept(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint(_state(1), p)
    assert not previous_path(p).exists()
    save_checkpoint(_state(2), p)
    assert read_checkpoint(p)["epoch"] == 2 and read_checkpoint(previous_path(p))["epoch"] == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]  # no temp files left


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_damage_is_detected_and_falls_back(tmp_path, damage):
    p = tmp_path / "last.pt"
    save_checkpoint(_state(1), p)
    save_checkpoint(_state(2), p)
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0xFF
    else:
        data[:5] = b"XXXXX"
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="last.pt"):
        read_checkpoint(p)
    with pytest.warns(UserWarning, match="previous good checkpoint"):
        state, used = load_checkpoint(p)
    assert state["epoch"] == 1 and used == previous_path(p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p, fallback=False)


def test_not_a_checkpoint(tmp_path):
    torch.save({"a": 1}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a cmemd checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_disk_full_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    save_checkpoint(_state(1), p)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        save_checkpoint(_state(2), p)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert read_checkpoint(p)["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]
