"""CPU thread policy for training on shared machines (docs/architecture.md, CPU threads).

Two settings decide how a CPU run behaves when other work shares the cores:

- the OpenMP wait policy. torch's OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when torch is imported, so
  :func:`set_wait_policy` must run before that: the command line calls it at start-up. PASSIVE makes an idle
  OpenMP thread sleep instead of spinning on a core another process needs.
- the number of torch threads: :func:`apply_thread_policy` applies ``run.threads`` when given, else keeps torch's
  own count (one per core).

No torch import at module level: the CLI imports this before torch.
"""

from __future__ import annotations

import os
from typing import Any

WAIT_POLICY = "PASSIVE"
# Below this many input pixels (128x64) a CPU run uses one thread unless run.threads says otherwise: on small inputs
# a second thread costs more in synchronisation than it saves, above all beside other work. Larger inputs keep
# torch's own count (one per core): per-op work grows with the image and a second thread pays for itself. Why this
# threshold: docs/architecture.md, CPU threads.
SMALL_INPUT_PIXELS = 128 * 64


def wait_policy_default() -> str:
    """The OMP_WAIT_POLICY the command line sets when the environment does not name one."""
    return WAIT_POLICY


def set_wait_policy(environ: dict | None = None) -> str:
    """Set ``OMP_WAIT_POLICY`` (PASSIVE) unless it is already set; returns the value in force.

    Call before ``import torch``: the OpenMP runtime reads the variable once, at start-up. A value the user
    exported wins (``OMP_WAIT_POLICY=ACTIVE cmemd train ...``).
    """
    env = os.environ if environ is None else environ
    return env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def default_reason(device_type: str = "cpu") -> str:
    """Why the thread count in force stays when ``run.threads`` is unset: torch's own count (one per core, or
    ``OMP_NUM_THREADS`` when exported) is kept, since with the PASSIVE wait policy extra threads cost nothing when
    the cores are busy."""
    if os.environ.get("OMP_NUM_THREADS"):
        return "OMP_NUM_THREADS from the environment"
    if device_type != "cpu":
        return f"torch default on {device_type}"
    return "default: torch's thread count (one per core)"


def apply_thread_policy(
    requested: int | None, device: Any = "cpu", input_size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Set torch's thread count to ``requested`` (``run.threads``) when given; else, on CPU, one thread for inputs
    (``input_size`` = height, width) under 128x64 pixels unless ``OMP_NUM_THREADS`` is exported; else keep the
    count in force.

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
    elif (
        device_type == "cpu"
        and input_size is not None
        and input_size[0] * input_size[1] < SMALL_INPUT_PIXELS
        and not os.environ.get("OMP_NUM_THREADS")
    ):
        torch.set_num_threads(1)
        source, reason = (
            "default",
            (f"default: one thread for {input_size[0]}x{input_size[1]} inputs (under 128x64; docs/architecture.md)"),
        )
    else:
        source, reason = "default", default_reason(device_type)
    return {
        "threads": torch.get_num_threads(),
        "source": source,
        "reason": reason,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def describe(policy: dict[str, Any]) -> str:
    """One line for the run header."""
    wait = policy.get("omp_wait_policy") or "unset (OpenMP runtime default)"
    return f"{policy['threads']} CPU thread(s) ({policy['reason']}), OMP_WAIT_POLICY={wait}"


__all__ = [
    "WAIT_POLICY",
    "SMALL_INPUT_PIXELS",
    "wait_policy_default",
    "set_wait_policy",
    "default_reason",
    "apply_thread_policy",
    "describe",
]
