"""The training loop: one ``forward_backward`` per batch, checkpoints, resume, logging.

The loop is deliberately small. ``Trainer.forward_backward`` is the hook to override for a new
method (torchreid's engine shape); everything else (schedule, AMP, clipping, checkpoints,
logs) stays as it is.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cmemd.engine.checkpoint import load_checkpoint, save_checkpoint
from cmemd.engine.schedule import lr_factor, set_lr
from cmemd.engine.terms import LoggedTerms, raw_terms, to_floats, wide_dtype
from cmemd.errors import CheckpointError, TrainingError
from cmemd.folders import write_atomic

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
AMP_MODES = ("none", *AMP_DTYPES)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain numbers only (a checkpoint loads with ``weights_only=True``)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.asarray(key, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (also the numpy-array form of older checkpoints), always from CPU
    copies: a state loaded onto a GPU is not a valid RNG state. CUDA states are restored for the GPUs that
    are visible; a warning says when the checkpoint holds more (see :func:`_set_cuda_rng_states`)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(_numpy_rng_state(state["numpy"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    _set_cuda_rng_states(state.get("cuda"))


def _numpy_rng_state(saved: Any) -> tuple:
    """``np.random.set_state``'s tuple from the saved form: a dict with a tensor key, or (older checkpoints)
    numpy's own tuple with a uint32 array."""
    if isinstance(saved, dict):
        key = saved["key"].cpu().numpy().astype(np.uint32)
        return (saved["kind"], key, int(saved["pos"]), int(saved["has_gauss"]), float(saved["gauss"]))
    kind, key, pos, has_gauss, gauss = saved
    return (kind, np.asarray(key, np.uint32), int(pos), int(has_gauss), float(gauss))


def _set_cuda_rng_states(states: list | None) -> None:
    """Restore the saved CUDA RNG states of the GPUs that exist now; warn about any that cannot be.

    A run saves the state of every visible GPU; resumed with fewer GPUs (or on CPU), the states of the
    missing ones are skipped, so whatever is drawn on those GPUs differs from an
    uninterrupted run. ``torch.cuda.set_rng_state_all`` would raise IndexError instead.
    """
    if not states:
        return
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, state in enumerate(states[:visible]):
        torch.cuda.set_rng_state(state.cpu(), index)
    if len(states) > visible:
        warnings.warn(
            f"the checkpoint holds the CUDA RNG states of {len(states)} GPU(s) but {visible} are visible: "
            f"restored {min(visible, len(states))}; the random streams of the others start afresh, so "
            "the resumed run is not bit-identical to an uninterrupted one",
            stacklevel=3,
        )


