"""The process a run lives in: the torch device, seeds / determinism / cuDNN autotuning, the environment record
saved beside every run, torchrun's process group (and local-rank-0-first for shared files), and the signal
handling that stops training at a step boundary (:class:`TrainingInterrupted`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmemd.engine.trainer import Trainer
from cmemd.errors import ConfigError

# ---------------------------------------------------------------------- environment


def resolve_device(name: str = "auto", *, select: bool = True) -> torch.device:
    """The torch device ``run.device`` names (``auto``: CUDA when available). A ``cuda:N`` is checked against
    the GPUs present and, with ``select``, made the current CUDA device (``torch.cuda.set_device``), so that
    nothing of this process lands on GPU 0 (cuDNN/cuBLAS handles, the caching allocator, ``.cuda()`` calls)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but CUDA is not available; use run.device=cpu")
    if dev.type == "cuda" and dev.index is not None:
        count = torch.cuda.device_count()
        if dev.index >= count:
            raise ConfigError(
                f"run.device={name!r} but this machine has {count} GPU(s) (cuda:0..cuda:{count - 1}); "
                "choose one of them"
            )
        if select:
            select_device(dev)
    return dev


def select_device(device: torch.device) -> None:
    """Make a ``cuda:N`` device the current CUDA device of this process (nothing for CPU or a bare ``cuda``)."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def device_name(device: torch.device) -> str | None:
    """The GPU's name for a CUDA device (the current device for a bare ``cuda``), else None."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())


def environment(
    thread_policy: dict[str, Any] | None = None, device: torch.device | None = None, backends: Backends | None = None
) -> dict[str, Any]:
    """Versions, the git commit, the CPU thread policy (:func:`cmemd.threads.apply_thread_policy`), the GPU the
    run uses (``device``; default the current CUDA device) and the determinism / cuDNN settings (``backends``),
    saved beside every run."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    from cmemd import __version__

    return {
        "cmemd": __version__,
        "git_commit": commit,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": device_name(device if device is not None else torch.device("cuda")),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **({"thread_policy": thread_policy} if thread_policy else {}),
        **({"backends": dataclasses.asdict(backends)} if backends is not None else {}),
    }


def init_distributed(device: torch.device, timeout_minutes: float = 120.0) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun (gloo on CPU, nccl on GPU).

    ``timeout_minutes`` (``run.dist_timeout_minutes``) is how long a rank waits in a collective: the other ranks
    wait while rank 0 alone evaluates (per-epoch validation, the final evaluation, re-ranking), which can outlast
    NCCL's 10-minute default.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    return dist.get_rank(), dist.get_world_size()


@contextlib.contextmanager
def local_rank_zero_first(world: int):
    """Run the body on each machine's local rank 0 first, then on the other ranks (a barrier between), so that
    shared files (the decoded-image cache, downloaded ImageNet weights) are built once and then only read. One
    process: just runs the body."""
    if world <= 1:
        yield
        return
    import torch.distributed as dist

    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first:
        dist.barrier()
    try:
        yield
    finally:
        if first:  # also on failure: the others then try for themselves and report their own error
            dist.barrier()


class TrainingInterrupted(Exception):
    """Training stopped on a signal (SIGINT/SIGTERM) at a step boundary, every rank alike, after rank 0 saved a
    resumable checkpoint; ``signum``, ``epoch`` (0-based, in progress), ``step`` and ``checkpoint`` say where."""

    def __init__(self, signum: int, epoch: int, step: int, checkpoint: Path, rank: int = 0) -> None:
        self.signum, self.epoch, self.step, self.checkpoint, self.rank = signum, epoch, step, checkpoint, rank
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at epoch {epoch + 1} step {step}; "
            f"resumable checkpoint {checkpoint}"
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


#: A repeat of the signal within this many seconds is the same interruption (torchrun forwards the Ctrl-C the
#: terminal already delivered to every process of the group); a later one aborts at once.
REPEAT_SIGNAL_WINDOW_S = 3.0


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """While the body runs, SIGINT/SIGTERM ask ``trainer`` to stop at the next step boundary
    (:meth:`Trainer.request_stop`: a flag, nothing else happens in the handler). A second signal after
    :data:`REPEAT_SIGNAL_WINDOW_S` aborts at once (KeyboardInterrupt, or the default action of SIGTERM): safe,
    since checkpoints are written atomically, so the last complete one stays. Handlers are installed only in the
    main thread (Python's rule) and restored afterwards. DataLoader workers forked inside inherit the handler and
    keep running, so the step in progress completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}
    first: list[float] = []

    def handler(signum, frame):
        now = time.monotonic()
        if not first:
            first.append(now)
            trainer.request_stop(signum)
            return
        if now - first[0] < REPEAT_SIGNAL_WINDOW_S:
            return
        for s, h in previous.items():
            signal.signal(s, h)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.raise_signal(signum)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


