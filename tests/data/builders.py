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


def make_llcm(root: Path, test_counts: dict[tuple[str, int, int], int], test_ids=(), train_ids=(1, 2),
              train_per_cam: int = 2, nir_mode: str = "RGB") -> Path:
    """LLCM layout: test_counts[(modality, pid, cam)] = images under test_vis/ or test_nir/; train ids get
    ``train_per_cam`` images in cam1 and cam2 of both modalities, listed in idx/train_{vis,nir}.txt with
    labels 0..N-1. NIR images are written in ``nir_mode`` ("L" for single-channel)."""
    folders = {"visible": "test_vis", "thermal": "test_nir"}
    cams = {"visible": range(1, 10), "thermal": (1, 2, 4, 5, 6, 7, 8, 9)}
    for m, folder in folders.items():
        for c in cams[m]:
            (root / folder / f"cam{c}").mkdir(parents=True, exist_ok=True)
    for (m, pid, cam), n in test_counts.items():
        for k in range(1, n + 1):
            path = root / folders[m] / f"cam{cam}" / f"{pid:04d}" / f"{pid:04d}_c{cam:02d}_{k:03d}.jpg"
            write_image(path, value=pid * 11 + cam * 3 + k)
            if m == "thermal" and nir_mode != "RGB":
                Image.open(path).convert(nir_mode).save(path)
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for m, tag, list_name in (("visible", "vis", "train_vis.txt"), ("thermal", "nir", "train_nir.txt")):
        lines = []
        for label, pid in enumerate(sorted(train_ids)):
            for cam in (1, 2):
                for k in range(1, train_per_cam + 1):
                    rel = f"{tag}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_{k:03d}.jpg"
                    write_image(root / rel, value=pid + cam + k)
                    lines.append(f"{rel} {label}")
        (root / "idx" / list_name).write_text("\n".join(lines) + "\n")
    ids = sorted(test_ids) if test_ids else sorted({p for (_, p, _) in test_counts})
    (root / "idx" / "test_id.txt").write_text(",".join(str(i) for i in ids) + "\n")
    return root
