"""LLCM (low-light cross-modality, CVPR 2023): the reader of the released layout (the benchmark, its
per-trial draws and its protocol are :mod:`cmemd.benchmarks.llcm`).

Layout (docs/protocols.md)::

    root/idx/train_vis.txt  train_nir.txt       lines "<path relative to root> <label>", labels 0..N-1
    root/idx/test_id.txt                        one line of comma-separated test ids
    root/test_vis/cam1 .. cam9/<pid:04d>/*.jpg
    root/test_nir/cam1 cam2 cam4 .. cam9/<pid:04d>/*.jpg   (the authors' code lists no NIR cam3)

Nine cameras, each with an RGB and a near-infrared sensor under one number. Ids and cameras of the
test images come from the folder structure (``test_*/cam<c>/<pid>``), never from splitting the path
on ``"cam"`` (the authors' code does that and breaks when the root's path contains "cam"); the
camera of a training image is the ``cam<c>`` folder in its listed path. NIR images may be
single-channel; :func:`cmemd.data.images.load_image` converts them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cmemd.data.fs import is_symlink_loop, list_images, loop_message, missing_or_loop, read_id_file
from cmemd.data.records import MODALITIES, ImageRecord, Modality, is_modality, path_label_lines
from cmemd.errors import DatasetError

#: Cameras per modality: the visible sensors of cam1..cam9 and the NIR sensors the authors' code reads.
MODALITY_CAMS: dict[str, tuple[int, ...]] = {
    "visible": (1, 2, 3, 4, 5, 6, 7, 8, 9),
    "thermal": (1, 2, 4, 5, 6, 7, 8, 9),
}
#: Test folders and training lists per modality ("thermal" is LLCM's near-infrared).
TEST_FOLDER: dict[str, str] = {"visible": "test_vis", "thermal": "test_nir"}
TRAIN_LIST: dict[str, str] = {"visible": "train_vis.txt", "thermal": "train_nir.txt"}
TEST_ID_FILE = "test_id.txt"

_CAM_DIR = re.compile(r"^cam(\d+)$", re.IGNORECASE)


def looks_like_llcm(root: str | Path) -> bool:
    """True when ``root`` has LLCM's own folders (test_vis/, test_nir/ or idx/train_vis.txt)."""
    root = Path(root)
    return (root / "test_vis").is_dir() or (root / "test_nir").is_dir() or (root / "idx" / "train_vis.txt").is_file()


def camera_of(rel_path: str) -> int | None:
    """The camera number of a listed path: its ``cam<c>`` folder (the last one, so that a root or
    prefix containing "cam" does not matter); None when the path has no such folder."""
    for part in reversed(Path(rel_path.replace("\\", "/")).parts[:-1]):
        m = _CAM_DIR.match(part)
        if m:
            return int(m.group(1))
    return None


def read_train_list(
    path: str | Path, root: str | Path, modality: Modality, *, check_exists: bool = True
) -> list[ImageRecord]:
    """Parse ``idx/train_vis.txt`` / ``idx/train_nir.txt``; every malformed line is reported at once."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DatasetError(
            missing_or_loop(
                path,
                f"{path}: training list not found; LLCM ships "
                f"idx/{TRAIN_LIST[modality]} ('<relative path> <label>' per line)",
                "training list",
            )
        )
    records, problems = [], []
    for where, rel, label, problem in path_label_lines(path):
        if problem:
            problems.append(problem)
            continue
        cam = camera_of(rel)
        if cam is None:
            problems.append(
                f"{where}: path {rel!r} has no cam<c> folder, so its camera is unknown "
                "(LLCM lists paths like <split>/cam<c>/<id>/<file>.jpg)"
            )
            continue
        full = root / rel
        if check_exists and not full.is_file():
            problems.append(f"{where}: " + missing_or_loop(full, f"image {full} does not exist", "image"))
            continue
        records.append(ImageRecord(str(full), label, cam, modality))
    if problems:
        raise DatasetError(f"{path}: {len(problems)} malformed line(s)", problems)
    if not records:
        raise DatasetError(f"{path}: no image lines; expected '<relative path> <label>' per line")
    return records


def train_records(root: str | Path) -> list[ImageRecord]:
    """Visible then NIR training records of ``idx/train_vis.txt`` and ``idx/train_nir.txt``, labels checked
    contiguous 0..N-1 and present in both modalities; every problem of both lists at once."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            missing_or_loop(
                root, f"{root}: LLCM root not found; pass the folder that holds idx/, test_vis/, test_nir/", "folder"
            )
        )
    records, problems = [], []
    for m in MODALITIES:
        try:
            records += read_train_list(root / "idx" / TRAIN_LIST[m], root, m)
        except DatasetError as e:
            problems += e.problems
    if problems:
        raise DatasetError(f"{root / 'idx'}: {len(problems)} problem(s) in the LLCM training lists", problems)
    labels = sorted({r.pid for r in records})
    if labels != list(range(len(labels))):
        gaps = sorted(set(range(labels[-1] + 1)) - set(labels))[:10]
        raise DatasetError(
            f"{root / 'idx'}: training labels are not contiguous 0..{len(labels) - 1} "
            f"(missing {gaps}); relabel train_vis.txt / train_nir.txt"
        )
    per_modality = [{r.pid for r in records if r.modality == m} for m in ("visible", "thermal")]
    if per_modality[0] != per_modality[1]:
        diff = sorted(per_modality[0] ^ per_modality[1])[:10]
        raise DatasetError(f"{root / 'idx'}: labels {diff} appear in only one of train_vis.txt / train_nir.txt")
    return records


