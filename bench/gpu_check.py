"""GPU readiness: every CUDA path cmemd has, the paper model's training speed, and the same checks on CPU.

    python bench/gpu_check.py                          # on a GPU machine: ~7 minutes, writes docs/results/gpu.md
    python bench/gpu_check.py --device cpu --quick     # a test of the script itself (small sizes, seconds)
    python bench/gpu_check.py --budget 300 --out /tmp/gpu.md
    python3 bench/gpu_check.py --out $OUT/gpu.md       # a checkout without `pip install`: the sources under src/ are used

Sections, each time-boxed (a section that runs out of time is recorded as such and the next one starts) and the
report rewritten after each one, so a run killed at the limit still leaves what it measured:

1. environment (torch, CUDA, the device, its memory);
2. optimal transport: `cmemd.ot.emd` and `cmemd.ot.sinkhorn` on the CM-EMD problem sizes, on the device and on CPU
   (values must agree);
3. losses: the CM-EMD objective on one model output, on the device and on CPU (values must agree; gradients finite);
4. model forward/backward of the paper model (ResNet-50, 288x144, 8 ids x (4 + 4)) through `Trainer.forward_backward`:
   fp32, bf16 and fp16 AMP (fp16 with the gradient scaler), each with and without channels_last: s/step, img/s, peak
   memory;
5. evaluation (`cmemd.evaluation.evaluate`, SYSU-MM01 sizes) and k-reciprocal re-ranking
   (`cmemd.evaluation.re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)`, recorded as not available when the
   installed cmemd has none) on the device against CPU;
6. training: `cmemd.app.run.train` with the `sysu_cmemd` settings (no ImageNet weights) on synthetic data this
   script generates, for a few hundred steps in two epochs (the second epoch's rate is the steady state), for the
   recipe as written (fp32) and with bf16 + channels_last; projected time of one SYSU-MM01 epoch (largest modality //
   (P*K) steps, the sampler's convention: 22,258 // 32 = 695 steps) and of the 80-epoch recipe;
7. a short DDP launch (torchrun, 2 GPUs or more), else recorded as skipped;
8. the same model rows on CPU for comparison (fewer steps).

`--quick` shrinks every size (ResNet-18 width 16 at 64x32, 2 ids x (2 + 2), a few steps) so the script itself can be
tested on a CPU in seconds; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import cmemd  # noqa: F401
except ImportError:  # a machine with the checkout but without `pip install`: use the sources (and tell subprocesses)
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)

# SYSU-MM01's training set (the released split: train + val ids, as the field trains)
SYSU_VISIBLE, SYSU_THERMAL, SYSU_IDS = 22258, 11909, 395
RECIPE_EPOCHS = 80


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise SectionTimeout in this (main) thread after ``seconds`` (checked between Python bytecodes)."""
    if seconds <= 0:
        raise SectionTimeout("no time left")

    def on_alarm(signum, frame):
        raise SectionTimeout(f"ran past its {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclasses.dataclass
class Section:
    title: str
    status: str = "not run"
    seconds: float = 0.0
    lines: list = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)