#: cuBLAS workspace setting that makes cuBLAS deterministic (CUDA >= 10.2; PyTorch's reproducibility notes)
CUBLAS_DETERMINISTIC = ":4096:8"
_CUBLAS_DETERMINISTIC_VALUES = (":4096:8", ":16:8")


@dataclass
class Backends:
    """What :func:`configure_backends` set for a run: determinism and cuDNN autotuning, each with the reason,
    as the run header prints them and ``environment.json`` records them."""

    deterministic: bool
    determinism_note: str
    cudnn_benchmark: bool
    cudnn_benchmark_note: str

    def describe(self) -> str:
        return (
            f"deterministic {'on' if self.deterministic else 'off'} ({self.determinism_note}); "
            f"cuDNN autotuning {'on' if self.cudnn_benchmark else 'off'} ({self.cudnn_benchmark_note})"
        )


def cudnn_benchmark_choice(requested: bool | None, device: torch.device, deterministic: bool) -> tuple[bool, str]:
    """Whether cuDNN autotuning (``torch.backends.cudnn.benchmark``) is on for a run, and why.

    ``requested`` is ``run.cudnn_benchmark``: None (auto) turns it on for CUDA training that is not deterministic
    (fixed input sizes, so the autotuned kernels are reused every step); ``true``/``false`` force it. Autotuning
    picks kernels by timing them, so it contradicts ``run.deterministic=true``: that combination is a ConfigError.
    """
    if deterministic and requested:
        raise ConfigError(
            "run.cudnn_benchmark=true with run.deterministic=true: autotuning picks cuDNN kernels by "
            "timing them, so two runs may differ; set run.cudnn_benchmark=null (auto) or false, or "
            "run.deterministic=false"
        )
    if device.type != "cuda":
        return False, f"{device.type}: cuDNN is not used"
    if deterministic:
        return False, "run.deterministic=true"
    if requested is None:
        return True, "run.cudnn_benchmark=null: on for CUDA training that is not deterministic"
    return bool(requested), f"run.cudnn_benchmark={str(bool(requested)).lower()}"


def set_determinism(seed: int, deterministic: bool, device: torch.device | None = None) -> str:
    """Seed Python, NumPy and torch; with ``deterministic`` make torch use deterministic algorithms only (an op
    without one raises instead of warning). On CUDA this also sets ``CUBLAS_WORKSPACE_CONFIG`` (when the
    environment has no deterministic value), which cuBLAS reads when it first runs in the process: call this
    before any CUDA matrix product. Returns a note saying what was set, for the run header."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not deterministic:
        return "run.deterministic=false"
    note = "torch.use_deterministic_algorithms(True)"
    if device is not None and device.type == "cuda":
        env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if env in _CUBLAS_DETERMINISTIC_VALUES:
            note += f", CUBLAS_WORKSPACE_CONFIG={env} from the environment"
        else:
            late = torch.cuda.is_initialized()
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC
            note += f", CUBLAS_WORKSPACE_CONFIG={CUBLAS_DETERMINISTIC}" + (
                " set after CUDA had started in this process: deterministic only if no CUDA matrix product ran "
                f"before (export CUBLAS_WORKSPACE_CONFIG={CUBLAS_DETERMINISTIC} before starting Python to be sure)"
                if late
                else " set before CUDA started"
            )
        note += ", cudnn.deterministic"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    return note


def configure_backends(seed: int, deterministic: bool, cudnn_benchmark: bool | None, device: torch.device) -> Backends:
    """Seeds, determinism (:func:`set_determinism`) and cuDNN autotuning (:func:`cudnn_benchmark_choice`) for a
    run on ``device``; before the model is built (cuBLAS reads its workspace setting once)."""
    bench, bench_note = cudnn_benchmark_choice(cudnn_benchmark, device, deterministic)
    det_note = set_determinism(seed, deterministic, device)
    torch.backends.cudnn.benchmark = bench
    return Backends(deterministic, det_note, bench, bench_note)
