"""CPU thread policy for training on shared machines (measured in ``bench/threads.py``, docs/results/threads.md).

Two settings decide how a CPU run behaves when other work shares the cores:

- the OpenMP wait policy. torch's OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when torch is imported, so
  :func:`set_wait_policy` must run before that: the command line calls it at start-up. PASSIVE makes an idle
  OpenMP thread sleep instead of spinning on a core another process needs.
- the number of torch threads: :func:`apply_thread_policy` applies ``run.threads`` when given, else the default.

No torch import at module level: the CLI imports this before torch.
"""
from __future__ import annotations

import os
from typing import Any, Optional

WAIT_POLICY = "PASSIVE"
# CPU training threads when run.threads is unset. One: for the models a CPU trains here (the demo's ResNet-18 at
# width 32 on 64x32 images), a second thread bought nothing on a quiet 2-core machine and cost up to 3x beside a
# single busy process (docs/results/threads.md). Larger inputs are where more threads pay (see LARGE_INPUT).
CPU_THREADS_SMALL = 1
# Images of at least this many pixels (height x width) count as large: there the default is every core the
# process may use (with the PASSIVE wait policy, which keeps a busy machine from tripling the step time).
LARGE_INPUT = 128 * 64


def wait_policy_default() -> str:
    """The OMP_WAIT_POLICY the command line sets when the environment does not name one."""
    return WAIT_POLICY


def set_wait_policy(environ: Optional[dict] = None) -> str:
    """Set ``OMP_WAIT_POLICY`` (PASSIVE) unless it is already set; returns the value in force.

    Call before ``import torch``: the OpenMP runtime reads the variable once, at start-up. A value the user
    exported wins (``OMP_WAIT_POLICY=ACTIVE cmemd train ...``).
    """
    env = os.environ if environ is None else environ
    return env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(device_type: str = "cpu", pixels: Optional[int] = None) -> tuple[Optional[int], str]:
    """(threads or None to keep torch's own choice, reason) when ``run.threads`` is unset.

    ``pixels`` is the training input's height x width. ``OMP_NUM_THREADS`` in the environment is respected (torch
    already applied it). On CUDA the CPU only feeds the GPU: torch's default stands.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None, "OMP_NUM_THREADS from the environment"
    if device_type != "cpu":
        return None, f"torch default on {device_type}"
    if pixels is not None and pixels >= LARGE_INPUT:
        n = usable_cpus()
        return n, f"default: every usable CPU for {pixels}-pixel inputs (>= {LARGE_INPUT})"
    return CPU_THREADS_SMALL, f"default: {CPU_THREADS_SMALL} thread for small CPU models (inputs < {LARGE_INPUT} pixels)"


def apply_thread_policy(requested: Optional[int], device: Any = "cpu", pixels: Optional[int] = None) -> dict[str, Any]:
    """Set torch's thread count: ``requested`` (``run.threads``) when given, else :func:`default_threads`.

    Returns what was chosen, for the run header and environment.json: ``threads``, ``source`` (run.threads |
    default), ``reason`` and ``omp_wait_policy`` (the environment's value; None = the runtime's own default).
    """
    import torch

    device_type = getattr(device, "type", None) or str(device).split(":")[0]
    if requested:
        if requested < 1:
            from cmemd.errors import ConfigError

            raise ConfigError(f"run.threads must be >= 1 (or unset for the default), got {requested}")
        torch.set_num_threads(int(requested))
        source, reason = "run.threads", f"run.threads={requested}"
    else:
        n, reason = default_threads(device_type, pixels)
        if n is not None:
            torch.set_num_threads(n)
        source = "default"
    return {"threads": torch.get_num_threads(), "source": source, "reason": reason,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def describe(policy: dict[str, Any]) -> str:
    """One line for the run header."""
    wait = policy.get("omp_wait_policy") or "unset (OpenMP runtime default)"
    return f"{policy['threads']} CPU thread(s) ({policy['reason']}), OMP_WAIT_POLICY={wait}"


__all__ = ["WAIT_POLICY", "wait_policy_default", "set_wait_policy", "usable_cpus", "default_threads",
           "apply_thread_policy", "describe"]
