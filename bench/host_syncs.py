"""Host-device synchronisations per training step, counted on the CPU (docs/results/speed.md, "Host syncs").

    python bench/host_syncs.py                      # the table (tiny model sizes; the count does not depend on them)
    python bench/host_syncs.py --golden FILE.json   # also write every step's logged terms (exact floats)
    python bench/host_syncs.py --compare FILE.json  # and check them bit for bit against an earlier --golden file

Each config trains a few steps of a tiny synthetic SYSU-layout set through ``Trainer.fit`` inside
:func:`cmemd.engine.sync_count.count_host_syncs` (what would synchronise on a GPU; data loading is left out: on a GPU
run it is host work in the loader). Steps are counted from one ``forward_backward`` to the next, so a step includes
the loop's own bookkeeping and, on a logging step, the log record.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from cmemd.engine.sync_count import HostSyncs, count_host_syncs

# Sinkhorn's loop as it runs on an accelerator (early_exit=False: no convergence reads), forced on the CPU.
ACCELERATOR_SINKHORN = "synth_cmemd sinkhorn, GPU loop"

# The paper's full model (CM-EMD exact, CM-DL, accumulated heads) as the CPU config and as the SYSU config, with
# the Sinkhorn solver and the cross CM-DL variant, and the demo (global CM-EMD on the BN-neck).
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "synth_cmemd": ("synth_cmemd", []),
    "synth_cmemd sinkhorn": ("synth_cmemd", ["loss.emd_solver=sinkhorn"]),
    ACCELERATOR_SINKHORN: ("synth_cmemd", ["loss.emd_solver=sinkhorn"]),
    "synth_cmemd cross CM-DL": ("synth_cmemd", ["loss.dl_variant=cross"]),
    "synth_cmemd grad_clip": ("synth_cmemd", ["optim.grad_clip=5.0"]),
    "sysu_cmemd": ("sysu_cmemd", ["model.pretrained=null", "model.arch=resnet18", "data.random_erasing=0.0",
                                  "data.channel_aug=0.0"]),
    "synth_cmemd_global (demo)": ("synth_cmemd_global", []),
}
TINY = ["data.height=32", "data.width=16", "data.num_workers=0", "data.cache=false", "model.width=8",
        "model.local_dim=16", "run.deterministic=true", "run.seed=0"]


def tiny_data(root: Path) -> Path:
    """A 12-identity synthetic SYSU-layout set of 32x16 images (a few seconds to write)."""
    from cmemd.data.synth import SynthConfig, generate_sysu

    if not (root / "exp").is_dir():
        generate_sysu(root, SynthConfig(ids=12, images_per_camera=(3, 4), height=32, width=16, seed=3))
    return root


class _UncountedLoader:
    """The loader with its batches fetched outside the counting mode (a GPU run's loading is host work)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self._loader)
        while True:
            with torch._C.DisableTorchFunction():
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield batch


def build_trainer(config: str, overrides: list[str], root: Path, out_dir: Path, *, steps: int, log_every: int):
    """A Trainer for ``config`` at the tiny size over ``root``, ``steps`` steps in one epoch."""
    from cmemd.app.runtime import set_determinism
    from cmemd.app.train import model_config, objective_from_config, training_data
    from cmemd.config import load_config
    from cmemd.data.dataset import build_train_loader
    from cmemd.engine.schedule import build_optimizer
    from cmemd.engine.trainer import Trainer
    from cmemd.models import build_model

    cfg = load_config(config, [*TINY, *overrides, f"data.root={root}", f"run.out_dir={out_dir}",
                               f"data.steps_per_epoch={steps}", "optim.epochs=1", f"run.log_every={log_every}"])
    set_determinism(cfg.run.seed, cfg.run.deterministic)
    data = training_data(cfg)
    d, o = cfg.data, cfg.optim
    loader = build_train_loader(data.records, height=d.height, width=d.width, P=d.num_ids, K=d.num_instances,
                                seed=cfg.run.seed, num_workers=0, use_cache=False, num_batches=d.steps_per_epoch,
                                pad=d.pad, flip=d.flip, random_erasing=d.random_erasing, channel_aug=d.channel_aug,
                                channel_aug_kind=d.channel_aug_kind)
    model = build_model(model_config(cfg, data.num_classes))
    optimizer = build_optimizer(model, o.optimizer, lr=o.lr, backbone_lr=o.backbone_lr, weight_decay=o.weight_decay,
                                momentum=o.momentum, nesterov=o.nesterov)
    return Trainer(model, objective_from_config(cfg), optimizer, _UncountedLoader(loader), epochs=1, out_dir=out_dir,
                   amp=o.amp, grad_clip=o.grad_clip, warmup_epochs=0, log_every=log_every, progress=False)


@contextmanager
def sinkhorn_loop(name: str) -> Iterator[None]:
    """For :data:`ACCELERATOR_SINKHORN`, ``cmemd.ot.sinkhorn`` with ``early_exit=False``, as on an accelerator."""
    from cmemd import ot

    original = ot.sinkhorn
    if name == ACCELERATOR_SINKHORN:
        ot.sinkhorn = functools.partial(original, early_exit=False)
    try:
        yield
    finally:
        ot.sinkhorn = original


def count_steps(trainer: Any) -> tuple[list[int], list[dict[str, float]], HostSyncs, list[HostSyncs]]:
    """Run ``trainer.fit()`` counting syncs; returns the count of each step (but the last, which runs into the
    epoch's end), every step's logged terms as floats, the whole run's record and each step's own record."""
    marks: list[int] = []
    terms: list[dict[str, float]] = []
    per_step: list[HostSyncs] = []
    inner = trainer.forward_backward

    def forward_backward(batch: Any) -> Any:
        marks.append(record.total)
        per_step.append(HostSyncs(record.by_kind.copy(), record.by_site.copy()))
        out = inner(batch)
        with torch._C.DisableTorchFunction():  # reading the terms for the golden file is not the loop's work
            raw = out.raw() if hasattr(out, "raw") else out  # LoggedTerms unread: the loop's own read stays counted
            terms.append({k: float(v) for k, v in raw.items()})
        return out

    trainer.forward_backward = forward_backward
    with count_host_syncs() as record:
        trainer.fit()
    counts = [b - a for a, b in zip(marks, marks[1:])]
    steps = [HostSyncs(b.by_kind - a.by_kind, b.by_site - a.by_site) for a, b in zip(per_step, per_step[1:])]
    return counts, terms, record, steps


def _span(values: list[int]) -> str:
    return "-" if not values else str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--log-every", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="folder for the tiny data set and runs [a temporary one]")
    ap.add_argument("--golden", type=Path,
                    help="write every step's logged terms, the epoch summary and the final weights' sum here")
    ap.add_argument("--compare", type=Path, help="compare the terms with an earlier --golden file, bit for bit")
    ap.add_argument("--sites", action="store_true", help="print the call sites of a non-logging step")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="host_syncs_"))
    root = tiny_data(work / "data")
    golden: dict[str, Any] = {}
    rows = []
    for i, (name, (config, overrides)) in enumerate(CONFIGS.items()):
        trainer = build_trainer(config, overrides, root, work / f"run{i}", steps=args.steps, log_every=args.log_every)
        with sinkhorn_loop(name):
            counts, terms, _, steps = count_steps(trainer)
        with torch._C.DisableTorchFunction():
            weights = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
        summary = {k: v for k, v in trainer.history[-1].items() if k not in ("seconds", "img_per_s")}
        golden[name] = {"terms": terms, "weights_sum": weights, "epoch_summary": summary}
        # step 1 also fills per-process caches (the OT candidate tables' one copy to the device)
        logging = [c for s, c in enumerate(counts, start=1) if s % args.log_every == 0]
        plain = [c for s, c in enumerate(counts, start=1) if s % args.log_every != 0 and s > 1]
        row = (name, str(counts[0]), _span(plain), _span(logging))
        rows.append(row)
        print(f"{name:<32} first step {row[1]:>3}   non-logging step {row[2]:>5}   logging step {row[3]:>5}", flush=True)
        if args.sites:
            first = next(s for k, s in enumerate(steps, start=1) if k % args.log_every != 0)
            print(first.table() or "    (none)", flush=True)
    print("\n| config | first step | non-logging step | logging step |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.golden:
        args.golden.write_text(json.dumps(golden, indent=1))
    if args.compare:
        before = json.loads(args.compare.read_text())
        # the GPU loop must give what the CPU loop gave (the same config)
        ref = {name: before.get(name, before.get(name.split(",")[0])) for name in golden}
        bad = [name for name in golden if ref[name] is not None and golden[name] != ref[name]]
        for name in bad:
            print(f"DIFFERENT: {name}", flush=True)
        for name in (n for n in golden if ref[n] is None):
            print(f"not in {args.compare}: {name}", flush=True)
        print("terms, epoch summary and weights bit-identical to", args.compare if not bad else "-- NOT identical", flush=True)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