class Trainer:
    """Trains ``model`` with ``objective`` on batches from ``loader``.

    Args:
        model: returns a named output in train mode (``model(images, modalities)``); may be DDP-wrapped.
        objective: ``objective(output, pids, modalities) -> (total loss, {term: value})``; the values may be
            0-d tensors (read at logging steps only). Model and objective that take a ``layout`` keyword get
            the batch's :class:`cmemd.layout.BatchLayout` (when the batch has one), on the device.
        optimizer: its groups carry ``initial_lr``; the schedule scales them every step.
        loader: a DataLoader (``cmemd.data.build_train_loader``) yielding :class:`cmemd.data.dataset.Batch`
            (read by name: ``images``, ``pids``, ``modalities``) whose ``batch_sampler`` has
            ``set_epoch``/``state_dict``/``load_state_dict``/``epoch``/``num_batches``.
        epochs: total epochs of the run.
        out_dir: run directory (``last.pt``, ``metrics.jsonl``); only rank 0 writes.
        amp: ``"none" | "fp16" | "bf16"`` (fp16 only on CUDA, with a grad scaler).
        checkpoint_every_steps: also checkpoint inside an epoch every N steps (0: epoch ends only).
        extra_state: saved in every checkpoint (e.g. the resolved config, the label count).
        on_epoch_end: ``callback(trainer, epoch)`` after each epoch's checkpoint (e.g. evaluation).

    Several processes (DDP): every stop is decided once and followed by every rank, so no rank is left
    waiting in a collective. A non-finite loss on any rank stops all of them before the update
    (:meth:`check_loss`, the one small all_reduce of a step, which also carries stop requests); the
    ``max_minutes`` budget is rank 0's clock, broadcast at the end of each epoch; a stop asked for with
    :meth:`request_stop` (a signal handler) on any rank stops every rank after the same step, rank 0 saves a
    resumable checkpoint and :attr:`interrupted` holds the signal number. Logged loss terms are the means
    over the ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Callable,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        *,
        epochs: int,
        out_dir: str | Path,
        device: str | torch.device = "cpu",
        amp: str = "none",
        grad_clip: float | None = None,
        channels_last: bool = False,
        warmup_epochs: float = 0,
        milestones: tuple[int, ...] | list[int] = (),
        gamma: float = 0.1,
        log_every: int = 20,
        checkpoint_every_steps: int = 0,
        max_minutes: float | None = None,
        extra_state: dict | None = None,
        rank: int = 0,
        progress: bool = True,
        on_epoch_end: Callable[[Trainer, int], None] | None = None,
    ) -> None:
        self.model, self.objective, self.optimizer, self.loader = model, objective, optimizer, loader
        self.epochs, self.out_dir = int(epochs), Path(out_dir)
        self.device = torch.device(device)
        if amp not in ("none", *AMP_DTYPES):
            raise TrainingError(f"amp must be 'none', 'fp16' or 'bf16', got {amp!r}")
        if amp == "fp16" and self.device.type != "cuda":
            raise TrainingError("amp='fp16' needs a CUDA device; use amp='bf16' on CPU or amp='none'")
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.grad_clip, self.channels_last = grad_clip, channels_last
        self.warmup_epochs, self.milestones, self.gamma = warmup_epochs, list(milestones), gamma
        self.log_every, self.checkpoint_every_steps = max(1, log_every), checkpoint_every_steps
        self.max_minutes, self.extra_state = max_minutes, dict(extra_state or {})
        self.rank, self.progress, self.on_epoch_end = rank, progress, on_epoch_end
        self.epoch = 0  # the epoch in progress (or the next one to run)
        self.batches_done = 0  # batches of self.epoch already trained on
        self.step = 0  # optimiser steps in the whole run
        self.history: list[dict] = []
        self.last_checkpoint: Path | None = None
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.interrupted: int | None = None  # the signal number that stopped fit() early (None: not stopped)
        self._stop_requested: int | None = None  # set by request_stop (on this rank)
        self._stop_agreed: int | None = None  # a stop every rank has agreed on (DDP)
        self._voted_at = -1  # the step whose check_loss vote ran (DDP)
        # the batch layout goes only to a model / objective that takes it (a plain model(images, modalities) works)
        self._layout_to_model = _takes_layout(unwrap(model))
        self._layout_to_objective = _takes_layout(objective)

    # ------------------------------------------------------------------ stopping
    def request_stop(self, signum: int) -> None:
        """Ask the loop to stop at the next step boundary and save a resumable checkpoint (``signum``: the signal
        that asked, kept in :attr:`interrupted`). Only sets a flag, so a signal handler may call it."""
        if self._stop_requested is None:
            self._stop_requested = int(signum)

    def check_loss(self, total: torch.Tensor, terms: Mapping[str, float]) -> None:
        """Raise :class:`TrainingError` when the loss is non-finite (on any rank: all ranks raise together, before
        any rank starts the backward pass whose gradient reduction the others would wait on forever).

        With several processes this is one all_reduce (max) of a 2-element tensor per step: the non-finite flag
        and this rank's stop request (the signal number), so a stop asked for on one rank reaches every rank
        without a collective of its own; reading it back is the one host synchronisation the single-process
        check (``torch.isfinite``) costs anyway. An override of :meth:`forward_backward` should call it.
        """
        if self.world > 1:
            flags = torch.stack(
                [
                    (~torch.isfinite(total.detach())).to(torch.float32).reshape(()),
                    torch.tensor(float(self._stop_requested or 0), device=total.device),
                ]
            )
            if dist.get_backend() != "nccl":
                flags = flags.cpu()
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            bad_any, stop = flags.tolist()
            self._voted_at = self.step
            if stop:
                self._stop_agreed = int(stop)
            if not bad_any:
                return
            here = not math.isfinite(float(total))
        elif torch.isfinite(total):
            return
        else:
            here = True
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
        who = (
            ""
            if self.world == 1
            else (
                f" on rank {self.rank}"
                if here
                else f" on another rank (every rank stops; rank {self.rank}'s loss was finite)"
            )
        )
        raise TrainingError(
            f"non-finite loss at epoch {self.epoch} step {self.step}{who} (terms {bad or terms}){where}. "
            "Lower the learning rate, enable optim.grad_clip, or check the input images."
        )

    def _stop_after_step(self) -> int | None:
        """The signal number of a stop every rank takes after this step (None: go on)."""
        if self.world == 1:
            return self._stop_requested
        if self._voted_at != self.step - 1:  # forward_backward was overridden without check_loss: vote here
            self._vote_stop()
        return self._stop_agreed

    def _vote_stop(self, time_is_up: bool = False) -> bool:
        """One all_reduce (max) of [rank 0's time-budget decision, this rank's stop request]: sets the agreed stop;
        returns whether rank 0's budget is spent (the other ranks' clocks do not vote)."""
        if self.world == 1:
            self._stop_agreed = self._stop_requested
            return time_is_up
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flags = torch.tensor([float(time_is_up and self.rank == 0), float(self._stop_requested or 0)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        up, stop = flags.tolist()
        if stop:
            self._stop_agreed = int(stop)
        return bool(up)

    def _mean_over_ranks(self, terms: Mapping[str, float]) -> Mapping[str, float]:
        """``terms`` averaged over the ranks (one all_reduce; every rank logs the same keys)."""
        if self.world == 1 or not terms:
            return terms
        keys = sorted(terms)
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([float(terms[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, (t / self.world).tolist()))

    # ------------------------------------------------------------------ hook
    def forward_backward(self, batch: Any) -> LoggedTerms:
        """One optimisation step on one batch; returns the logged loss terms (a mapping read as floats, all
        at once on first access: see :class:`cmemd.engine.terms.LoggedTerms`).

        A non-finite loss stops training with :class:`TrainingError` before any update, so the
        last checkpoint stays the last good state. That check is the step's one host-device
        synchronisation: the host waits for the forward pass before it queues the backward. With the
        batch's layout (the training loader's batches carry one) nothing else in the step reads the
        device, and the terms stay on it until a logging step reads them.
        """
        images, pids, modalities = batch.images, batch.pids, batch.modalities
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids, modalities = pids.to(self.device, non_blocking=True), modalities.to(self.device, non_blocking=True)
        layout = getattr(batch, "layout", None)
        layout = layout.to(self.device) if layout is not None else None
        model_kw = {"layout": layout} if layout is not None and self._layout_to_model else {}
        objective_kw = {"layout": layout} if layout is not None and self._layout_to_objective else {}
        autocast = torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp]) if self.amp != "none" else nullcontext()
        with autocast:
            out = self.model(images, modalities, **model_kw)
        # Losses run in float32: the OT costs and variance ratios lose too much in half precision.
        total, terms = self.objective(_to_float(out), pids, modalities, **objective_kw)
        if not isinstance(terms, LoggedTerms):
            terms = LoggedTerms(terms)
        self.check_loss(total, terms)  # the step's one synchronisation (see the docstring)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if self.grad_clip:
            terms["grad_norm"] = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return terms

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        sampler = self.loader.batch_sampler
        if self.batches_done >= _epoch_length(sampler):
            epoch, done = self.epoch + 1, 0
        else:
            epoch, done = self.epoch, self.batches_done
        sampler_state = (
            sampler.state_dict(batches_done=done)
            if epoch == sampler.epoch
            else {**sampler.state_dict(batches_done=0), "epoch": epoch, "start_batch": 0}
        )
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": sampler_state,
            "rng": rng_state(),
            "epoch": epoch,
            "batches_done": done,
            "step": self.step,
            "epochs": self.epochs,
            **self.extra_state,
        }

    def save(self, name: str = "last.pt") -> Path | None:
        if self.rank != 0:
            return None
        self.last_checkpoint = save_checkpoint(self.state_dict(), self.out_dir / name)
        return self.last_checkpoint

    def resume(self, path: str | Path) -> Path:
        """Restore everything a checkpoint holds; the run continues as if never stopped."""
        # On the CPU whatever the device: the RNG states must stay CPU ByteTensors (torch.set_rng_state refuses
        # a CUDA tensor); load_state_dict copies the weights and the optimiser state to their parameters' device.
        state, used = load_checkpoint(path, map_location="cpu")
        try:
            unwrap(self.model).load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(
                f"{used}: the checkpoint does not fit this model ({str(e).splitlines()[0]}); "
                "resume with the same configuration it was trained with"
            ) from None
        _load_optimizer(self.optimizer, state.get("optimizer"), used)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loader.batch_sampler.load_state_dict(state["sampler"])
        try:
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(
                f"{used}: the checkpoint's RNG state is unusable ({type(e).__name__}: {e}); "
                "resume from a checkpoint written by `cmemd train`"
            ) from None
        self.epoch, self.batches_done, self.step = int(state["epoch"]), int(state["batches_done"]), int(state["step"])
        self.extra_state.update({k: v for k, v in state.items() if k.startswith("best_")})  # model-selection memory
        self.last_checkpoint = used
        if self.rank == 0 and used != Path(path) and Path(path).exists():
            _move_aside(Path(path), used)
        if self.rank == 0:
            _truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
        return used

    # ------------------------------------------------------------------ loop
    def log(self, record: dict) -> None:
        """Append ``record`` (a JSON-able dict with ``kind``, ``epoch``, ``step`` and numbers) to ``metrics.jsonl``
        and, when tensorboard is installed, its numbers as scalars ``<kind>/<key>``; on rank 0 only (the other ranks
        write nothing). Epoch hooks log their 'val' / 'diag' lines through it."""
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            kind = record.get("kind", "step")
            for k, v in record.items():
                if k not in ("kind", "epoch", "step") and isinstance(v, (int, float)):
                    writer.add_scalar(f"{kind}/{k}", v, record.get("step", 0))
            writer.flush()

    def _tensorboard(self):
        """A SummaryWriter on ``out_dir/tensorboard`` when the tensorboard package is installed, else None."""
        if not hasattr(self, "_tb"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: metrics.jsonl always has the same numbers
                self._tb = None
            else:
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._tb

    def fit(self) -> list[dict]:
        """Run (or continue) training up to ``epochs``; returns the per-epoch summaries.

        Stops early (every rank alike) when the ``max_minutes`` budget is spent at an epoch's end, or after the
        step during which :meth:`request_stop` was called: then a resumable checkpoint is saved (mid-epoch when
        the stop falls inside an epoch) and :attr:`interrupted` is the signal number.
        """
        from cmemd.progress import progress_bar

        self.model.train()
        started = time.time()
        sampler = self.loader.batch_sampler
        # the full epoch length: after a mid-epoch resume len(sampler) is only the batches left
        steps_per_epoch = _epoch_length(sampler)
        while self.epoch < self.epochs:
            sampler.set_epoch(self.epoch)
            if hasattr(self.loader.dataset, "set_epoch"):
                self.loader.dataset.set_epoch(self.epoch)
            sums: dict[str, float] = {}
            n, images_seen, t0 = 0, 0, time.time()
            stop: int | None = None
            bar = progress_bar(
                total=steps_per_epoch,
                initial=self.batches_done,
                desc=f"epoch {self.epoch + 1}/{self.epochs}",
                unit="steps",
                disable=not self.progress or self.rank != 0,
                leave=False,
            )
            for batch in self.loader:
                set_lr(
                    self.optimizer,
                    lr_factor(
                        self.epoch + self.batches_done / steps_per_epoch,
                        warmup_epochs=self.warmup_epochs,
                        milestones=self.milestones,
                        gamma=self.gamma,
                    ),
                )
                terms = self.forward_backward(batch)
                self.batches_done += 1
                self.step += 1
                n += 1
                images_seen += int(batch.images.shape[0])
                _accumulate(sums, terms)  # on the device: the terms are read at logging steps only
                rate = images_seen / max(time.time() - t0, 1e-9)
                bar.update(1)
                if self.step % self.log_every == 0:  # the ranks' mean: one all_reduce per logging step only
                    bar.set_postfix(loss=f"{terms['loss']:.3f}", img_s=f"{rate:.0f}")
                    self.log(
                        {
                            "kind": "step",
                            "epoch": self.epoch,
                            "step": self.step,
                            "lr": self.optimizer.param_groups[-1]["lr"],
                            **self._mean_over_ranks(terms),
                            "img_per_s": rate,
                        }
                    )
                stop = self._stop_after_step()
                if stop is not None and self.batches_done < steps_per_epoch:
                    break
                if (
                    self.checkpoint_every_steps
                    and self.step % self.checkpoint_every_steps == 0
                    and self.batches_done < steps_per_epoch
                ):
                    self.save()
            bar.close()
            if stop is not None and self.batches_done < steps_per_epoch:  # stopped inside the epoch
                self.save()
                self.interrupted = stop
                return self.history
            summary = {
                "kind": "epoch",
                "epoch": self.epoch,
                "step": self.step,
                **self._mean_over_ranks({k: v / max(n, 1) for k, v in to_floats(sums).items()}),
                "img_per_s": images_seen / max(time.time() - t0, 1e-9),
                "seconds": time.time() - t0,
            }
            self.history.append(summary)
            self.log(summary)
            if self.rank == 0 and self.progress:
                # feature-health terms (norm_/dead_/zero_*) on a line of their own, so the loss terms stay readable
                health = ("norm_", "dead_", "zero_")
                shown = " ".join(
                    f"{k}={v:.3f}"
                    for k, v in summary.items()
                    if k not in ("kind", "epoch", "step") and not k.startswith(health)
                )
                print(f"epoch {self.epoch + 1}/{self.epochs}: {shown}", flush=True)
                feats = " ".join(f"{k}={v:.3f}" for k, v in summary.items() if k.startswith(health))
                if feats:
                    print(f"  features: {feats}", flush=True)
            self.batches_done = steps_per_epoch
            self.save()
            finished = self.epoch
            self.epoch, self.batches_done = self.epoch + 1, 0
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, finished)
            # rank 0's clock decides for every rank (its clock also counts the checkpoint write and its hooks)
            spent = self.max_minutes is not None and (time.time() - started) / 60 > self.max_minutes
            spent = self._vote_stop(time_is_up=spent)
            if self._stop_agreed is not None:
                self.interrupted = self._stop_agreed
                return self.history
            if spent and self.epoch < self.epochs:
                if self.rank == 0:
                    print(
                        f"stopping after epoch {self.epoch}: the {self.max_minutes:g}-minute budget is spent "
                        f"(resume with --resume to continue)",
                        flush=True,
                    )
                break
        return self.history


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: Any, used: Path) -> None:
    """Restore the optimiser state; another optimiser (or one over other parameters) is a CheckpointError."""
    fix = "resume with the same optim.* settings the run was started with"
    if not isinstance(saved, dict) or "param_groups" not in saved:
        raise CheckpointError(f"{used}: no optimizer state in the checkpoint; {fix}")
    # a few hyper-parameter names tell the optimisers apart (SGD: momentum, dampening; Adam: betas, eps);
    # other keys come and go between torch versions
    kind = {"momentum", "dampening", "betas", "eps"}
    now = [set(g) & kind for g in optimizer.state_dict()["param_groups"]]
    then = [set(g) & kind for g in saved["param_groups"]]
    if now != then:
        raise CheckpointError(
            f"{used}: the checkpoint's optimizer state is for another optimizer ({type(optimizer).__name__} now); {fix}"
        )
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{used}: the optimizer state does not fit ({type(e).__name__}: {e}); {fix}") from None


def _move_aside(damaged: Path, used: Path) -> None:
    """Rename a damaged ``last.pt`` that resume fell back from, so that the next save (which keeps the file
    it replaces as ``last.prev.pt``) cannot put it in the place of the good checkpoint ``used``."""
    aside = damaged.with_name(f"{damaged.stem}.damaged{damaged.suffix}")
    os.replace(damaged, aside)
    warnings.warn(
        f"{damaged} is damaged: moved aside to {aside}, so that {used} stays the previous good checkpoint", stacklevel=3
    )


def _takes_layout(fn: Any) -> bool:
    """Whether ``fn`` (a module: its ``forward``) accepts a ``layout`` keyword."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "layout" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _accumulate(sums: dict[str, Any], terms: Any) -> None:
    """Add a step's terms to the epoch's sums without reading them: tensors are summed on the device in float64
    (each float32 term and each partial sum exactly as the Python float sum it replaces; float32 on MPS)."""
    for k, v in raw_terms(terms).items():
        if isinstance(v, torch.Tensor):
            v = v.detach().to(wide_dtype(v.device))
        sums[k] = sums[k] + v if k in sums else 0.0 + v


def _epoch_length(sampler: Any) -> int:
    """Batches in a whole epoch (``len`` of a resumed sampler counts only the batches still to come)."""
    return int(sampler.num_batches)


def _to_float(out: Any) -> Any:
    """Cast every floating tensor of a model output (dataclass, tensor, list) to float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    if hasattr(out, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(out, **{f: _to_float(getattr(out, f)) for f in out.__dataclass_fields__})
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue
    try:  # through a temp file + rename: a full disk leaves the log as it was, and no temp file behind
        write_atomic(path, "".join(x + "\n" for x in keep))
    except OSError as e:
        raise TrainingError(
            f"{path}: rewriting the metrics log for --resume failed ({e.strerror or e}); nothing was changed: the "
            "checkpoint and the metrics log are intact. Free disk space, then resume again"
        ) from e
