"""Count the host-device synchronisations a piece of PyTorch code would make on an accelerator.

A CUDA stream runs ahead of the Python thread until something needs a value on the host: a
tensor turned into a Python number (``.item()``, ``float()``, ``int()``, ``bool()``, ``if t:``,
an f-string), a tensor turned into a list or an array (``.tolist()``, ``.numpy()``), an op whose
OUTPUT SHAPE depends on the data (``nonzero``, ``unique``, boolean-mask indexing, ``bincount``,
``repeat_interleave`` without ``output_size``), a comparison returning a Python bool
(``torch.equal``, ``torch.allclose``), or a blocking copy (``.to(device)`` / ``.cpu()`` without
``non_blocking=True``, ``torch.tensor(data, device=...)``). Each one drains the stream.

:func:`count_host_syncs` counts those calls with a :class:`torch.overrides.TorchFunctionMode`, so
it works on the CPU too, where none of them is a real synchronisation: it counts what WOULD
synchronise on a GPU. Two conventions follow from running on the CPU:

* A copy is counted when it names a device and is blocking, even when (as on the CPU) source and
  destination are the same device: on a CPU-only run the mode cannot tell a no-op from a transfer,
  so it counts conservatively; code that is already on the right device should not call ``.to``.
  torch's own same-device ``.to`` calls (device-generic library code, e.g. ``clip_grad_norm_``'s
  per-device norms) are no-ops on any device and are not counted.
* ``torch.optim``'s own calls are not counted: the optimisers keep their step counters on the host
  (``capturable=False``, the default) and read them with ``.item()``, which never waits for the
  device (pass ``ignore=()`` to count them too).

Usage::

    with count_host_syncs() as syncs:
        trainer.forward_backward(batch)
    syncs.total, syncs.by_kind  # 1, Counter({"scalar": 1}): the trainer's non-finite check
    syncs.by_site               # Counter({("scalar", "__bool__", "trainer.py:144"): 1}); syncs.table() prints it

The mode intercepts every torch call inside the block (a few microseconds each): use it in tests
and benchmarks, not in a training run.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["SYNC_KINDS", "HostSyncs", "count_host_syncs"]

#: Every kind :func:`count_host_syncs` reports.
SYNC_KINDS = (
    "item",
    "scalar",
    "tolist",
    "numpy",
    "compare",
    "nonzero",
    "unique",
    "mask_index",
    "dynamic_shape",
    "copy",
)

_TB = torch._C.TensorBase
_SIMPLE: dict[Any, str] = {
    _TB.item: "item",
    _TB.__float__: "scalar",
    _TB.__int__: "scalar",
    _TB.__bool__: "scalar",
    _TB.__index__: "scalar",
    _TB.__complex__: "scalar",
    torch.Tensor.__format__: "scalar",
    _TB.tolist: "tolist",
    _TB.numpy: "numpy",
    torch.Tensor.__array__: "numpy",
    torch.equal: "compare",
    torch.allclose: "compare",
    _TB.equal: "compare",
    _TB.allclose: "compare",
    torch.nonzero: "nonzero",
    _TB.nonzero: "nonzero",
    torch.argwhere: "nonzero",
    _TB.argwhere: "nonzero",
    torch.masked_select: "nonzero",
    _TB.masked_select: "nonzero",
    torch.unique: "unique",
    torch.Tensor.unique: "unique",
    torch.unique_consecutive: "unique",
    torch.Tensor.unique_consecutive: "unique",
    torch._unique2: "unique",
    torch.bincount: "dynamic_shape",
    _TB.bincount: "dynamic_shape",
}
_GETITEM = (_TB.__getitem__, _TB.__setitem__, _TB.index_put, _TB.index_put_, torch.index_put)
_REPEAT = (torch.repeat_interleave, _TB.repeat_interleave)
_WHERE = (torch.where, _TB.where)
_TO = (_TB.to, _TB.cpu, _TB.cuda, _TB.copy_)
_FACTORIES = (torch.tensor, torch.as_tensor)


@dataclass
class HostSyncs:
    """What :func:`count_host_syncs` counted: ``total``, ``by_kind`` (kind -> calls) and ``by_site``
    (``(kind, op, "file.py:line")`` -> calls, the line being the innermost caller outside torch)."""

    by_kind: Counter = field(default_factory=Counter)
    by_site: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def table(self) -> str:
        """One line per call site, most frequent first."""
        return "\n".join(f"{n:4d}  {kind:<13} {op:<22} {site}" for (kind, op, site), n in self.by_site.most_common())


def _has_bool_index(index: Any) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items if i is not None)


def _device_arg(args: tuple, kwargs: dict) -> torch.device | None:
    """The device a ``Tensor.to(...)`` call names, if any."""
    if "device" in kwargs and kwargs["device"] is not None:
        return torch.device(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            return torch.device(a)
        if isinstance(a, torch.Tensor):  # .to(other): other's device
            return a.device
    return None


def _kind(func: Any, args: tuple, kwargs: dict) -> str | None:
    kind = _SIMPLE.get(func)
    if kind is not None:
        return kind
    if func in _GETITEM:
        index = args[1] if len(args) > 1 else kwargs.get("indices")
        return "mask_index" if _has_bool_index(index) else None
    if func in _REPEAT:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        tensor_repeats = isinstance(repeats, torch.Tensor) or (isinstance(args[0], torch.Tensor) and len(args) == 1)
        return "dynamic_shape" if tensor_repeats and kwargs.get("output_size") is None else None
    if func in _WHERE:  # where(cond) with one argument is nonzero
        return "nonzero" if len(args) + len(kwargs) == 1 else None
    if func in _TO:
        if kwargs.get("non_blocking") or (func is _TB.copy_ and len(args) > 2 and args[2]):
            return None
        if func is _TB.to and _device_arg(args, kwargs) == args[0].device and _torch_caller():
            return None  # torch's own device-generic code: a no-op on any device
        if func is _TB.copy_:
            src, dst = args[1], args[0]
            return "copy" if isinstance(src, torch.Tensor) and src.device != dst.device else None
        if func in (_TB.cpu, _TB.cuda):
            return "copy"
        if len(args) > 1 and isinstance(args[-1], bool) and args[-1] and isinstance(args[1], (str, torch.device)):
            return None  # .to(device, dtype, non_blocking=True) written positionally
        return "copy" if _device_arg(args, kwargs) is not None else None
    if func in _FACTORIES:
        return "copy" if kwargs.get("device") is not None else None
    return None


def _torch_caller() -> bool:
    """Whether the torch call was made by torch's own Python code."""
    f: FrameType | None = sys._getframe(3)
    while f is not None and f.f_globals.get("__name__", "") in (__name__, "torch.overrides"):
        f = f.f_back
    module = f.f_globals.get("__name__", "") if f is not None else ""
    return module == "torch" or module.startswith("torch.")


