"""Config -> training: the training data of ``cfg.data``, the model and objective the config names, the checks a
resumed run passes, :func:`train` (one run) and :func:`train_all_trials` (``cmemd train --all-trials``), and the
epoch hooks (per-epoch validation selecting best.pt, modality diagnostics).

A thin composition of the library (readers, loaders, model, objective, Trainer); a user in a notebook can make the
same calls without a config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from cmemd.app.evaluate import dataset_of, evaluate_model, extraction_settings, modality_gap_of, save_results
from cmemd.app.runtime import (
    TrainingInterrupted,
    configure_backends,
    device_name,
    environment,
    init_distributed,
    local_rank_zero_first,
    resolve_device,
    select_device,
    stop_on_signals,
)
from cmemd.benchmarks.base import Benchmark
from cmemd.benchmarks.synthetic import nuisance_of
from cmemd.config import TrainConfig
from cmemd.data.records import ImageRecord
from cmemd.engine.checkpoint import load_checkpoint, previous_path
from cmemd.engine.extract import extract_features
from cmemd.engine.objective import Objective
from cmemd.engine.schedule import build_optimizer
from cmemd.engine.trainer import Trainer, unwrap
from cmemd.errors import CheckpointError, ConfigError, TrainingError
from cmemd.folders import lock_folder, write_atomic
from cmemd.models.resnet import IMAGENET_URLS, fetch_imagenet, imagenet_location

SELECTION_NOTE = "none: the model of the last epoch is reported; nothing was selected on the test set"
VAL_SELECTION_NOTE = (
    "val: best.pt is the epoch with the best mAP on the held-out val ids (thermal queries, "
    "visible gallery, trial 0); last.pt is the last epoch; the test set is never used"
)

# ---------------------------------------------------------------------- data


@dataclass
class TrainingData:
    records: list[ImageRecord]
    num_classes: int
    description: str


def training_data(cfg: TrainConfig, *, spec: Benchmark | None = None) -> TrainingData:
    """The training records of ``cfg.data`` (the dataset's registry entry ``spec`` reads them; default
    :func:`~cmemd.app.evaluate.dataset_of`)."""
    d = cfg.data
    spec = dataset_of(cfg, spec)
    held_out = cfg.run.selection == "val"
    if held_out and not spec.has_val:
        raise ConfigError(
            f"run.selection=val needs a validation split; {spec.title} has none. "
            "Use run.selection=none (the last epoch is reported)"
        )
    records = spec.train_records(d.root, trial=d.trial, hold_out_val=held_out)
    desc = f"{spec.title} {d.root}" + (f": trial {d.trial}" if spec.training_trials else "")
    if spec.has_val:
        desc += ": train ids (val ids held out for selection)" if held_out else ": train+val ids"
    check_batch_layout(cfg, records, desc)
    return TrainingData(records, len({r.pid for r in records}), desc)


def check_batch_layout(cfg: TrainConfig, records: list[ImageRecord], where: str = "the training set") -> None:
    """``data.num_ids`` / ``data.num_instances`` against the training records, before the cache, sampler and model
    are built: a K larger than every identity's image count only repeats images (and a large one fills the memory:
    a batch holds 2 * P * K images); more identities per batch than the set has cannot be drawn."""
    counts: dict[int, list[int]] = {}
    for r in records:
        counts.setdefault(r.pid, [0, 0])[r.modality == "thermal"] += 1
    usable = [min(c) for c in counts.values() if min(c) > 0]  # identities with both modalities
    d = cfg.data
    if usable and d.num_instances > max(usable):
        raise ConfigError(
            f"data.num_instances={d.num_instances}: no identity of {where} has that many images of each modality "
            f"(the most any has is {max(usable)}), so every image of a batch would be a repeat; set "
            f"data.num_instances={max(usable)} or less (the usual value is 4)"
        )
    if d.num_ids > len(usable):
        raise ConfigError(
            f"data.num_ids={d.num_ids}: {where} has only {len(usable)} identities with both visible and thermal "
            f"images, and a batch draws data.num_ids distinct ones; set data.num_ids={len(usable)} or less"
        )


def check_pretrained(cfg: TrainConfig, *, progress: bool = True) -> None:
    """Make sure ``model.pretrained`` can be read before the data cache and the model are built: a local file
    must exist; ImageNet weights are downloaded into the torch hub cache now (offline: an error naming the fix
    in seconds, not after the cache build)."""
    src, arch = cfg.model.pretrained, cfg.model.arch
    if not src:
        return
    if src in {v for urls in IMAGENET_URLS.values() for v in urls}:
        try:
            url, cached = imagenet_location(arch, src)
        except CheckpointError as e:  # e.g. imagenet-v2 for an arch that has only v1
            raise ConfigError(f"model.pretrained={src}: {e}") from None
        try:
            fetch_imagenet(arch, src, progress=progress)
        except CheckpointError as e:
            raise ConfigError(
                f"model.pretrained={src}: the {arch} ImageNet weights are not in the torch hub cache and could not be "
                f"downloaded ({e.__cause__ or e}). Offline (e.g. on a GPU cluster): copy {url} to {cached} (fetch it "
                "where there is network), or set model.pretrained=PATH to a torchvision-format .pth file you have "
                "(model.pretrained=null trains from scratch)"
            ) from None
    elif not Path(src).is_file():
        raise ConfigError(
            f"model.pretrained={src}: file not found; set model.pretrained=PATH to a torchvision-format "
            ".pth file, 'imagenet' (downloaded once into the torch hub cache) or null (from scratch)"
        )


def model_config(cfg: TrainConfig, num_classes: int):
    """The library's ModelConfig: the ``model:`` section (the same fields) and the number of classes."""
    from cmemd.models import ModelConfig

    return ModelConfig(num_classes=num_classes, **dataclasses.asdict(cfg.model))


