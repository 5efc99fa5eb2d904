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
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from cmemd.engine.checkpoint import load_checkpoint, save_checkpoint
from cmemd.engine.schedule import lr_factor, set_lr
from cmemd.engine.terms import LoggedTerms, raw_terms, to_floats, wide_dtype
from cmemd.errors import CheckpointError, TrainingError

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
AMP_MODES = ("none", *AMP_DTYPES)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        grad_clip: Optional[float] = None,
        channels_last: bool = False,
        warmup_epochs: float = 0,
        milestones: tuple[int, ...] | list[int] = (),
        gamma: float = 0.1,
        log_every: int = 20,
        checkpoint_every_steps: int = 0,
        max_minutes: Optional[float] = None,
        extra_state: Optional[dict] = None,
        rank: int = 0,
        progress: bool = True,
        on_epoch_end: Optional[Callable[["Trainer", int], None]] = None,
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
        self.last_checkpoint: Optional[Path] = None
        # the batch layout goes only to a model / objective that takes it (a plain model(images, modalities) works)
        self._layout_to_model = _takes_layout(unwrap(model))
        self._layout_to_objective = _takes_layout(objective)

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
        autocast = (torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp]) if self.amp != "none" else nullcontext())
        with autocast:
            out = self.model(images, modalities, **model_kw)
        # Losses run in float32: the OT costs and variance ratios lose too much in half precision.
        total, terms = self.objective(_to_float(out), pids, modalities, **objective_kw)
        if not isinstance(terms, LoggedTerms):
            terms = LoggedTerms(terms)
        if not torch.isfinite(total):  # the step's one synchronisation (see the docstring)
            bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingError(
                f"non-finite loss at epoch {self.epoch} step {self.step} (terms {bad or terms}){where}. "
                "Lower the learning rate, enable optim.grad_clip, or check the input images."
            )
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
        sampler_state = sampler.state_dict(batches_done=done) if epoch == sampler.epoch else {
            **sampler.state_dict(batches_done=0), "epoch": epoch, "start_batch": 0}
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

    def save(self, name: str = "last.pt") -> Optional[Path]:
        if self.rank != 0:
            return None
        self.last_checkpoint = save_checkpoint(self.state_dict(), self.out_dir / name)
        return self.last_checkpoint

    def resume(self, path: str | Path) -> Path:
        """Restore everything a checkpoint holds; the run continues as if never stopped."""
        state, used = load_checkpoint(path, map_location=self.device)
        try:
            unwrap(self.model).load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{used}: the checkpoint does not fit this model ({str(e).splitlines()[0]}); "
                                  "resume with the same configuration it was trained with") from None
        _load_optimizer(self.optimizer, state.get("optimizer"), used)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loader.batch_sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.epoch, self.batches_done, self.step = int(state["epoch"]), int(state["batches_done"]), int(state["step"])
        self.extra_state.update({k: v for k, v in state.items() if k.startswith("best_")})  # model-selection memory
        self.last_checkpoint = used
        if self.rank == 0:
            _truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
        return used

    # ------------------------------------------------------------------ loop
    def _log(self, record: dict) -> None:
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
        """Run (or continue) training up to ``epochs``; returns the per-epoch summaries."""
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
            bar = progress_bar(total=steps_per_epoch, initial=self.batches_done, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                               unit="steps", disable=not self.progress or self.rank != 0, leave=False)
            for batch in self.loader:
                set_lr(self.optimizer, lr_factor(self.epoch + self.batches_done / steps_per_epoch,
                                                 warmup_epochs=self.warmup_epochs, milestones=self.milestones, gamma=self.gamma))
                terms = self.forward_backward(batch)
                self.batches_done += 1
                self.step += 1
                n += 1
                images_seen += int(batch.images.shape[0])
                _accumulate(sums, terms)  # on the device: the terms are read at logging steps only
                rate = images_seen / max(time.time() - t0, 1e-9)
                bar.update(1)
                if self.step % self.log_every == 0:
                    bar.set_postfix(loss=f"{terms['loss']:.3f}", img_s=f"{rate:.0f}")
                    self._log({"kind": "step", "epoch": self.epoch, "step": self.step,
                               "lr": self.optimizer.param_groups[-1]["lr"], **terms, "img_per_s": rate})
                if self.checkpoint_every_steps and self.step % self.checkpoint_every_steps == 0 \
                        and self.batches_done < steps_per_epoch:
                    self.save()
            bar.close()
            summary = {"kind": "epoch", "epoch": self.epoch, "step": self.step,
                       **{k: v / max(n, 1) for k, v in to_floats(sums).items()},
                       "img_per_s": images_seen / max(time.time() - t0, 1e-9), "seconds": time.time() - t0}
            self.history.append(summary)
            self._log(summary)
            if self.rank == 0 and self.progress:
                # feature-health terms (norm_/dead_/zero_*) on a line of their own, so the loss terms stay readable
                health = ("norm_", "dead_", "zero_")
                shown = " ".join(f"{k}={v:.3f}" for k, v in summary.items()
                                 if k not in ("kind", "epoch", "step") and not k.startswith(health))
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
            if self.max_minutes is not None and (time.time() - started) / 60 > self.max_minutes and self.epoch < self.epochs:
                print(f"stopping after epoch {self.epoch}: the {self.max_minutes:g}-minute budget is spent "
                      f"(resume with --resume to continue)", flush=True)
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
        raise CheckpointError(f"{used}: the checkpoint's optimizer state is for another optimizer "
                              f"({type(optimizer).__name__} now); {fix}")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{used}: the optimizer state does not fit ({type(e).__name__}: {e}); {fix}") from None


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)