class Report:
    """Collects the sections and rewrites the markdown file (and a JSON twin) after each one."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header, self.sections, self.footer = path, header, [], []
        self.started = time.time()

    def run(self, title: str, budget: float, fn: Callable[[Section], None]) -> Section:
        sec = Section(title)
        self.sections.append(sec)
        t0 = time.time()
        print(f"== {title} (budget {budget:.0f} s)", flush=True)
        try:
            with time_box(budget):
                sec.status = "running"
                self.write()
                fn(sec)
                sec.status = sec.status if sec.status not in ("running",) else "ok"
        except SectionTimeout as e:
            sec.status = f"stopped: {e} (partial results above)"
        except Exception as e:  # a failing path is a finding, not the end of the check
            sec.status = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            sec.lines.append("```\n" + traceback.format_exc()[-2500:] + "```")
        sec.seconds = time.time() - t0
        print(f"   {sec.status} ({sec.seconds:.1f} s)", flush=True)
        self.write()
        return sec

    def write(self) -> None:
        out = list(self.header)
        out.append(f"Elapsed: {time.time() - self.started:.0f} s. Sections: "
                   + ", ".join(f"{s.title} [{s.status.split(':')[0]}]" for s in self.sections) + ".")
        for s in self.sections:
            out += ["", f"## {s.title}", "", f"Status: {s.status}; {s.seconds:.1f} s.", ""]
            out += s.lines
        out += self.footer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(out) + "\n")
        os.replace(tmp, self.path)
        self.path.with_suffix(".json").write_text(json.dumps(
            {s.title: {"status": s.status, "seconds": s.seconds, **s.data} for s in self.sections}, indent=1, default=str))


# ---------------------------------------------------------------------------------------------------- helpers

def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev, repeats: int = 3, warmup: int = 1) -> tuple[float, Any]:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls; and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def to_device(obj: Any, dev) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(dev)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, dev) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, dev) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), dev) for f in dataclasses.fields(obj)})
    return obj


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


@dataclasses.dataclass
class Sizes:
    arch: str
    width: int
    height: int
    img_width: int
    P: int
    K: int
    model_steps: int  # timed steps per forward/backward row (device)
    cpu_model_steps: int
    train_steps: int  # per epoch of the training section (two epochs)
    synth_ids: int
    eval_q: int
    eval_g: int
    eval_d: int
    rerank_q: int
    rerank_g: int


FULL = Sizes("resnet50", 64, 288, 144, 8, 4, 20, 2, 150, 40, 3803, 6775, 2048, 3803, 301)
QUICK = Sizes("resnet18", 16, 64, 32, 2, 2, 2, 1, 2, 12, 120, 200, 32, 40, 60)


def paper_overrides(sz: Sizes) -> list[str]:
    """The sysu_cmemd settings at these sizes, without ImageNet weights."""
    ov = ["model.pretrained=null", f"model.arch={sz.arch}", f"model.width={sz.width}", f"data.height={sz.height}",
          f"data.width={sz.img_width}", f"data.num_ids={sz.P}", f"data.num_instances={sz.K}"]
    if sz is QUICK:
        ov += ["model.num_stripes=2", "model.local_dim=16", "data.num_workers=0", "data.pad=2"]
    return ov


def build(sz: Sizes, dev, *, num_classes: int = 64, amp: str = "none", channels_last: bool = False, seed: int = 0):
    """(trainer, batch) for one forward/backward row: the model, objective and optimiser `cmemd train` builds."""
    import torch

    from cmemd.config import load_config
    from cmemd.app.run import model_config, objective_from_config
    from cmemd.engine.schedule import build_optimizer
    from cmemd.engine.trainer import Trainer
    from cmemd.models import build_model

    cfg = load_config("sysu_cmemd", paper_overrides(sz))
    torch.manual_seed(seed)
    model = build_model(model_config(cfg, num_classes)).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    opt = build_optimizer(model, o.optimizer, lr=o.lr, backbone_lr=o.backbone_lr, weight_decay=o.weight_decay,
                          momentum=o.momentum, nesterov=o.nesterov)
    trainer = Trainer(model, objective_from_config(cfg).to(dev), opt, None, epochs=1,
                      out_dir=tempfile.mkdtemp(prefix="gpu_check_"), device=dev, amp=amp, channels_last=channels_last,
                      progress=False)
    g = torch.Generator().manual_seed(seed)
    n = sz.P * sz.K
    images = torch.randn(2 * n, 3, sz.height, sz.img_width, generator=g)
    pids = torch.arange(sz.P).repeat_interleave(sz.K).repeat(2)
    mods = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    from cmemd.data.dataset import Batch

    return trainer, Batch(images, pids, mods, torch.arange(2 * n)), cfg


# ---------------------------------------------------------------------------------------------------- sections

def section_env(sec: Section, dev) -> None:
    import torch

    import cmemd

    rows = [["cmemd", cmemd.__version__], ["torch", torch.__version__], ["python", sys.version.split()[0]],
            ["platform", platform.platform()], ["CPU cores", os.cpu_count()],
            ["torch CPU threads", torch.get_num_threads()], ["CUDA available", torch.cuda.is_available()]]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rows += [["CUDA (torch build)", torch.version.cuda], ["cuDNN", torch.backends.cudnn.version()],
                 ["GPUs", torch.cuda.device_count()], ["GPU 0", p.name],
                 ["GPU memory", f"{p.total_memory / 2**30:.1f} GiB"], ["compute capability", f"{p.major}.{p.minor}"],
                 ["bf16 supported", torch.cuda.is_bf16_supported()],
                 ["TF32 (matmul / cuDNN)", f"{torch.backends.cuda.matmul.allow_tf32} / {torch.backends.cudnn.allow_tf32}"]]
    sec.lines += table(["item", "value"], rows)
    sec.data.update({str(k): str(v) for k, v in rows})
    sec.data["device"] = str(dev)


def section_ot(sec: Section, dev, sz: Sizes) -> None:
    import torch

    from cmemd import ot

    g = torch.Generator().manual_seed(0)
    granularities = 1 + 2 * (6 if sz is FULL else 2)  # global + local + accumulated (the CM-EMD loss's problems)
    problems = [("emd", (sz.P * granularities, sz.K, sz.K)), ("emd", (16, 16, 16)),
                ("sinkhorn", (sz.P * granularities, sz.K, sz.K)), ("sinkhorn", (16, 64, 64))]
    rows = []
    for solver, shape in problems:
        cost = torch.rand(*shape, generator=g, dtype=torch.float32)
        fn = ot.emd if solver == "emd" else ot.sinkhorn
        t_dev, r_dev = timed(lambda: fn(cost.to(dev)), dev)
        t_cpu, r_cpu = timed(lambda: fn(cost), torch.device("cpu"))
        diff = float((r_dev.value.cpu() - r_cpu.value).abs().max())
        marg = float((r_dev.plan.sum(-1).cpu() - 1.0 / shape[1]).abs().max())
        path = ot._emd_path(shape[0], shape[1], shape[2], dev) if solver == "emd" else "log-domain"
        rows.append([solver, "x".join(map(str, shape)), path, t_dev * 1e3, t_cpu * 1e3, diff, marg])
        if diff > 1e-4:
            sec.status = f"MISMATCH: {solver} {shape} differs from CPU by {diff:.2e}"
        sec.lines[:] = table(["solver", "B x n x m", "path on device", f"{dev.type} ms", "CPU ms", "max |value - CPU|",
                              "row-marginal error"], rows)
        sec.data["rows"] = rows


def section_losses(sec: Section, dev, sz: Sizes) -> None:
    import torch

    trainer, (images, pids, mods, _), _ = build(sz, dev)
    model, objective = trainer.model, trainer.objective
    model.train()
    out = model(images.to(dev), mods.to(dev))
    total, terms = objective(out, pids.to(dev), mods.to(dev))
    total.backward()
    grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    objective_cpu = objective.to("cpu")
    total_cpu, terms_cpu = objective_cpu(to_device(out, torch.device("cpu")), pids, mods)
    objective.to(dev)
    rows = [[k, float(v), float(terms_cpu[k]), abs(float(v) - float(terms_cpu[k]))] for k, v in terms.items()
            if k in terms_cpu]
    sec.lines += table(["term", dev.type, "CPU (same model output)", "|diff|"], rows)
    sec.lines += ["", f"Gradients after backward on {dev.type}: {'all finite' if grads_finite else 'NOT FINITE'}."]
    worst = max((r[3] / max(1.0, abs(r[2])) for r in rows), default=0.0)
    if not grads_finite or worst > 1e-3:
        sec.status = f"MISMATCH: worst relative loss difference {worst:.2e}, gradients finite: {grads_finite}"
    sec.data.update(rows=rows, grads_finite=bool(grads_finite))


def model_rows(sec: Section, dev, sz: Sizes, variants: list[tuple[str, bool]], steps: int, deadline: float) -> list:
    import torch

    rows = []
    header = ["AMP", "channels_last", "s/step", "img/s", "peak memory GiB", "loss (last)", "SYSU epoch (695 steps)"]
    for amp, cl in variants:
        if time.time() > deadline:
            rows.append([amp, cl, "skipped: out of time", "", "", "", ""])
            continue
        try:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            trainer, batch, _ = build(sz, dev, amp=amp, channels_last=cl)
            trainer.model.train()
            terms = {}

            def step():
                nonlocal terms
                terms = trainer.forward_backward(batch)

            t, _ = timed(step, dev, repeats=steps, warmup=2 if dev.type == "cuda" else 1)
            n = batch[0].shape[0]
            mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
            rows.append([amp, cl, t, n / t, mem, terms.get("loss", float("nan")), hms(t * sysu_epoch_steps(sz))])
        except SectionTimeout:
            raise
        except Exception as e:
            rows.append([amp, cl, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}", "", "", "", ""])
        sec.lines[:] = table(header, rows)
        sec.data["rows"] = rows
        print(f"   {rows[-1]}", flush=True)
    if any(isinstance(r[2], str) and r[2].startswith("FAILED") for r in rows):
        sec.status = "FAILED rows (see table)"
    return rows


def sysu_epoch_steps(sz: Sizes) -> int:
    """Steps of one SYSU-MM01 epoch: the largest modality // (P*K), as cmemd.data.sampler counts them."""
    return max(SYSU_VISIBLE, SYSU_THERMAL) // (8 * 4)