def objective_from_config(cfg: TrainConfig) -> Objective:
    kw = dataclasses.asdict(cfg.loss)
    return Objective(**kw)


# ---------------------------------------------------------------------- training


@dataclass
class TrainOutcome:
    out_dir: Path
    checkpoint: Path
    history: list[dict]
    seconds: float
    model: Any = None  # the trained model (unwrapped from DDP)
    results: dict[str, Any] = field(default_factory=dict)
    modality_gap: Any = None  # ModalityGap of the test features, with results


# What a resumed run may change: where and how it logs, evaluates and finds its data, and how many epochs it runs
# (the warm-up + step schedule does not depend on the total, so 1 epoch + resume to 2 equals 2 in one go).
_RESUME_MAY_CHANGE = ("run.", "eval.", "data.root", "data.num_workers", "data.cache", "data.cache_dir", "optim.epochs")


def _check_resume_config(saved_path: Path, cfg: TrainConfig) -> None:
    """Refuse to continue a run under different training settings (a silent mix of two configs)."""
    import yaml

    saved, new = yaml.safe_load(saved_path.read_text()) or {}, cfg.to_dict()
    defaults = TrainConfig().to_dict()  # a key newer than the run's record had its default's behaviour then
    changes = []
    for section in sorted(set(saved) | set(new)):
        old_s, new_s = saved.get(section) or {}, new.get(section) or {}
        for key in sorted(set(old_s) | set(new_s)):
            name = f"{section}.{key}"
            old = old_s.get(key, (defaults.get(section) or {}).get(key))
            if not name.startswith(_RESUME_MAY_CHANGE) and old != new_s.get(key):
                changes.append(f"{name}: {old!r} -> {new_s.get(key)!r}")
    if changes:
        raise ConfigError(
            f"{saved_path.parent}: --resume with settings that differ from the run's own ({saved_path}): "
            + "; ".join(changes)
            + f". Resume with the run's settings (cmemd train -c {saved_path} --resume) "
            "or start a new run.out_dir"
        )


def train(
    cfg: TrainConfig, *, resume: bool = False, progress: bool = True, evaluate_after: bool = True
) -> TrainOutcome:
    """Train one model as ``cfg`` says (one numbered trial), write the run directory, evaluate at the end.

    The run folder is locked while the run writes it (:func:`cmemd.folders.lock_folder`, taken by the process that
    writes it: rank 0 under DDP): a second run into the same ``run.out_dir`` is a :class:`TrainingError` naming the
    holder's pid, raised before it writes anything."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
        return _train(cfg, resume=resume, progress=progress, evaluate_after=evaluate_after)
    with lock_folder(cfg.run.out_dir):
        return _train(cfg, resume=resume, progress=progress, evaluate_after=evaluate_after)


def _write_run_file(path: Path, text: str) -> None:
    """A run-record file (environment.json, config.yaml) written atomically; a failure (a full disk) is a
    TrainingError that says the run's checkpoint and metrics were not touched."""
    try:
        write_atomic(path, text)
    except OSError as e:
        raise TrainingError(
            f"{path}: writing it failed ({e.strerror or e}); nothing else was changed: the run's "
            "checkpoint and metrics.jsonl are intact. Free disk space, then run the command again"
        ) from e


