"""RegDB: the reader of the released layout with its 10 train/test trials (the benchmark and its
protocol are :mod:`cmemd.benchmarks.regdb`).

Layout (docs/protocols.md)::

    root/Visible/<pid>/<name>_v_<n>_<k>.bmp
    root/Thermal/<pid>/<name>_t_<n>_<k>.bmp
    root/idx/{train,test}_{visible,thermal}_{t}.txt     t = 1..10, lines "<relative path> <label>"

Trials are numbered 1..10 as in the idx file names. Evaluate one model per trial: a model
trained on trial t has seen the other trials' test ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmemd.data.fs import is_symlink_loop, loop_message, missing_or_loop
from cmemd.data.records import MODALITIES, ImageRecord, Modality, path_label_lines
from cmemd.errors import DatasetError

#: The one camera -> modality map of RegDB (one aligned dual-camera rig).
CAMERA_MODALITY: dict[int, Modality] = {1: "visible", 2: "thermal"}
MODALITY_CAMERA: dict[str, int] = {m: c for c, m in CAMERA_MODALITY.items()}
MODALITY_FOLDER: dict[str, str] = {"visible": "Visible", "thermal": "Thermal"}
TRIALS: tuple[int, ...] = tuple(range(1, 11))


def looks_like_regdb(root: str | Path) -> bool:
    """True when ``root`` has RegDB's own folders (Visible/, Thermal/ or idx/t*_visible_*.txt)."""
    root = Path(root)
    return (root / "Visible").is_dir() or (root / "Thermal").is_dir() or any((root / "idx").glob("t*_visible_*.txt"))


def idx_path(root: str | Path, split: str, modality: str, trial: int) -> Path:
    """``root/idx/{split}_{modality}_{trial}.txt``."""
    return Path(root) / "idx" / f"{split}_{modality}_{trial}.txt"


def read_idx_file(
    path: str | Path, root: str | Path, modality: Modality, *, check_exists: bool = True
) -> list[ImageRecord]:
    """Parse one idx file into records; every malformed line is reported at once."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DatasetError(
            missing_or_loop(
                path, f"{path}: split file not found; RegDB ships idx/ with 10 trials of train/test lists", "split file"
            )
        )
    folder = MODALITY_FOLDER[modality]
    records, problems = [], []
    for where, rel, label, problem in path_label_lines(path):
        if problem:
            problems.append(problem)
            continue
        if not rel.replace("\\", "/").startswith(folder + "/"):
            problems.append(f"{where}: path {rel!r} is not under {folder}/ although the file lists {modality} images")
            continue
        full = root / rel
        if check_exists and not full.is_file():
            problems.append(f"{where}: " + missing_or_loop(full, f"image {full} does not exist", "image"))
            continue
        records.append(ImageRecord(str(full), label, MODALITY_CAMERA[modality], modality))
    if problems:
        raise DatasetError(f"{path}: {len(problems)} malformed line(s)", problems)
    if not records:
        raise DatasetError(f"{path}: no image lines; expected '<relative path> <label>' per line")
    return records


@dataclass
class RegDB:
    """The RegDB dataset at ``root``; records are read per trial from ``idx/``."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                missing_or_loop(
                    self.root,
                    f"{self.root}: RegDB root not found; pass the folder that holds Visible/, Thermal/, idx/",
                    "folder",
                )
            )
        absent = [n for n in ("Visible", "Thermal", "idx") if not (self.root / n).is_dir()]
        if absent:
            loops = [loop_message(self.root / n, "folder") for n in absent if is_symlink_loop(self.root / n)]
            raise DatasetError(
                f"{self.root}: RegDB folders missing: {absent}; expected Visible/, Thermal/ and idx/ "
                "under the root" + "".join(f"; {x}" for x in loops)
            )

    def _check_trial(self, trial: int) -> None:
        if trial not in TRIALS:
            raise DatasetError(f"RegDB trial must be in 1..10 (the idx file suffix), got {trial}")

    def _read_both(self, split: str, trial: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """(visible, thermal) records of one split of a trial; the problems of both idx files raised together."""
        self._check_trial(trial)
        out, problems = [], []
        for m in MODALITIES:
            try:
                out.append(read_idx_file(idx_path(self.root, split, m, trial), self.root, m))
            except DatasetError as e:
                problems += e.problems
        if problems:
            raise DatasetError(
                f"{self.root / 'idx'}: {len(problems)} problem(s) in the trial {trial} {split} lists", problems
            )
        return out[0], out[1]

    def train(self, trial: int) -> list[ImageRecord]:
        """Visible then thermal training records of a trial, with the idx labels (checked contiguous 0..N-1)."""
        vis, th = self._read_both("train", trial)
        records = vis + th
        labels = sorted({r.pid for r in records})
        if labels != list(range(len(labels))):
            gaps = sorted(set(range(labels[-1] + 1)) - set(labels))[:10]
            raise DatasetError(
                f"{idx_path(self.root, 'train', 'visible', trial).parent}: training labels of trial {trial} are not "
                f"contiguous 0..{len(labels) - 1} (missing {gaps}); relabel the train_*_{trial}.txt files"
            )
        per_modality = [{r.pid for r in records if r.modality == m} for m in ("visible", "thermal")]
        if per_modality[0] != per_modality[1]:
            diff = sorted(per_modality[0] ^ per_modality[1])[:10]
            raise DatasetError(f"trial {trial}: labels {diff} appear in only one of train_visible/train_thermal")
        return records

    def test(self, trial: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """(visible, thermal) test records of a trial; pids are the idx labels."""
        return self._read_both("test", trial)