def _caller(ignore: tuple[str, ...]) -> str | None:
    """``file.py:line`` of the innermost frame outside torch and this module, or None when the torch code
    between it and the op runs inside one of the ``ignore`` modules."""
    f: FrameType | None = sys._getframe(2)
    while f is not None:
        module = f.f_globals.get("__name__", "")
        if module == __name__:
            pass
        elif module == "torch" or module.startswith("torch."):
            if ignore and module.startswith(ignore):
                return None
        else:
            return f"{f.f_code.co_filename.replace(chr(92), '/').rsplit('/', 1)[-1]}:{f.f_lineno}"
        f = f.f_back
    return "?"


class _SyncCountingMode(TorchFunctionMode):
    def __init__(self, record: HostSyncs, ignore: tuple[str, ...], on_sync: Callable[[str, str], None] | None) -> None:
        super().__init__()
        self.record, self.ignore, self.on_sync = record, ignore, on_sync

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func, args, kwargs)
        if kind is not None:
            site = _caller(self.ignore)
            if site is not None:
                op = getattr(func, "__name__", str(func))
                self.record.by_kind[kind] += 1
                self.record.by_site[(kind, op, site)] += 1
                if self.on_sync is not None:
                    self.on_sync(kind, op)
        return func(*args, **kwargs)


@contextmanager
def count_host_syncs(
    *, ignore: tuple[str, ...] = ("torch.optim",), on_sync: Callable[[str, str], None] | None = None
) -> Iterator[HostSyncs]:
    """Count, inside the ``with`` block, the calls that would synchronise host and device on an
    accelerator (see the module docstring for what counts); yields a :class:`HostSyncs` filled as the
    block runs.

    Args:
        ignore: module-name prefixes whose own torch calls are not counted (default: ``torch.optim``,
            whose ``.item()`` calls read host-side step counters).
        on_sync: optional ``callback(kind, op)`` at each counted call (e.g. to raise in a test that
            wants a traceback of the first synchronisation).
    """
    record = HostSyncs()
    with _SyncCountingMode(record, tuple(ignore), on_sync):
        yield record
