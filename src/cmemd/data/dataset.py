"""Dataset and DataLoader glue: records -> batches of (images, pids, modalities, indices).

Per-draw augmentation randomness comes from a ``torch.Generator`` seeded from
``(seed, epoch, index, draw)``, ``draw`` being the position of the draw in the epoch's sampling
order (over all ranks), so a batch is the same whatever ``num_workers`` is, and an image drawn
twice in an epoch (the identity sampler repeats images: about half the thermal draws of a
SYSU-MM01 epoch) gets two different augmentations. The train loader tags each index with its
epoch and draw position (:class:`EpochTaggedBatchSampler`), so this holds with persistent
workers and across a resume too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from cmemd.data.cache import ImageCache, build_cache
from cmemd.data.images import load_image
from cmemd.data.records import ImageRecord, modality_index
from cmemd.data.sampler import CrossModalityIdentitySampler
from cmemd.data.transforms import Transform, TransformConfig, transforms_from_config
from cmemd.errors import ConfigError, DatasetError
from cmemd.layout import BatchLayout


class Batch(NamedTuple):
    """A collated batch: ``images, pids, modalities, indices`` and the ``layout`` of its labels
    (:class:`cmemd.layout.BatchLayout`, built on the host so the losses never read the labels back from the
    device; None when the batch was built without one)."""

    images: torch.Tensor  # (B, 3, H, W) float32
    pids: torch.Tensor  # (B,) int64
    modalities: torch.Tensor  # (B,) int64, 0 visible / 1 thermal
    indices: torch.Tensor  # (B,) int64, positions in the record list
    layout: BatchLayout | None = None


def sample_generator(seed: int, epoch: int, index: int, draw: int | None = None) -> torch.Generator:
    """A generator whose state depends only on (seed, epoch, index[, draw])."""
    key = [seed, epoch, index] if draw is None else [seed, epoch, index, draw]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return g


class ReIDDataset(Dataset):
    """``dataset[i] -> (image float (3,H,W), pid, modality index, i)``.

    Args:
        records: the images.
        transforms: one pipeline per modality (``{"visible": ..., "thermal": ...}``).
        cache: an :class:`ImageCache` built over ``[r.path for r in records]`` (same order),
            or ``None`` to decode with :func:`load_image` each time.
        seed: base seed of the per-sample generators.

    An item key may be an int (uses :attr:`epoch`), an ``(epoch, index)`` pair, or an
    ``(epoch, index, draw)`` triple (what the train loader passes: ``draw`` is the position of
    the draw in the epoch's sampling order, so each draw of an image is augmented afresh).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transforms: Mapping[str, Transform],
        *,
        cache: ImageCache | None = None,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        if not self.records:
            raise DatasetError("ReIDDataset: the record list is empty; check the dataset root and split")
        self.transforms = dict(transforms)
        missing = {r.modality for r in self.records} - set(self.transforms)
        if missing:
            raise DatasetError(f"ReIDDataset: no transform for modality {sorted(missing)}; pass one per modality")
        if cache is not None and (
            len(cache) != len(self.records) or any(p != str(r.path) for p, r in zip(cache.paths, self.records))
        ):
            raise DatasetError(
                f"ReIDDataset: the cache at {cache.array_path} was built for other paths than these records; "
                "build it with build_cache([r.path for r in records], ...)"
            )
        self.cache = cache
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int, int, int]:
        if isinstance(key, tuple):
            epoch, index = int(key[0]), int(key[1])
            draw = int(key[2]) if len(key) > 2 else None
        else:
            epoch, index, draw = self.epoch, int(key), None
        r = self.records[index]
        img = self.cache[index] if self.cache is not None else load_image(r.path)
        g = sample_generator(self.seed, epoch, index, draw)
        return self.transforms[r.modality](img, g), int(r.pid), modality_index(r.modality), index


def collate_batch(items: Sequence[tuple[torch.Tensor, int, int, int]]) -> Batch:
    """Stack dataset items into a :class:`Batch` (without a layout)."""
    images, pids, mods, idx = zip(*items)
    return Batch(
        default_collate(list(images)),  # stacks into shared memory inside workers (no extra copy)
        torch.tensor(pids, dtype=torch.long),
        torch.tensor(mods, dtype=torch.long),
        torch.tensor(idx, dtype=torch.long),
    )


