"""The structure of a training batch, computed once on the host from its labels.

The losses and the model's modality routing need to know which samples belong together (an
identity's visible and thermal images, the visible and thermal halves). Computed from the label
TENSORS on a GPU, each of those questions is a host-device synchronisation (``.tolist()``,
``torch.unique``, ``int(max)``, ``torch.equal``, ``bincount().tolist()``). The collate function
has the same labels as Python ints, so it builds a :class:`BatchLayout` for free; the trainer
copies its index tensors to the device without blocking and passes it to the model and the losses
(``layout=``), which then make no synchronisation at all. Every loss works without it too (it
computes the same grouping from the tensors).

This module is standalone: it imports only torch and :mod:`cmemd.errors`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cmemd.errors import TrainingError

__all__ = ["BatchLayout", "group_labels"]


def group_labels(
    pids: Sequence[int], modalities: Sequence[int], name: str = "alignment loss"
) -> tuple[list[tuple[list[list[int]], list[list[int]]]], int, int]:
    """Group a batch's identities by their ``(K_v, K_t)`` shape, on the host.

    Returns ``(groups, num_identities, num_skipped)``: each group is ``(visible rows, thermal rows)``,
    one list of sample positions per identity, identities in order of first appearance, groups in the
    order their shape first appears; identities missing a modality are counted in ``num_skipped``.
    """
    mods = list(modalities)
    if any(m not in (0, 1) for m in mods):
        raise TrainingError(
            f"{name}: modalities must be 0 (visible) or 1 (thermal), got values "
            f"{sorted(set(mods) - {0, 1})}; use cmemd.data.records.modality_index"
        )
    members: dict = {}
    for i, (p, m) in enumerate(zip(pids, mods)):
        members.setdefault(p, ([], []))[m].append(i)
    by_shape: dict = defaultdict(lambda: ([], []))
    skipped = 0
    for vis, th in members.values():
        if not vis or not th:
            skipped += 1
            continue
        bv, bt = by_shape[(len(vis), len(th))]
        bv.append(vis)
        bt.append(th)
    return list(by_shape.values()), len(members) - skipped, skipped


@dataclass(frozen=True, eq=False)
class BatchLayout:
    """What the model and the losses need to know about a batch's labels, known on the host.

    Attributes:
        size: samples in the batch.
        modality_counts: ``(visible, thermal)`` sample counts.
        modality_order: the stable sort of the samples by modality (visible first), or None when the
            batch already is in that order (the identity sampler's batches are); ``modality_inverse``
            puts the sorted samples back.
        groups: ``(idx_v (n_g, K_v), idx_t (n_g, K_t))`` long tensors per ``(K_v, K_t)`` shape, as
            :func:`cmemd.losses.group_identities` returns them.
        num_identities, num_skipped: identities with both modalities / with one only.
        inverse: ``(N,)`` position of each sample's identity among the batch's sorted distinct pids
            (``torch.unique(pids, return_inverse=True)[1]``); ``num_pids`` distinct pids.
        pid_min, pid_max: the label range (checked against a classifier's width on the host).
    """

    size: int
    modality_counts: tuple[int, int]
    modality_order: Tensor | None
    modality_inverse: Tensor | None
    groups: tuple[tuple[Tensor, Tensor], ...]
    num_identities: int
    num_skipped: int
    inverse: Tensor
    num_pids: int
    pid_min: int
    pid_max: int

    @classmethod
    def from_labels(cls, pids: Sequence[int], modalities: Sequence[int]) -> BatchLayout:
        """Build from the labels as Python ints (what the collate function holds); no tensor is read."""
        pids, mods = [int(p) for p in pids], [int(m) for m in modalities]
        if len(pids) != len(mods) or not pids:
            raise TrainingError(
                f"BatchLayout: need one modality per pid and at least one sample, got "
                f"{len(pids)} pids and {len(mods)} modalities"
            )
        groups, n_id, n_skip = group_labels(pids, mods, "BatchLayout")
        order = sorted(range(len(mods)), key=mods.__getitem__)  # stable, as torch.argsort(stable=True)
        if order == list(range(len(mods))):
            order_t = inverse_order = None
        else:
            order_t = torch.tensor(order, dtype=torch.long)
            inverse_order = torch.empty_like(order_t)
            inverse_order[order_t] = torch.arange(len(order))
        distinct = sorted(set(pids))
        where = {p: i for i, p in enumerate(distinct)}
        return cls(
            size=len(pids),
            modality_counts=(mods.count(0), mods.count(1)),
            modality_order=order_t,
            modality_inverse=inverse_order,
            groups=tuple((torch.tensor(bv, dtype=torch.long), torch.tensor(bt, dtype=torch.long)) for bv, bt in groups),
            num_identities=n_id,
            num_skipped=n_skip,
            inverse=torch.tensor([where[p] for p in pids], dtype=torch.long),
            num_pids=len(distinct),
            pid_min=distinct[0],
            pid_max=distinct[-1],
        )

    @classmethod
    def from_tensors(cls, pids: Tensor, modalities: Tensor) -> BatchLayout:
        """Build from label tensors (reads them to the host: a synchronisation when they are on a device)."""
        if pids.dim() != 1 or modalities.shape != pids.shape:
            raise TrainingError(
                f"BatchLayout: pids and modalities must both be (N,), got {tuple(pids.shape)} and "
                f"{tuple(modalities.shape)}"
            )
        return cls.from_labels(pids.tolist(), modalities.tolist())

    def _map(self, fn) -> BatchLayout:
        def one(t: Tensor | None) -> Tensor | None:
            return None if t is None else fn(t)

        return dataclasses.replace(
            self,
            modality_order=one(self.modality_order),
            modality_inverse=one(self.modality_inverse),
            groups=tuple((fn(v), fn(t)) for v, t in self.groups),
            inverse=fn(self.inverse),
        )

    def to(self, device: torch.device | str, non_blocking: bool = True) -> BatchLayout:
        """The layout with its index tensors on ``device`` (copied without blocking by default: nothing
        reads them on the host)."""
        device = torch.device(device)
        return self._map(lambda t: t if t.device == device else t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> BatchLayout:
        """Page-locked copies of the index tensors (the DataLoader's ``pin_memory`` calls this)."""
        return self._map(lambda t: t.pin_memory())

    def __eq__(self, other: object) -> bool:
        """Same structure (index tensors compared by value; device and memory layout aside)."""
        if not isinstance(other, BatchLayout):
            return NotImplemented

        def same(a: object, b: object) -> bool:
            if isinstance(a, Tensor) and isinstance(b, Tensor):
                return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
            if isinstance(a, tuple) and isinstance(b, tuple):
                return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
            return a == b

        return all(same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside

    def check(self, n: int, name: str) -> None:
        """Raise unless the layout describes a batch of ``n`` samples."""
        if n != self.size:
            raise TrainingError(
                f"{name}: the batch layout describes {self.size} samples but the batch has {n}; "
                "build the layout from this batch's labels (BatchLayout.from_labels)"
            )