def section_eval(sec: Section, dev, sz: Sizes) -> None:
    import torch

    from cmemd.evaluation import evaluate

    rng = np.random.default_rng(0)
    ids = 96 if sz is FULL else 12
    centres = rng.standard_normal((ids, sz.eval_d)).astype(np.float32)

    def feats(n, cams):
        pids = rng.integers(0, ids, n)
        return (centres[pids] + 1.5 * rng.standard_normal((n, sz.eval_d)).astype(np.float32), pids,
                rng.choice(cams, n))

    qf, qp, qc = feats(sz.eval_q, [3, 6])
    gf, gp, gc = feats(sz.eval_g, [1, 2, 4, 5])
    kw = dict(removal="sysu-same-location", cmc="identity-dedup")
    t_dev, r_dev = timed(lambda: evaluate(torch.from_numpy(qf).to(dev), qp, qc, torch.from_numpy(gf).to(dev), gp, gc,
                                          device=dev, **kw), dev)
    t_cpu, r_cpu = timed(lambda: evaluate(qf, qp, qc, gf, gp, gc, device="cpu", **kw), torch.device("cpu"))
    d_map, d_r1 = abs(r_dev.mAP - r_cpu.mAP), abs(float(r_dev.cmc[0]) - float(r_cpu.cmc[0]))
    sec.lines += table(["queries x gallery x dim", f"{dev.type} s", "CPU s", "mAP", "|mAP - CPU|", "|R1 - CPU|"],
                       [[f"{sz.eval_q} x {sz.eval_g} x {sz.eval_d}", t_dev, t_cpu, float(r_dev.mAP), d_map, d_r1]])
    if d_map > 1e-4 or d_r1 > 1e-4:
        sec.status = f"MISMATCH: mAP differs from CPU by {d_map:.2e}, R1 by {d_r1:.2e}"
    sec.data.update(t_dev=t_dev, t_cpu=t_cpu, d_map=d_map, d_r1=d_r1)


