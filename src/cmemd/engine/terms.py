"""Logged loss terms that stay on the device until someone reads them.

``float(loss_term)`` every step waits for the device each time (about 20 terms a step on the full
model). :class:`LoggedTerms` keeps the 0-d tensors as they are; the first read of any value turns
them ALL into Python floats with one transfer, so a training loop that reads its terms only at
logging steps synchronises once per logging step. It is a ``MutableMapping[str, float]``: code
that reads ``terms["loss"]`` or ``dict(terms)`` gets floats, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

import torch
from torch import Tensor

__all__ = ["LoggedTerms", "to_floats", "raw_terms", "wide_dtype"]

Value = Tensor | float


def wide_dtype(device: torch.device) -> torch.dtype:
    """float64 (every float32 value and the sum of two exactly as Python floats), float32 where the device has
    no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def to_floats(values: Mapping[str, Value]) -> dict[str, float]:
    """Every value as a Python float, in the mapping's order; the tensors are read with ONE transfer per
    device (stacked in float64, which holds every float32 / bfloat16 / float16 value exactly, so each float
    equals ``float(tensor)``; float32 on MPS)."""
    by_device: dict[torch.device, dict[str, Tensor]] = {}
    for k, v in values.items():
        if isinstance(v, Tensor):
            by_device.setdefault(v.device, {})[k] = v
    read: dict[str, float] = {}
    for device, tensors in by_device.items():
        wide = wide_dtype(device)
        stacked = torch.stack([t.detach().reshape(()).to(wide) for t in tensors.values()])
        read.update(zip(tensors, stacked.tolist()))
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


def raw_terms(terms: Mapping[str, Value]) -> Mapping[str, Value]:
    """The values as they are (tensors not read) for a :class:`LoggedTerms`; any other mapping as it is."""
    return terms.raw() if isinstance(terms, LoggedTerms) else terms


class LoggedTerms(MutableMapping[str, float]):
    """``{name: value}`` of 0-d tensors (or floats) read as floats, all at once, on first access.

    ``raw()`` gives the values without reading them (what a loop accumulating terms on the device uses).
    Setting a value forgets the floats read so far.
    """

    def __init__(self, values: Mapping[str, Value] | None = None) -> None:
        self._raw: dict[str, Value] = dict(values or {})
        self._floats: dict[str, float] | None = None

    def raw(self) -> dict[str, Value]:
        return dict(self._raw)

    def floats(self) -> dict[str, float]:
        if self._floats is None:
            self._floats = to_floats(self._raw)
        return self._floats

    def __getitem__(self, key: str) -> float:
        if key not in self._raw:
            raise KeyError(key)
        return self.floats()[key]

    def __setitem__(self, key: str, value: Value) -> None:
        self._raw[key] = value.detach() if isinstance(value, Tensor) else value
        self._floats = None

    def __delitem__(self, key: str) -> None:
        del self._raw[key]
        self._floats = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __repr__(self) -> str:
        return f"LoggedTerms({self.floats()!r})"
