"""The signal handlers of a training run: the first SIGINT/SIGTERM only asks the trainer to stop, a repeat within
the window (torchrun forwarding the terminal's Ctrl-C) is the same interruption, a later one aborts at once, and
the previous handlers come back afterwards."""
from __future__ import annotations

import os
import signal

import pytest

import cmemd.app.runtime as runtime


class _Trainer:
    def __init__(self) -> None:
        self.asked: list[int] = []

    def request_stop(self, signum: int) -> None:
        self.asked.append(signum)


def test_first_signal_asks_repeat_is_absorbed_later_one_aborts(monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer = _Trainer()
    with runtime.stop_on_signals(trainer):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # within the window: the same interruption
        assert trainer.asked == [signal.SIGTERM]
        monkeypatch.setattr(runtime, "REPEAT_SIGNAL_WINDOW_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C later: abort now
        assert trainer.asked == [signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before