@dataclass
class LLCM:
    """The LLCM dataset at ``root``; the test folders are scanned once at construction.

    Every structural problem (missing test folder or id file, malformed id line, listed id
    without images, empty or polluted id folder) is collected and raised together as one
    :class:`DatasetError`. The training lists are read by :meth:`train`.
    """

    root: Path
    test_ids: list[int] = field(init=False)
    _files: dict[tuple[str, int, int], list[str]] = field(init=False, repr=False)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                missing_or_loop(
                    self.root,
                    f"{self.root}: LLCM root not found; pass the folder that holds idx/, test_vis/, test_nir/",
                    "folder",
                )
            )
        problems: list[str] = []
        for m, folder in TEST_FOLDER.items():
            for c in MODALITY_CAMS[m]:
                if not (self.root / folder / f"cam{c}").is_dir():
                    problems.append(
                        missing_or_loop(
                            self.root / folder / f"cam{c}",
                            f"{self.root / folder / f'cam{c}'}: camera folder missing "
                            f"(LLCM has {folder}/cam{{{','.join(map(str, MODALITY_CAMS[m]))}}})",
                            "folder",
                        )
                    )
        try:
            self.test_ids = sorted(
                read_id_file(self.root / "idx" / TEST_ID_FILE, missing=f"LLCM ships it as idx/{TEST_ID_FILE}")
            )
        except DatasetError as e:
            problems += e.problems
            self.test_ids = []
        self._files = {}
        for pid in self.test_ids:
            found = 0
            for m, folder in TEST_FOLDER.items():
                for c in MODALITY_CAMS[m]:
                    d = self.root / folder / f"cam{c}" / f"{pid:04d}"
                    if not d.is_dir():
                        if is_symlink_loop(d):
                            problems.append(loop_message(d, "folder"))
                        continue
                    images, others, unreadable = list_images(d)
                    problems += unreadable
                    if others:
                        problems.append(f"{d}: non-image files {others[:5]}; move them out of the dataset")
                    if not images:
                        problems.append(f"{d}: empty id folder; restore its images or delete the folder")
                        continue
                    self._files[(m, pid, c)] = images
                    found += len(images)
            if found == 0:
                problems.append(
                    f"test id {pid} is listed in idx/{TEST_ID_FILE} but has no images under "
                    f"test_vis/cam*/{pid:04d}/ or test_nir/cam*/{pid:04d}/; restore them or fix the id file"
                )
        if problems:
            raise DatasetError(f"{self.root}: {len(problems)} problem(s) in the LLCM layout", problems)

    def train(self) -> list[ImageRecord]:
        """Visible then NIR training records with the listed labels (checked contiguous 0..N-1, both modalities)."""
        return train_records(self.root)

    def test(self, modality: str) -> list[ImageRecord]:
        """Every test image of one modality, ids ascending, then cameras, then sorted file names
        (the order the authors' code lists them in); pids are the dataset's ids."""
        if not is_modality(modality):  # the keys of TEST_FOLDER and MODALITY_CAMS
            raise DatasetError(f"modality must be 'visible' or 'thermal' (NIR), got {modality!r}")
        out = []
        for pid in self.test_ids:
            for c in MODALITY_CAMS[modality]:
                for name in self._files.get((modality, pid, c), ()):
                    out.append(
                        ImageRecord(
                            str(self.root / TEST_FOLDER[modality] / f"cam{c}" / f"{pid:04d}" / name), pid, c, modality
                        )
                    )
        return out