def section_rerank(sec: Section, dev, sz: Sizes, deadline: float) -> None:
    import torch

    try:
        from cmemd.evaluation import re_ranking
    except ImportError:
        sec.status = "not available (this cmemd has no cmemd.evaluation.re_ranking)"
        sec.lines.append("`from cmemd.evaluation import re_ranking` failed: re-ranking is not part of this version.")
        return
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(sz.rerank_q + sz.rerank_g, 256 if sz is FULL else 16, generator=g), dim=1)
    q, gal = x[: sz.rerank_q], x[sz.rerank_q:]
    dists = (torch.cdist(q, gal), torch.cdist(q, q), torch.cdist(gal, gal))
    kw = dict(k1=20, k2=6, lambda_value=0.3)
    if sz is QUICK:
        kw = dict(k1=8, k2=3, lambda_value=0.3)
    dev_in = [d.to(dev) for d in dists]
    t_dev, r_dev = timed(lambda: re_ranking(*dev_in, **kw), dev, repeats=2)
    rows = [[f"{sz.rerank_q} x {sz.rerank_g}", str(kw), dev.type, t_dev, str(getattr(r_dev, "device", "numpy"))]]
    sec.lines[:] = table(["queries x gallery", "parameters", "where", "s", "result on"], rows)
    if time.time() < deadline:
        t_cpu, r_cpu = timed(lambda: re_ranking(*dists, **kw), torch.device("cpu"), repeats=1, warmup=0)
        diff = float((torch.as_tensor(r_dev).cpu().float() - torch.as_tensor(r_cpu).float()).abs().max())
        rows.append([f"{sz.rerank_q} x {sz.rerank_g}", str(kw), "cpu", t_cpu, "cpu"])
        sec.lines[:] = table(["queries x gallery", "parameters", "where", "s", "result on"], rows)
        sec.lines += ["", f"max |re-ranked distance on {dev.type} - on CPU| = {diff:.2e}"]
        if diff > 1e-3:
            sec.status = f"MISMATCH: re-ranked distances differ from CPU by {diff:.2e}"
        sec.data["diff"] = diff
    sec.data["rows"] = rows


