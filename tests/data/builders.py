"""Tiny hand-built dataset trees for reader tests (independent of the synthetic generator)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, value: int = 0, size=(4, 8), fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value % 256, dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def make_sysu(root: Path, counts: dict[tuple[int, int], int], train=(), val=(), test=()) -> Path:
    """counts[(pid, cam)] = number of images; ids in split lists written as single lines."""
    for c in range(1, 7):
        (root / f"cam{c}").mkdir(parents=True, exist_ok=True)
    for (pid, cam), n in counts.items():
        for k in range(1, n + 1):
            write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg", value=pid * 7 + cam + k)
    exp = root / "exp"
    exp.mkdir(exist_ok=True)
    for name, ids in (("train_id.txt", train), ("val_id.txt", val), ("test_id.txt", test)):
        (exp / name).write_text(",".join(str(i) for i in ids) + "\n")
    return root


def make_regdb(root: Path, num_ids: int = 8, per_id: int = 3) -> Path:
    """Visible/Thermal folders and 10 trials of idx files (half the ids train, half test)."""
    rng = np.random.default_rng(0)
    for pid in range(1, num_ids + 1):
        for k in range(1, per_id + 1):
            write_image(root / "Visible" / str(pid) / f"male_front_v_{pid:05d}_{k}.bmp", pid + k, fmt="BMP")
            write_image(root / "Thermal" / str(pid) / f"male_front_t_{pid:05d}_{k}.bmp", pid + k, fmt="BMP")
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for t in range(1, 11):
        ids = rng.permutation(np.arange(1, num_ids + 1))
        train_ids, test_ids = sorted(ids[: num_ids // 2]), sorted(ids[num_ids // 2:])
        for split, chosen in (("train", train_ids), ("test", test_ids)):
            for m, folder, tag in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
                lines = []
                for label, pid in enumerate(chosen):
                    lab = label if split == "train" else pid
                    for k in range(1, per_id + 1):
                        lines.append(f"{folder}/{pid}/male_front_{tag}_{pid:05d}_{k}.bmp {lab}")
                (root / "idx" / f"{split}_{m}_{t}.txt").write_text("\n".join(lines) + "\n")
    return root
