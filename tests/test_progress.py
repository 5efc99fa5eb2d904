"""Progress output: a terminal gets tqdm, a file or a pipe gets one plain line per update (no carriage returns)."""
from __future__ import annotations

import io

from cmemd.progress import LineProgress, progress_bar


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("CMEMD_PROGRESS_INTERVAL", "0")
    err = _Stream(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    bar = progress_bar(total=3, desc="epoch 1/2", unit="steps")
    assert isinstance(bar, LineProgress)
    for i in range(3):
        bar.set_postfix(loss=f"{1.5 - i:.3f}")
        bar.update(1)
    bar.close()
    text = err.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(" steps")[0] for line in lines] == ["epoch 1/2: 1/3 (33%)", "epoch 1/2: 2/3 (67%)",
                                                        "epoch 1/2: 3/3 (100%)"]
    assert lines[-1].endswith("loss=-0.500") and text.endswith("\n")


def test_interval_limits_the_lines(monkeypatch):
    monkeypatch.setenv("CMEMD_PROGRESS_INTERVAL", "3600")
    err = _Stream(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    assert list(progress_bar(range(50), desc="x")) == list(range(50))  # iterating yields every item
    assert err.getvalue() == ""  # no line before the interval has passed
    assert progress_bar(range(5), disable=True).disable


def test_terminal_gets_tqdm(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setattr("sys.stderr", _Stream(tty=True))
    bar = progress_bar(total=2, desc="d")
    assert isinstance(bar, tqdm)
    bar.close()