def make_data(root: Path, sz: Sizes) -> Path:
    from cmemd.data.synth import SynthConfig, generate_sysu

    if not (root / "synth_summary.json").is_file():
        cfg = SynthConfig(ids=sz.synth_ids, images_per_camera=(6, 8) if sz is FULL else (3, 4), seed=0,
                          **({} if sz is FULL else {"height": 32, "width": 16}))
        generate_sysu(root, cfg, workers=min(8, os.cpu_count() or 1))
    return root


def section_train(sec: Section, dev, sz: Sizes, work: Path, deadline: float) -> None:
    import torch

    from cmemd.config import load_config
    from cmemd.app.run import train

    t0 = time.time()
    data = make_data(work / "synth_sysu", sz)
    sec.lines.append(f"Synthetic SYSU-layout data: {sz.synth_ids} ids, generated in {time.time() - t0:.1f} s "
                     f"(the loader resizes to {sz.height}x{sz.img_width} and caches the decoded images).")
    header = ["setting", "steps", "s/step (epoch 2)", "img/s (epoch 2)", "peak memory GiB", "loss (epoch 2)",
              "one SYSU-MM01 epoch", f"{RECIPE_EPOCHS}-epoch recipe"]
    rows = []
    steps_epoch = sysu_epoch_steps(sz)
    variants = [("fp32 (sysu_cmemd as written)", []), ("bf16 + channels_last", ["optim.amp=bf16", "optim.channels_last=true"])]
    for label, extra in variants:
        left = deadline - time.time()
        if left < 20:
            rows.append([label, "skipped: out of time", "", "", "", "", "", ""])
            continue
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        out_dir = work / f"run_{len(rows)}"
        cfg = load_config("sysu_cmemd", paper_overrides(sz) + [
            f"data.root={data}", f"data.cache_dir={work / 'cache'}", f"data.steps_per_epoch={sz.train_steps}",
            "optim.epochs=2", "optim.warmup_epochs=1", "optim.milestones=[100]", f"run.out_dir={out_dir}",
            f"run.device={dev}", "run.log_every=10", f"run.max_minutes={max(0.1, left / 60 * 0.45)}", *extra])
        outcome = train(cfg, evaluate_after=False, progress=False)
        h = outcome.history
        last = h[-1]
        sps = last["seconds"] / sz.train_steps
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        rows.append([label, f"{len(h)} x {sz.train_steps}", sps, last["img_per_s"], mem, last.get("loss", float("nan")),
                     hms(sps * steps_epoch), hms(sps * steps_epoch * RECIPE_EPOCHS)])
        sec.lines[1:] = [""] + table(header, rows)
        sec.data["rows"] = rows
        print(f"   {rows[-1]}", flush=True)
    sec.lines += ["", f"One SYSU-MM01 epoch = max({SYSU_VISIBLE:,} visible, {SYSU_THERMAL:,} thermal) // (8 x 4) = "
                  f"{steps_epoch} steps of 64 images; the recipe is {RECIPE_EPOCHS} epochs = {steps_epoch * RECIPE_EPOCHS:,} "
                  "steps. Projections use the second epoch (after warm-up, cuDNN autotuning and the image cache) and "
                  "exclude evaluation; epoch 1 includes building the decoded-image cache."]


