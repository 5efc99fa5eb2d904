"""CPU thread policy for training on shared machines (measured in ``bench/threads.py``, docs/results/threads.md).

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
from typing import Any, Optional

WAIT_POLICY = "PASSIVE"
# The thread count stays torch's own (one per core) unless run.threads says otherwise. Measured on a shared 2-core
# machine (docs/results/threads.md): with PASSIVE, a second thread no longer spins against a busy core, and two
# threads were as fast as one on the demo model when the machine was otherwise busy with other jobs and clearly faster
# beside a competing process; with the OpenMP default (spinning) two threads were 10-15x slower beside one.


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


def default_reason(device_type: str = "cpu") -> str:
    """Why the thread count in force stays when ``run.threads`` is unset: torch's own count (one per core, or
    ``OMP_NUM_THREADS`` when exported) is kept, since with the PASSIVE wait policy extra threads cost nothing when
    the cores are busy."""
    if os.environ.get("OMP_NUM_THREADS"):
        return "OMP_NUM_THREADS from the environment"
    if device_type != "cpu":
        return f"torch default on {device_type}"
    return "default: torch's thread count (one per core)"


def apply_thread_policy(requested: Optional[int], device: Any = "cpu") -> dict[str, Any]:
    """Set torch's thread count to ``requested`` (``run.threads``) when given, else keep the count in force.

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
        source, reason = "default", default_reason(device_type)
    return {"threads": torch.get_num_threads(), "source": source, "reason": reason,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def describe(policy: dict[str, Any]) -> str:
    """One line for the run header."""
    wait = policy.get("omp_wait_policy") or "unset (OpenMP runtime default)"
    return f"{policy['threads']} CPU thread(s) ({policy['reason']}), OMP_WAIT_POLICY={wait}"


__all__ = ["WAIT_POLICY", "wait_policy_default", "set_wait_policy", "default_reason",
           "apply_thread_policy", "describe"]
