"""Progress display: a tqdm bar on a terminal, plain log lines anywhere else.

tqdm redraws its bar with carriage returns, which a log file or a pipe keeps as one long line of redraws. When
stderr is not a terminal, :func:`progress_bar` returns a :class:`LineProgress` instead: one ``\\n``-terminated
line per update, at most one every ``CMEMD_PROGRESS_INTERVAL`` seconds (default 30; 0 prints every update).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any

DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CMEMD_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """The part of tqdm's interface cmemd uses (iterate, update, set_postfix, close, ``with``), printed as plain
    lines."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str | None = None,
        initial: int = 0,
        unit: str = "it",
        disable: bool = False,
        interval: float | None = None,
        file: Any = None,
    ) -> None:
        self.iterable, self.desc, self.unit, self.disable = iterable, desc or "", unit, disable
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.interval = _interval() if interval is None else interval
        self.file = file
        self.postfix = ""
        self.start = self.last = time.time()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if not self.disable and now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        done = self.n - self.initial
        rate = f", {done / elapsed:.2f} {self.unit}/s" if elapsed > 0 and done else ""
        of = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        stream = self.file or sys.stderr
        print(
            f"{self.desc + ': ' if self.desc else ''}{self.n}{of} {self.unit} in {elapsed:.0f} s{rate}{post}",
            file=stream,
            flush=True,
        )

    def close(self) -> None:
        pass


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    initial: int = 0,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
) -> Any:
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress` (no carriage returns in logs)."""
    if not disable and _is_terminal(sys.stderr):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, initial=initial, unit=unit, disable=disable)


__all__ = ["progress_bar", "LineProgress"]