def section_ddp(sec: Section, dev, sz: Sizes, work: Path, deadline: float) -> None:
    import torch

    n = torch.cuda.device_count() if dev.type == "cuda" else 0
    if n < 2:
        sec.status = f"skipped: {n} GPU(s) (needs 2 or more)"
        sec.lines.append(sec.status)
        return
    data = make_data(work / "synth_sysu", sz)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "-m", "cmemd", "train", "-c",
           "sysu_cmemd", "--no-eval", *paper_overrides(sz), f"data.root={data}", f"data.cache_dir={work / 'cache'}",
           "data.steps_per_epoch=20", "optim.epochs=1", f"run.out_dir={work / 'ddp'}", "run.log_every=5"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, deadline - time.time()))
    ok = out.returncode == 0 and (work / "ddp" / "last.pt").is_file()
    sec.status = "ok" if ok else f"FAILED: exit {out.returncode}"
    sec.lines += [f"`torchrun --nproc_per_node {n} -m cmemd train -c sysu_cmemd ...` 20 steps: exit {out.returncode} in "
                  f"{time.time() - t0:.0f} s", "", "```", (out.stdout + out.stderr)[-2000:], "```"]


# ---------------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available).")
    ap.add_argument("--quick", action="store_true", help="Small sizes and few steps: a test of the script.")
    ap.add_argument("--budget", type=float, default=None, help="Seconds for the whole check [450; --quick 240].")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/gpu.md")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (data, runs) [a temporary folder].")
    args = ap.parse_args()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does, before torch starts OpenMP
    import torch

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sz = QUICK if args.quick else FULL
    budget = args.budget or (240.0 if args.quick else 450.0)
    t_start = time.time()
    end = t_start + budget
    work = args.work or Path(tempfile.mkdtemp(prefix="cmemd_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    header = [
        "# GPU readiness check" + (" (quick mode: small sizes, a test of the script; numbers mean nothing)" if args.quick else ""),
        "",
        f"`python bench/gpu_check.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"device {dev}; budget {budget:.0f} s. Model rows: {sz.arch} width {sz.width}, {sz.height}x{sz.img_width}, "
        f"{sz.P} ids x ({sz.K} visible + {sz.K} thermal) = {2 * sz.P * sz.K} images per step, `sysu_cmemd` settings "
        "without ImageNet weights. Written by bench/gpu_check.py section by section.",
        "",
    ]
    report = Report(args.out, header)

    def share(fraction: float, floor: float = 5.0) -> float:
        """This section's time box: its share of the budget (at least ``floor`` s), never past the end."""
        left = end - time.time()
        return 0.0 if left <= 0 else min(left, max(floor, budget * fraction))

    report.run("environment", 30.0, lambda s: section_env(s, dev))
    report.run("optimal transport (emd, sinkhorn)", share(0.06), lambda s: section_ot(s, dev, sz))
    report.run("losses (CM-EMD objective)", share(0.06), lambda s: section_losses(s, dev, sz))
    variants = ([("none", False), ("none", True), ("bf16", False), ("bf16", True), ("fp16", False), ("fp16", True)]
                if dev.type == "cuda" else [("none", False), ("none", True), ("bf16", False)])
    b = share(0.22)
    report.run(f"model forward/backward on {dev.type}", b,
               lambda s: model_rows(s, dev, sz, variants, sz.model_steps, time.time() + b - 5))
    report.run("evaluation (SYSU-MM01 sizes)", share(0.05), lambda s: section_eval(s, dev, sz))
    b = share(0.08)
    report.run("re-ranking (k-reciprocal)", b, lambda s: section_rerank(s, dev, sz, time.time() + b * 0.5))
    b = share(0.35)
    report.run("training (paper model, synthetic data)", b, lambda s: section_train(s, dev, sz, work, time.time() + b - 5))
    if dev.type == "cuda":
        b = share(0.06)
        report.run("DDP launch", b, lambda s: section_ddp(s, dev, sz, work, time.time() + b - 5))
        b = max(0.0, end - time.time() - 3)
        cpu = torch.device("cpu")
        report.run("model forward/backward on CPU (comparison)", b,
                   lambda s: model_rows(s, cpu, sz, [("none", False), ("bf16", False)], sz.cpu_model_steps,
                                        time.time() + b - 5))
    else:
        report.sections.append(Section("model forward/backward on CPU (comparison)", "the device is the CPU: see above"))
    report.footer += ["", f"Finished in {time.time() - t_start:.0f} s."]
    report.write()
    print(f"report: {args.out}")
    failed = [s.title for s in report.sections if s.status.startswith(("FAILED", "MISMATCH"))]
    if failed:
        print(f"FAILED or MISMATCH: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