def _train(cfg: TrainConfig, *, resume: bool, progress: bool, evaluate_after: bool) -> TrainOutcome:
    from cmemd.data.dataset import build_train_loader
    from cmemd.models import build_model

    device = resolve_device(cfg.run.device, select=False)
    backends = configure_backends(cfg.run.seed, cfg.run.deterministic, cfg.run.cudnn_benchmark, device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # DDP: each rank takes its LOCAL_RANK's GPU below
        select_device(device)  # after CUBLAS_WORKSPACE_CONFIG is set: cuda:N becomes this process's CUDA device
    from cmemd.threads import apply_thread_policy, describe

    threads = apply_thread_policy(cfg.run.threads, device, (cfg.data.height, cfg.data.width))
    rank, world = init_distributed(device, cfg.run.dist_timeout_minutes)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    out_dir = Path(cfg.run.out_dir)
    ckpt = out_dir / "last.pt"
    # last.prev.pt alone is a run too (last.pt lost): resume from it; a new run would overwrite it
    has_run = ckpt.exists() or previous_path(ckpt).is_file()
    if rank == 0:
        if has_run and not resume:
            held = "last.pt" if ckpt.exists() else "last.prev.pt"
            raise ConfigError(
                f"{out_dir} already holds a run ({held}); pass --resume to continue it, or choose another run.out_dir"
            )
        if has_run and (out_dir / "config.yaml").is_file():
            _check_resume_config(out_dir / "config.yaml", cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_run_file(out_dir / "environment.json", json.dumps(environment(threads, device, backends), indent=2))

    check_pretrained(cfg, progress=progress and rank == 0)
    spec = dataset_of(cfg)  # looked up once; the helpers below take it
    data = training_data(cfg, spec=spec)
    d = cfg.data
    layout = ddp_batch_layout(cfg, data.records, world)
    with local_rank_zero_first(world):  # one image cache, built by local rank 0, then opened by the others
        loader = build_train_loader(
            data.records,
            height=d.height,
            width=d.width,
            P=layout.ids_per_rank,
            K=d.num_instances,
            seed=cfg.run.seed,
            num_workers=d.num_workers,
            use_cache=d.cache,
            cache_dir=d.cache_dir,
            dataset_root=d.root,
            rank=rank,
            world_size=world,
            num_batches=layout.num_batches,
            pad=d.pad,
            flip=d.flip,
            random_erasing=d.random_erasing,
            channel_aug=d.channel_aug,
            channel_aug_kind=d.channel_aug_kind,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
        )
    mcfg = model_config(cfg, data.num_classes)
    with local_rank_zero_first(world):  # ImageNet weights fetched once per machine
        model: torch.nn.Module = build_model(mcfg).to(device)
    objective = objective_from_config(cfg).to(device)
    # parameters the loss settings never give a gradient are frozen: DDP would wait for them forever
    frozen = objective.freeze_unused(model)
    if cfg.optim.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it
    o = cfg.optim
    # parameter groups from the plain model: a DDP wrapper hides the backbone parts (build_optimizer unwraps too)
    optimizer = build_optimizer(
        model,
        o.optimizer,
        lr=o.lr,
        backbone_lr=o.backbone_lr,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        nesterov=o.nesterov,
    )
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    selection = SELECTION_NOTE if cfg.run.selection == "none" else VAL_SELECTION_NOTE
    extra = {
        "config": cfg.to_dict(),
        "model_config": dataclasses.asdict(mcfg),
        "num_classes": data.num_classes,
        "selection": selection,
        "kind": "cmemd-train",
    }
    hooks = []
    if cfg.run.selection == "val" and rank == 0:
        hooks.append(_val_selector(cfg, spec, device))
    if cfg.run.diagnostics_ids > 0 and rank == 0:
        hooks.append(_diagnostics_hook(cfg, spec, device, progress))
    trainer = Trainer(
        model,
        objective,
        optimizer,
        loader,
        epochs=o.epochs,
        out_dir=out_dir,
        device=device,
        amp=o.amp,
        grad_clip=o.grad_clip,
        channels_last=o.channels_last,
        warmup_epochs=o.warmup_epochs,
        milestones=o.milestones,
        gamma=o.gamma,
        log_every=cfg.run.log_every,
        checkpoint_every_steps=cfg.run.checkpoint_every_steps,
        max_minutes=cfg.run.max_minutes,
        extra_state=extra,
        rank=rank,
        progress=progress,
        on_epoch_end=_chain(hooks),
    )
    if resume and has_run:
        used = trainer.resume(ckpt)  # a damaged or missing last.pt falls back to last.prev.pt, with a warning
        if rank == 0:
            print(
                f"resumed from {used}: epoch {trainer.epoch + 1}, batch {trainer.batches_done}, step {trainer.step}",
                flush=True,
            )
    elif resume and rank == 0:
        print(f"--resume: no checkpoint in {out_dir} yet, starting from scratch", flush=True)
    if rank == 0:  # after a successful resume only: a refused one leaves the run's record as it was
        _write_run_file(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # dump_config's format
    if rank == 0 and progress:
        batches: Any = loader.batch_sampler  # the identity sampler (build_train_loader)
        print(
            f"training on {data.description}: {len(data.records)} images, {data.num_classes} ids, "
            f"{batches.num_batches} steps/epoch x {o.epochs} epochs, device {device}, world size {world}; "
            f"model selection: {selection}",
            flush=True,
        )
        if world > 1:
            print(f"several processes: {layout.describe(world)}", flush=True)
        if frozen:
            print(f"not trained (no loss term reads them under these loss settings): {', '.join(frozen)}", flush=True)
        print(f"threads: {describe(threads)}", flush=True)
        print(f"{device} ({device_name(device) or platform.processor() or 'CPU'}): {backends.describe()}", flush=True)
    t0 = time.time()
    with stop_on_signals(trainer):
        history = trainer.fit()
    seconds = time.time() - t0
    if trainer.interrupted is not None:  # every rank stopped after the same step; rank 0 has saved
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        raise TrainingInterrupted(trainer.interrupted, trainer.epoch, trainer.step, ckpt, rank)
    outcome = TrainOutcome(out_dir, ckpt, history, seconds, model=unwrap(model))
    if evaluate_after and trainer.epoch >= o.epochs and rank == 0:
        final = unwrap(model)
        if cfg.run.selection == "val" and (out_dir / "best.pt").is_file():
            best, _ = load_checkpoint(out_dir / "best.pt", map_location=device)
            final.load_state_dict(best["model"])
            print(f"evaluating best.pt (epoch {best['best_epoch'] + 1}, selected on the val ids)", flush=True)
        outcome.results, feats = evaluate_model(
            final, cfg, device=device, progress=progress, return_features=True, spec=spec
        )
        outcome.modality_gap = modality_gap_of(feats)
        save_results(outcome.results, out_dir / "results.json", outcome.modality_gap)
        if progress:
            print(outcome.modality_gap.format(), flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return outcome


@dataclass
class BatchLayout:
    """How a step's batch is split over the ranks (``data.ddp_batch``, see docs/reproduce.md)."""

    mode: str  # global | per_rank
    ids_per_rank: int  # P of each rank's sampler
    num_ids: int  # data.num_ids
    num_instances: int  # K
    num_batches: int | None  # the sampler's epoch length (None: the sampler's own convention)
    steps_per_epoch: int  # optimizer steps per epoch (the same on every rank)

    def describe(self, world: int) -> str:
        k = self.num_instances
        if self.mode == "global":
            return (
                f"data.ddp_batch=global: each step's batch is the recipe's {self.num_ids} ids x ({k}+{k}) images, "
                f"split over {world} ranks ({self.ids_per_rank} ids each); {self.steps_per_epoch} steps/epoch as "
                f"on one GPU; learning rate and schedule unchanged"
            )
        return (
            f"data.ddp_batch=per_rank: each rank takes {self.num_ids} ids x ({k}+{k}) images, a global batch of "
            f"{world * self.num_ids} ids ({world}x the recipe's); {self.steps_per_epoch} steps/epoch as on one GPU "
            f"({world}x the images per epoch); learning rate NOT scaled (set optim.lr / optim.backbone_lr yourself)"
        )


def ddp_batch_layout(cfg: TrainConfig, records: list[ImageRecord], world: int) -> BatchLayout:
    """What ``data.ddp_batch`` means for ``world`` ranks. ``global`` (default): the recipe's batch of
    ``data.num_ids`` ids split over the ranks (``num_ids`` must be a multiple of the world size) and the one-GPU
    number of steps per epoch: the same optimisation as one GPU. ``per_rank``: every rank takes ``num_ids`` ids (a
    W-times larger global batch) for the one-GPU number of steps per epoch. Either way the learning rate and
    the schedule (warm-up, milestones in epochs) are the config's."""
    from cmemd.data.sampler import epoch_length

    d = cfg.data
    if d.ddp_batch == "global" and d.num_ids % world:
        raise ConfigError(
            f"data.num_ids={d.num_ids} cannot be split over {world} ranks with data.ddp_batch=global "
            f"(each rank takes num_ids / world ids); use a multiple of {world}, or "
            "data.ddp_batch=per_rank (every rank takes num_ids ids)"
        )
    per_rank = d.num_ids // world if d.ddp_batch == "global" else d.num_ids
    one_gpu = epoch_length(
        sum(r.modality == "visible" for r in records),
        sum(r.modality == "thermal" for r in records),
        d.num_ids,
        d.num_instances,
    )
    steps = d.steps_per_epoch or one_gpu
    # global: the sampler's own convention (largest modality // (P_rank * K * world)) is already the one-GPU length
    num_batches = d.steps_per_epoch if d.ddp_batch == "global" else steps
    return BatchLayout(d.ddp_batch, per_rank, d.num_ids, d.num_instances, num_batches, steps)


def train_all_trials(
    cfg: TrainConfig, *, resume: bool = False, evaluate_after: bool = True, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """One model per numbered training split of the dataset (e.g. trials 1..10), each in
    ``<run.out_dir>/trial<t>``; returns (and writes to ``<run.out_dir>/results.json``) the results of the
    same setting combined over the trials, ``{"<dataset> <n> trials <setting>": ProtocolResult}``.
    A dataset with one training split is a :class:`ConfigError`."""
    from dataclasses import replace

    from cmemd.evaluation.results import combine_results

    spec = dataset_of(cfg)
    if not spec.training_trials:
        raise ConfigError(
            f"--all-trials is for datasets with numbered training splits; {spec.title} "
            "(data.dataset) has one training split"
        )
    base = cfg.run.out_dir
    per_trial: dict[str, list] = {}
    n = len(spec.training_trials)
    for t in spec.training_trials:
        cfg_t = replace(cfg, data=replace(cfg.data, trial=t), run=replace(cfg.run, out_dir=f"{base}/trial{t}"))
        echo(f"=== {spec.title} trial {t}/{n} -> {cfg_t.run.out_dir}")
        if Path(cfg_t.run.out_dir, "results.json").exists() and resume:
            echo("    finished earlier; loading its results")
        out = train(cfg_t, resume=resume, evaluate_after=evaluate_after)
        for name, r in out.results.items():  # "<benchmark> trial t <direction>[, re-ranked (...)]"
            per_trial.setdefault(name.split(f"trial {t} ", 1)[-1], []).append(r)
    combined = {f"{spec.name} {n} trials {k}": combine_results(v) for k, v in per_trial.items() if v}
    if combined:
        save_results(combined, Path(base) / "results.json")
    return combined


def _chain(hooks: list):
    """One on_epoch_end callback running ``hooks`` in order (None when there are none)."""
    if not hooks:
        return None

    def run_all(trainer: Trainer, epoch: int) -> None:
        for hook in hooks:
            hook(trainer, epoch)

    return run_all


def diagnostic_records(cfg: TrainConfig, *, spec: Benchmark | None = None) -> tuple[list[ImageRecord], str]:
    """The records the per-epoch diagnostics use, and a note saying what they are: the val ids of the
    dataset (``spec``, default :func:`~cmemd.app.evaluate.dataset_of`; trained on unless ``run.selection=val``);
    none for a dataset without a validation split."""
    from cmemd.engine.diagnostics import select_identities

    spec = dataset_of(cfg, spec)
    if not spec.has_val:
        return [], f"{spec.title} has no validation split: per-epoch modality diagnostics are off"
    recs = select_identities(
        [r for part in spec.val_sets(cfg.data.root).values() for r in part], cfg.run.diagnostics_ids
    )
    held = "held out" if cfg.run.selection == "val" else "trained on: run.selection=none"
    return recs, f"{len({r.pid for r in recs})} val ids ({held})"


def config_diagnostics(
    model: torch.nn.Module,
    records: list[ImageRecord],
    cfg: TrainConfig,
    *,
    nuisance: dict | None = None,
    device: Any = "cpu",
) -> dict[str, Any]:
    """:func:`~cmemd.engine.diagnostics.alignment_diagnostics` of ``model`` on ``records`` as ``cfg``'s alignment
    loss sees them: its feature, cost and normalisation, at the config's input size and eval batch."""
    from cmemd.engine.diagnostics import alignment_diagnostics

    loss = cfg.loss
    return alignment_diagnostics(
        model,
        records,
        height=cfg.data.height,
        width=cfg.data.width,
        device=device,
        batch_size=cfg.eval.batch_size,
        nuisance=nuisance,
        cost=loss.emd_cost,
        normalize=loss.emd_normalize,
        align_feature=loss.align_feature,
    )


def _diagnostics_hook(cfg: TrainConfig, spec: Benchmark, device: torch.device, progress: bool):
    """on_epoch_end hook: modality gap and (on synthetic data) plan purity on val ids, logged as a 'diag' line."""
    from cmemd.engine.diagnostics import diagnostics_record

    recs, note = diagnostic_records(cfg, spec=spec)
    if not recs:
        if progress:
            print(f"diagnostics: {note}", flush=True)
        return lambda trainer, epoch: None
    nuisance = nuisance_of(recs, cfg.data.root)

    def on_epoch_end(trainer: Trainer, epoch: int) -> None:
        diag = config_diagnostics(unwrap(trainer.model), recs, cfg, nuisance=nuisance, device=device)
        trainer.log({"kind": "diag", "epoch": epoch, "step": trainer.step, **diagnostics_record(diag)})
        if progress:
            print(f"after epoch {epoch + 1}, {note}: {diag['modality_gap'].format()}", flush=True)
            if diag["plan_purity"] is not None:
                print(f"  {diag['plan_purity'].format()}", flush=True)

    return on_epoch_end


def _val_selector(cfg: TrainConfig, spec: Benchmark, device: torch.device):
    """on_epoch_end hook: evaluate on the val ids (the dataset's ``val_options``), keep best.pt (by mAP), log a
    'val' line."""
    from cmemd.engine.checkpoint import save_checkpoint

    sets = spec.val_sets(cfg.data.root)
    kw = extraction_settings(cfg, device)

    def on_epoch_end(trainer: Trainer, epoch: int) -> None:
        model = unwrap(trainer.model)
        out = spec.evaluate(
            sets, lambda recs, desc: extract_features(model, recs, **kw), trial=cfg.data.trial, **spec.val_options
        )
        r = next(iter(out.results.values()))
        score = r.mean["mAP"]
        best = trainer.extra_state.get("best_val_mAP")
        trainer.log({"kind": "val", "epoch": epoch, "step": trainer.step, "val_R1": r.mean["R1"], "val_mAP": score})
        if best is None or score > best:
            trainer.extra_state["best_val_mAP"] = score
            trainer.extra_state["best_epoch"] = epoch
            save_checkpoint(trainer.state_dict(), trainer.out_dir / "best.pt", keep_previous=False)
            trainer.save()  # last.pt records the new best too, so a resume keeps comparing against it
        print(
            f"validation (val ids) after epoch {epoch + 1}: R1 {100 * r.mean['R1']:.2f} mAP {100 * score:.2f}"
            f" (best {100 * trainer.extra_state['best_val_mAP']:.2f} at epoch {trainer.extra_state['best_epoch'] + 1})",
            flush=True,
        )

    return on_epoch_end