def collate_train_batch(items: Sequence[tuple[torch.Tensor, int, int, int]]) -> Batch:
    """:func:`collate_batch` plus the batch's :class:`cmemd.layout.BatchLayout`, built from the labels as Python
    ints (the training loader's collate: the model and the losses then never read the labels on the device)."""
    batch = collate_batch(items)
    _, pids, mods, _ = zip(*items)
    return batch._replace(layout=BatchLayout.from_labels(pids, mods))


class EpochTaggedBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Wraps :class:`CrossModalityIdentitySampler`, yielding ``(epoch, index, draw)`` triples.

    ``draw`` numbers the draws of an epoch over all ranks: ``(step * world_size + rank) *
    batch_size + position in the batch``. It depends only on where the draw sits in the epoch's
    sampling order, so a resumed epoch (which skips the steps already done) tags its draws as
    the uninterrupted epoch did.

    ``set_epoch``, ``state_dict``, ``load_state_dict``, ``epoch``, ``num_batches`` and ``batch_size``
    are the wrapped sampler's, said explicitly (``loader.batch_sampler.set_epoch(e)`` works as usual);
    anything else is ``loader.batch_sampler.sampler``'s.
    """

    def __init__(self, sampler: CrossModalityIdentitySampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.sampler
        epoch, step, n = s.epoch, s.start_batch, s.batch_size  # the sampler skips start_batch steps first
        for batch in s:
            base = (step * s.world_size + s.rank) * n
            yield [(epoch, i, base + j) for j, i in enumerate(batch)]
            step += 1

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self, batches_done: int | None = None) -> dict[str, int]:
        return self.sampler.state_dict(batches_done)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch (``len`` of a resumed sampler counts only those still to come)."""
        return self.sampler.num_batches

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size


def _maybe_cache(
    records: Sequence[ImageRecord],
    height: int,
    width: int,
    use_cache: bool,
    cache_dir: str | Path | None,
    dataset_root: str | Path | None,
    interpolation: str,
) -> ImageCache | None:
    if not use_cache:
        return None
    return build_cache(
        [str(r.path) for r in records],
        height,
        width,
        cache_dir=cache_dir,
        dataset_root=dataset_root,
        interpolation=interpolation,
    )


def build_train_loader(
    records: Sequence[ImageRecord],
    *,
    height: int = 288,
    width: int = 144,
    P: int = 8,
    K: int = 4,
    seed: int = 0,
    num_workers: int = 0,
    use_cache: bool = False,
    cache_dir: str | Path | None = None,
    dataset_root: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    num_batches: int | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    transform: TransformConfig | None = None,
    **transform_options: Any,
) -> DataLoader:
    """The training DataLoader: :class:`CrossModalityIdentitySampler` batches (2·P·K images,
    visible half then thermal half), augmented per :class:`TransformConfig`.

    Transform options (``pad``, ``flip``, ``random_erasing``, ``channel_aug``, ...) go either
    as ``transform=TransformConfig(...)`` or as keywords; ``height``/``width`` always win.
    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch.
    """
    base = transform if transform is not None else TransformConfig()
    try:
        config = dataclasses.replace(base, **{**transform_options, "height": height, "width": width})
    except TypeError as e:
        raise ConfigError(f"build_train_loader: {e}; transform options are the fields of TransformConfig") from None
    cache = _maybe_cache(records, height, width, use_cache, cache_dir, dataset_root, config.interpolation)
    dataset = ReIDDataset(records, transforms_from_config(config, train=True), cache=cache, seed=seed)
    sampler = CrossModalityIdentitySampler(
        records, P, K, seed=seed, rank=rank, world_size=world_size, num_batches=num_batches
    )
    return DataLoader(
        dataset,
        batch_sampler=EpochTaggedBatchSampler(sampler),
        num_workers=num_workers,
        collate_fn=collate_train_batch,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def build_test_loader(
    records: Sequence[ImageRecord],
    *,
    height: int = 288,
    width: int = 144,
    batch_size: int = 64,
    num_workers: int = 0,
    use_cache: bool = False,
    cache_dir: str | Path | None = None,
    dataset_root: str | Path | None = None,
    interpolation: str = "bilinear",
    pin_memory: bool = False,
) -> DataLoader:
    """Resize + normalise only; batches keep the record order (``indices`` = 0..N-1)."""
    config = TransformConfig(height=height, width=width, interpolation=interpolation)
    cache = _maybe_cache(records, height, width, use_cache, cache_dir, dataset_root, interpolation)
    dataset = ReIDDataset(records, transforms_from_config(config, train=False), cache=cache)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=pin_memory,
    )
