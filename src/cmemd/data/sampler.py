"""Cross-modality identity sampler: P identities x (K visible + K thermal) images per batch.

Batch order (the convention every loss relies on): **all visible images first, then all
thermal images, identities in the same order in both halves**::

    [id_1 v x K, id_2 v x K, ..., id_P v x K,  id_1 t x K, id_2 t x K, ..., id_P t x K]

so ``batch[:P*K]`` is the visible half, ``batch[P*K:]`` the thermal half, and
``pids[:P*K] == pids[P*K:]``. This is the two-stream layout of the VT-ReID code base
(AGW/CAJ feed ``x_visible, x_thermal`` as two halves).

Epoch length follows the field's convention (AGW/CAJ ``IdentitySampler``): one epoch has
``max(#visible, #thermal) // (P * K * world_size)`` steps (at least 1), so that an epoch
sees about as many images of the larger modality as it holds, whatever the world size.
Each step draws ``P * world_size`` distinct identities without replacement (a fresh draw
per step, as in the field); rank ``r`` takes identities ``[r*P, (r+1)*P)`` of that draw,
so ranks see disjoint identities in the same step and the same number of steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from cmemd.data.records import ImageRecord
from cmemd.errors import DatasetError, TrainingError


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"CrossModalityIdentitySampler: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def epoch_length(num_visible: int, num_thermal: int, ids_per_step: int, K: int) -> int:
    """Steps per epoch by the field's convention: the larger modality's image count // (ids per step (over all
    ranks) x K), at least 1."""
    return max(1, max(num_visible, num_thermal) // (ids_per_step * K))


class CrossModalityIdentitySampler(Sampler[list[int]]):
    """Batch sampler yielding lists of indices into ``records`` (use as ``batch_sampler``).

    Args:
        records: the training records; ``pid`` is the label, ``modality`` visible/thermal.
        P: identities per batch (per rank).
        K: images per identity *per modality* (a batch holds ``2 * P * K`` indices).
        seed: base seed; an epoch's batches depend only on ``(seed, epoch)``.
        rank, world_size: distributed position; ranks get disjoint identities per step.
        num_batches: override the epoch length (steps per epoch); ``None`` uses the
            field's convention (see the module docstring).

    Identities with fewer than K images of a modality are sampled with replacement for
    that modality; identities lacking a modality entirely are excluded (counted in
    ``excluded_pids`` and reported with a warning). Fewer than ``P * world_size`` usable
    identities raise :class:`DatasetError`.

    Resume: ``state_dict(batches_done)`` stores seed, epoch and the position within the
    epoch; after ``load_state_dict`` the next iteration of that epoch skips the batches
    already done. ``set_epoch`` to a *different* epoch resets the position to 0.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        P: int,
        K: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        self.P = _check_int("P", P, 1)
        self.K = _check_int("K", K, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"CrossModalityIdentitySampler: rank {rank} must be < world_size {world_size}")

        by_pid: dict[int, tuple[list[int], list[int]]] = {}
        n_vis = n_th = 0
        for i, r in enumerate(records):
            vis, th = by_pid.setdefault(int(r.pid), ([], []))
            if r.modality == "visible":
                vis.append(i)
                n_vis += 1
            elif r.modality == "thermal":
                th.append(i)
                n_th += 1
            else:  # ImageRecord validates this; guard against duck-typed records
                raise DatasetError(
                    f"record {i} ({r.path}): modality must be 'visible' or 'thermal', got {r.modality!r}"
                )
        self.excluded_pids: list[int] = sorted(p for p, (v, t) in by_pid.items() if not v or not t)
        if self.excluded_pids:
            warnings.warn(
                f"CrossModalityIdentitySampler: {len(self.excluded_pids)} of {len(by_pid)} identities lack "
                f"visible or thermal images and are excluded from training (pids {self.excluded_pids[:10]}"
                f"{' ...' if len(self.excluded_pids) > 10 else ''})",
                stacklevel=2,
            )
        self.pids: list[int] = sorted(p for p, (v, t) in by_pid.items() if v and t)
        need = self.P * self.world_size
        if len(self.pids) < need:
            raise DatasetError(
                f"CrossModalityIdentitySampler: only {len(self.pids)} identities have both visible and thermal "
                f"images, but a step needs P * world_size = {self.P} * {self.world_size} = {need} distinct ones; "
                "lower P (or world_size) or check the training records"
            )
        self._visible = [np.asarray(by_pid[p][0], dtype=np.int64) for p in self.pids]
        self._thermal = [np.asarray(by_pid[p][1], dtype=np.int64) for p in self.pids]
        self.num_visible, self.num_thermal = n_vis, n_th
        if num_batches is None:
            num_batches = epoch_length(n_vis, n_th, self.P * self.world_size, self.K)
        self.num_batches = _check_int("num_batches", num_batches, 1)
        self.epoch = 0
        self.start_batch = 0
        self._yielded = 0

    # -- epoch / resume ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (resets the position if it changes)."""
        epoch = _check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.start_batch = 0
            self._yielded = 0
        self.epoch = epoch

    def state_dict(self, batches_done: int | None = None) -> dict[str, int]:
        """Seed, epoch and position within the epoch.

        ``batches_done`` is the number of batches of the current epoch the caller has
        *trained on*; pass it when iterating through a DataLoader with workers (which
        prefetches ahead of training). Without it, the number of batches this sampler has
        yielded in the current epoch (including any skipped at resume) is used.
        """
        done = self.start_batch + self._yielded if batches_done is None else int(batches_done)
        if not 0 <= done <= self.num_batches:
            raise TrainingError(
                f"CrossModalityIdentitySampler.state_dict: batches_done={done} is outside 0..{self.num_batches}"
            )
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "start_batch": done,
            "P": self.P,
            "K": self.K,
            "world_size": self.world_size,
            "num_batches": self.num_batches,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore seed, epoch and position; P, K, world size and epoch length must match."""
        for key in ("seed", "epoch", "start_batch"):
            if key not in state:
                raise TrainingError(f"sampler state: missing key {key!r}; the checkpoint's sampler state is incomplete")
        for key in ("P", "K", "world_size", "num_batches"):
            if key in state and int(state[key]) != getattr(self, key):
                raise TrainingError(
                    f"sampler state: {key}={state[key]} in the checkpoint but {getattr(self, key)} now; resume with "
                    "the same batch layout, world size and training set"
                )
        start = int(state["start_batch"])
        if not 0 <= start <= self.num_batches:
            raise TrainingError(f"sampler state: start_batch={start} is outside 0..{self.num_batches}")
        self.seed = _check_int("seed", state["seed"], 0)
        self.epoch = _check_int("epoch", state["epoch"], 0)
        self.start_batch = start
        self._yielded = 0

    # -- sampling -----------------------------------------------------------------------
    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))

    def _draw(self, rng: np.random.Generator, pool: np.ndarray) -> np.ndarray:
        if len(pool) >= self.K:
            return rng.choice(pool, size=self.K, replace=False)
        return rng.choice(pool, size=self.K, replace=True)

    def _global_step(self, rng: np.random.Generator) -> list[list[int]]:
        """One step for all ranks; every rank draws the same numbers, then keeps its slice."""
        ids = rng.choice(len(self.pids), size=self.P * self.world_size, replace=False)
        per_rank = []
        for r in range(self.world_size):
            mine = ids[r * self.P : (r + 1) * self.P]
            vis = [self._draw(rng, self._visible[j]) for j in mine]
            th = [self._draw(rng, self._thermal[j]) for j in mine]
            per_rank.append(np.concatenate(vis + th).tolist())
        return per_rank

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All of this rank's batches of an epoch (default: the current one), from batch 0."""
        saved = self.epoch
        self.epoch = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        try:
            rng = self._rng()
            return [self._global_step(rng)[self.rank] for _ in range(self.num_batches)]
        finally:
            self.epoch = saved

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        self._yielded = 0
        for step in range(self.num_batches):
            batch = self._global_step(rng)[self.rank]  # draw even when skipping: keeps the stream aligned
            if step < self.start_batch:
                continue
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    @property
    def batch_size(self) -> int:
        """Indices per batch: ``2 * P * K``."""
        return 2 * self.P * self.K
