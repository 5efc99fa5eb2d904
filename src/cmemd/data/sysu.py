"""SYSU-MM01: the reader of the released layout (it scans folders and returns records; the benchmark,
its gallery draws and its protocol are :mod:`cmemd.benchmarks.sysu`).

Layout (docs/protocols.md)::

    root/cam1 .. cam6/<pid:04d>/<k:04d>.jpg
    root/exp/train_id.txt val_id.txt test_id.txt    (one line of comma-separated ids)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmemd.data.fs import is_symlink_loop, list_images, loop_message, missing_or_loop, read_id_file
from cmemd.data.records import ImageRecord, Modality
from cmemd.errors import DatasetError

#: The one camera -> modality map of SYSU-MM01.
CAMERA_MODALITY: dict[int, Modality] = {
    1: "visible",
    2: "visible",
    3: "thermal",
    4: "visible",
    5: "visible",
    6: "thermal",
}
VISIBLE_CAMS: tuple[int, ...] = tuple(c for c, m in CAMERA_MODALITY.items() if m == "visible")
THERMAL_CAMS: tuple[int, ...] = tuple(c for c, m in CAMERA_MODALITY.items() if m == "thermal")
SPLIT_FILES: dict[str, str] = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}
SPLIT_FILE_SOURCE = "SYSU-MM01 ships it in exp/ (copy exp/ from the archive)"


def looks_like_sysu(root: str | Path) -> bool:
    """True when ``root`` has SYSU-MM01's own folders (a cam1..cam6 folder or exp/)."""
    root = Path(root)
    return any((root / f"cam{c}").is_dir() for c in CAMERA_MODALITY) or (root / "exp").is_dir()


@dataclass
class SYSUMM01:
    """The SYSU-MM01 dataset at ``root``, scanned once at construction.

    Every structural problem (missing camera folder or split file, symlink loop, malformed split line,
    listed id with no images, empty id folder) is collected and raised together as one
    :class:`DatasetError`.
    """

    root: Path
    split_ids: dict[str, list[int]] = field(init=False)
    _files: dict[tuple[int, int], list[str]] = field(init=False, repr=False)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                missing_or_loop(
                    self.root,
                    f"{self.root}: SYSU-MM01 root not found; pass the folder that holds cam1..cam6 and exp/",
                    "folder",
                )
            )
        problems: list[str] = []
        for c in CAMERA_MODALITY:
            if not (self.root / f"cam{c}").is_dir():
                cam = self.root / f"cam{c}"
                problems.append(
                    missing_or_loop(cam, f"{cam}: camera folder missing (SYSU-MM01 has cam1..cam6)", "folder")
                )
        self.split_ids = {}
        for split, name in SPLIT_FILES.items():
            try:
                self.split_ids[split] = read_id_file(self.root / "exp" / name, SPLIT_FILE_SOURCE)
            except DatasetError as e:
                problems.append(str(e))
                self.split_ids[split] = []
        self._files = {}
        listed = sorted({pid for ids in self.split_ids.values() for pid in ids})
        for pid in listed:
            found = 0
            for c in CAMERA_MODALITY:
                folder = self.root / f"cam{c}" / f"{pid:04d}"
                if not folder.is_dir():
                    if is_symlink_loop(folder):
                        problems.append(loop_message(folder, "folder"))
                    continue
                images, others, unreadable = list_images(folder)
                problems += unreadable
                if others:
                    problems.append(f"{folder}: non-image files {others[:5]}; move them out of the dataset")
                if not images:
                    problems.append(f"{folder}: empty id folder; restore its images or delete the folder")
                    continue
                self._files[(pid, c)] = images
                found += len(images)
            if found == 0:
                problems.append(
                    f"id {pid} is listed in exp/ but has no images in any camera folder "
                    f"(expected cam*/{pid:04d}/*.jpg); restore the images or fix the split file"
                )
        overlap = set(self.split_ids["test"]) & (set(self.split_ids["train"]) | set(self.split_ids["val"]))
        if overlap:
            problems.append(f"{self.root / 'exp'}: ids in both test and train/val: {sorted(overlap)[:10]}")
        if problems:
            raise DatasetError(f"{self.root}: {len(problems)} problem(s) in the SYSU-MM01 layout", problems)

    # ------------------------------------------------------------------ records
    def _records(
        self, pids: Sequence[int], cams: Sequence[int], label: dict[int, int] | None = None
    ) -> list[ImageRecord]:
        out = []
        for pid in sorted(pids):
            for c in cams:
                for name in self._files.get((pid, c), ()):
                    path = str(self.root / f"cam{c}" / f"{pid:04d}" / name)
                    out.append(ImageRecord(path, label[pid] if label else pid, c, CAMERA_MODALITY[c]))
        return out

    @property
    def train_ids(self) -> list[int]:
        """Training identities: train + val, sorted (the field trains on both)."""
        return sorted(set(self.split_ids["train"]) | set(self.split_ids["val"]))

    @property
    def test_ids(self) -> list[int]:
        return sorted(self.split_ids["test"])

    def train(self, include_val: bool = True) -> list[ImageRecord]:
        """Every image of the training identities, all six cameras, pids relabelled 0..N-1 in id order.

        The field trains on train + val; ``include_val=False`` holds the val ids out (for model
        selection on :meth:`thermal`/:meth:`visible` with ``split="val"``).
        """
        ids = self.train_ids if include_val else sorted(self.split_ids["train"])
        label = {pid: i for i, pid in enumerate(ids)}
        return self._records(ids, tuple(CAMERA_MODALITY), label)

    def thermal(self, split: str = "test") -> list[ImageRecord]:
        """Every thermal image (cam3, cam6) of the split's ids (``split``: test or val)."""
        return self._records(self._split(split), THERMAL_CAMS)

    def visible(self, split: str = "test", cams: Sequence[int] = VISIBLE_CAMS) -> list[ImageRecord]:
        """Every visible image of the split's ids in ``cams`` (sorted by id, camera, file)."""
        bad = sorted(set(cams) - set(VISIBLE_CAMS))
        if bad:
            raise DatasetError(f"cameras {bad} are not SYSU-MM01 visible cameras {list(VISIBLE_CAMS)}")
        return self._records(self._split(split), tuple(cams))

    def _split(self, split: str) -> list[int]:
        if split not in ("test", "val"):
            raise DatasetError(f"split must be 'test' or 'val', got {split!r}")
        return sorted(self.split_ids[split])
