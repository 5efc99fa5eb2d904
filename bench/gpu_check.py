"""GPU check: every CUDA path of cmemd as pass/fail rows, each with its criterion and tolerance.

    python bench/gpu_check.py                       # on a GPU machine: under 8 minutes, writes docs/results/gpu.md
    python bench/gpu_check.py --smoke               # every row at tiny sizes on the CPU: a test of the script
    python bench/gpu_check.py --budget 300 --out /tmp/gpu.md
    python3 bench/gpu_check.py --out $OUT/gpu.md    # a checkout without `pip install`: the sources under src/ are used

Each row runs under its own time budget and the whole check under a global deadline (``--budget``); the markdown
report and its JSON twin are rewritten after every row, rows that the deadline leaves no time for are recorded as
``not run: deadline``, and a watchdog thread writes the report and exits if a row hangs inside a call that cannot be
interrupted. Exit status: 0 every row passed (or was skipped for a stated reason), 1 a row FAILED, 2 none failed but
the deadline left rows not run.

Rows (criteria in the report's table; sizes of the paper model: ResNet-50, 288x144, 8 ids x (4 + 4) = 64 images):

- environment: the device is usable (CUDA present when asked for; bf16 supported for the bf16 rows);
- exact EMD at K=4 and K=8 on the device against a brute force over all K! permutations (the optimum of a uniform
  K x K problem is a permutation), and Sinkhorn's row/column marginal errors;
- the CM-EMD objective on the device against CPU on the same model output; gradients finite;
- AMP on a fixed batch from the same initial weights: bf16 and fp16 (with its GradScaler) against fp32 step by step
  (loss within a stated tolerance, weights updated at every step, the scale never lowered = no skipped step);
- host-device synchronisations per training step (``torch.cuda.set_sync_debug_mode``) and the GPU's idle fraction
  during a step (``torch.profiler``: time with no kernel or copy running);
- training-step time with cuDNN autotuning off and on (fp32, bf16 + channels_last): the setting users get
  (``run.cudnn_benchmark``: on for CUDA training unless ``run.deterministic``) and the one they get without it;
- peak memory at 64 and 128 images per step, fp32 and bf16;
- feature extraction with the real test loader (the data settings' workers, the decoded-image cache, pinned memory)
  on synthetic SYSU-layout data: throughput, and features equal to a plain (no workers, no cache) extraction;
- resume on the device with ``run.deterministic=true``: a run crashed mid-epoch and resumed continues exactly as an
  uninterrupted one (step, sampler position, per-step losses and final weights), in a fresh process so that
  ``CUBLAS_WORKSPACE_CONFIG`` is set before CUDA starts;
- a 2-process DDP launch (NCCL on 2+ GPUs, else gloo on the CPU at small sizes) with ``loss.lambda_dl=0``,
  ``run.max_minutes`` stopping it after the first epoch, evaluation on, and ``--resume`` to the end;
- training (``cmemd.app.train.train``, the sysu_cmemd settings without ImageNet weights) on the synthetic data for two
  epochs: img/s with autotuning off and on, and the projected time of one SYSU-MM01 epoch and of the 80-epoch recipe.

``--smoke`` runs every row at tiny sizes (ResNet-18 width 8, 32x16, 2 ids x (2 + 2)) on the CPU so that the test
suite exercises every row's code; its numbers mean nothing, and the rows that only a GPU can judge (synchronisations,
idle time, memory) say so.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import cmemd  # noqa: F401
except ImportError:  # a machine with the checkout but without `pip install`: use the sources (and tell subprocesses)
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)

# SYSU-MM01's training set (the released split: train + val ids, as the field trains) and test set
SYSU_VISIBLE, SYSU_THERMAL, SYSU_TEST_IMAGES = 22258, 11909, 3803 + 6775
RECIPE_EPOCHS = 80
SYNC_LIMIT = 3  # host-device synchronisations per non-logging training step (docs/results/speed.md)
IDLE_LIMIT = 0.30  # fraction of a training step with no kernel or copy running on the GPU
SCALER_INIT_SCALE = 2.0 ** 16  # torch.amp.GradScaler's default
SINKHORN_MARGINAL_LIMIT = 1e-3  # L1 marginal error of cmemd.ot.sinkhorn at the loss's settings (0.1% of the mass)


# ---------------------------------------------------------------------------------------------------- rows

class RowFailed(Exception):
    """A row's criterion does not hold."""


class RowTimeout(BaseException):
    """A row's time box ran out (a BaseException, so that no ``except Exception`` on the way swallows it)."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise RowFailed(message)


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise RowTimeout in this (main) thread after ``seconds`` (between Python bytecodes)."""
    def on_alarm(signum, frame):
        raise RowTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclasses.dataclass
class Row:
    section: str
    name: str
    criterion: str
    budget: float
    status: str = "not run"  # pass | FAIL: why | skipped: why | not judged: why | not run: deadline
    measured: str = ""
    seconds: float = 0.0
    lines: list = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAIL")

    @property
    def incomplete(self) -> bool:
        return self.status.startswith(("not run", "running"))


class Check:
    """Runs rows under their budgets and the global deadline; rewrites the report after each row."""

    def __init__(self, out: Path, header: list[str], budget: float, grace: float = 25.0) -> None:
        self.out, self.header, self.rows, self.footer = out, header, [], []
        self.started = time.time()
        self.deadline = self.started + budget
        self.lock = threading.RLock()
        self.watchdog = threading.Timer(budget + grace, self._hung)
        self.watchdog.daemon = True
        self.watchdog.start()

    def _hung(self) -> None:
        for pgid in list(RUNNING_GROUPS):  # launches of the hung row (torchrun and its workers)
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        with self.lock:
            for r in self.rows:
                if r.status == "running":
                    r.status = ("FAIL: still running at the global deadline (hung in a call that a time box cannot "
                                "interrupt)")
                    r.seconds = time.time() - self.started
            self.footer.append(f"\nStopped by the watchdog {time.time() - self.started:.0f} s after the start.")
            self.write()
        print(f"gpu_check: watchdog: report written to {self.out}; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    def run(self, section: str, name: str, criterion: str, budget: float, fn: Callable[[Row], None]) -> Row:
        r = Row(section, name, criterion, budget)
        with self.lock:
            self.rows.append(r)
        left = self.deadline - time.time()
        if left < 1.0:
            r.status = "not run: deadline"
            self.write()
            print(f"-- {section} / {name}: {r.status}", flush=True)
            return r
        box = min(budget, left)
        print(f"== {section} / {name} (budget {box:.0f} s)", flush=True)
        r.status = "running"
        self.write()
        t0 = time.time()
        try:
            with time_box(box):
                fn(r)
            if r.status == "running":
                r.status = "pass"
        except RowFailed as e:
            r.status = f"FAIL: {e}"
        except RowTimeout:
            r.status = (f"FAIL: ran past its {budget:.0f} s budget" if box >= budget else
                        f"not run: deadline (cut after {box:.0f} s of its {budget:.0f} s budget)")
        except Exception as e:  # an error on a CUDA path is a finding, not the end of the check
            first = str(e).splitlines()[0][:300] if str(e) else ""
            r.status = f"FAIL: {type(e).__name__}: {first}"
            r.lines.append("```\n" + traceback.format_exc()[-3000:] + "```")
        r.seconds = time.time() - t0
        print(f"   {r.status} ({r.seconds:.1f} s){': ' + r.measured if r.measured else ''}", flush=True)
        self.write()
        return r

    def counts(self) -> dict[str, int]:
        kinds = ("pass", "FAIL", "skipped", "not judged", "not run")
        return {k: sum(r.status.startswith(k) for r in self.rows) for k in kinds}

    def exit_code(self) -> int:
        if any(r.failed for r in self.rows):
            return 1
        return 2 if any(r.incomplete for r in self.rows) else 0

    def write(self) -> None:
        with self.lock:
            c = self.counts()
            out = list(self.header)
            out += [f"Elapsed {time.time() - self.started:.0f} s. Rows: " + ", ".join(f"{v} {k}" for k, v in c.items())
                    + f". Exit status {self.exit_code()} (0 all passed, 1 a row failed, 2 rows not run).", ""]
            out += table(["#", "section", "row", "criterion", "measured", "status", "s"],
                         [[i + 1, r.section, r.name, r.criterion, r.measured, r.status, f"{r.seconds:.1f}"]
                          for i, r in enumerate(self.rows)])
            for i, r in enumerate(self.rows):
                if r.lines:
                    out += ["", f"### {i + 1}. {r.section}: {r.name}", ""] + r.lines
            out += self.footer
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_name(self.out.name + ".tmp")
            tmp.write_text("\n".join(out) + "\n")
            os.replace(tmp, self.out)
            js = {"elapsed_s": time.time() - self.started, "counts": c, "exit_status": self.exit_code(),
                  "rows": [{k: v for k, v in dataclasses.asdict(r).items() if k != "lines"} for r in self.rows]}
            tmp = self.out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(js, indent=1, default=str))
            os.replace(tmp, self.out.with_suffix(".json"))


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


# ---------------------------------------------------------------------------------------------------- sizes, builders

@dataclasses.dataclass(frozen=True)
class Sizes:
    name: str
    arch: str
    width: int
    height: int
    img_width: int
    P: int
    K: int
    num_stripes: int
    local_dim: int
    amp_steps: int  # steps compared in the AMP rows
    timed_steps: int  # timed steps per autotuning row
    profile_steps: int  # steps under the sync counter / the profiler
    train_steps: int  # steps per epoch of a training row (two epochs)
    resume_steps: int  # steps per epoch of the resume row (two epochs)
    ddp_steps: int  # steps per epoch of the DDP row (two epochs)
    synth_ids: int
    synth_images: tuple
    synth_size: Optional[tuple]  # (height, width) of the generated images; None: the generator's default
    ot_batch: int
    workers: int  # data.num_workers of the loader rows


FULL = Sizes("full", "resnet50", 64, 288, 144, 8, 4, 6, 512, amp_steps=3, timed_steps=10, profile_steps=5,
             train_steps=40, resume_steps=4, ddp_steps=2, synth_ids=40, synth_images=(6, 8), synth_size=None,
             ot_batch=8 * 13, workers=4)
SMOKE = Sizes("smoke", "resnet18", 8, 32, 16, 2, 2, 2, 16, amp_steps=2, timed_steps=1, profile_steps=1,
              train_steps=2, resume_steps=3, ddp_steps=2, synth_ids=12, synth_images=(3, 4), synth_size=(32, 16),
              ot_batch=4, workers=0)


def overrides(sz: Sizes, P: Optional[int] = None) -> list[str]:
    """The sysu_cmemd settings at these sizes, without ImageNet weights."""
    ov = ["model.pretrained=null", f"model.arch={sz.arch}", f"model.width={sz.width}", f"data.height={sz.height}",
          f"data.width={sz.img_width}", f"data.num_ids={P or sz.P}", f"data.num_instances={sz.K}",
          f"model.num_stripes={sz.num_stripes}", f"model.local_dim={sz.local_dim}", f"data.num_workers={sz.workers}"]
    if sz is SMOKE:
        ov += ["data.pad=2", "eval.trials=1", "eval.modes=[all]", "eval.batch_size=16"]
    return ov


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_scaler(dev):
    import torch

    return torch.amp.GradScaler(dev.type, init_scale=SCALER_INIT_SCALE)


def build(sz: Sizes, dev, *, amp: str = "none", channels_last: bool = False, seed: int = 0, P: Optional[int] = None):
    """(trainer, batch): the model, objective and optimiser `cmemd train` builds, and one fixed batch."""
    import torch

    from cmemd.app.train import model_config, objective_from_config
    from cmemd.config import load_config
    from cmemd.data.dataset import Batch
    from cmemd.engine.schedule import build_optimizer
    from cmemd.engine.trainer import Trainer
    from cmemd.layout import BatchLayout
    from cmemd.models import build_model

    P = P or sz.P
    cfg = load_config("sysu_cmemd", overrides(sz, P))
    torch.manual_seed(seed)
    model = build_model(model_config(cfg, 64)).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    opt = build_optimizer(model, o.optimizer, lr=o.lr, backbone_lr=o.backbone_lr, weight_decay=o.weight_decay,
                          momentum=o.momentum, nesterov=o.nesterov)
    trainer = Trainer(model, objective_from_config(cfg).to(dev), opt, None, epochs=1,
                      out_dir=tempfile.mkdtemp(prefix="gpu_check_"), device=dev, amp=amp, channels_last=channels_last,
                      progress=False)
    g = torch.Generator().manual_seed(seed)
    n = P * sz.K
    images = torch.randn(2 * n, 3, sz.height, sz.img_width, generator=g)
    pids = torch.arange(P).repeat_interleave(sz.K).repeat(2)
    mods = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    trainer.model.train()
    # the layout the training loader's collate attaches: without it the step takes the slow path (host reads)
    layout = BatchLayout.from_labels(pids.tolist(), mods.tolist())
    return trainer, Batch(images, pids, mods, torch.arange(2 * n), layout)


def make_data(root: Path, sz: Sizes) -> Path:
    """Synthetic SYSU-layout data (generated once per work folder)."""
    from cmemd.data.synth import SynthConfig, generate_sysu

    if not (root / "synth_summary.json").is_file():
        extra = {"height": sz.synth_size[0], "width": sz.synth_size[1]} if sz.synth_size else {}
        generate_sysu(root, SynthConfig(ids=sz.synth_ids, images_per_camera=sz.synth_images, seed=0, **extra),
                      workers=min(8, os.cpu_count() or 1))
    return root


@dataclasses.dataclass
class Ctx:
    dev: Any
    sz: Sizes
    work: Path
    fp32_reference: Optional[dict] = None
    autotune: dict = dataclasses.field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.dev.type == "cuda"

    def data(self) -> Path:
        return make_data(self.work / "synth_sysu", self.sz)


def run_command(cmd: list[str], timeout: float, env: Optional[dict] = None, cwd: Optional[Path] = None):
    """(exit status or None when it timed out, output); the whole process group is killed on a timeout or when the
    row is stopped, so no worker of a hung launch outlives the check."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    RUNNING_GROUPS.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        RUNNING_GROUPS.discard(proc.pid)


RUNNING_GROUPS: set[int] = set()  # process groups of the launches running now (the watchdog kills them)


def child_env() -> dict:
    env = dict(os.environ, CMEMD_PROGRESS_INTERVAL="3600")
    env.setdefault("OMP_NUM_THREADS", "1" if (os.cpu_count() or 1) <= 4 else "4")
    return env


# ---------------------------------------------------------------------------------------------------- environment

def row_env(r: Row, ctx: Ctx) -> None:
    import torch

    import cmemd

    facts = [["cmemd", cmemd.__version__], ["torch", torch.__version__], ["python", sys.version.split()[0]],
             ["platform", platform.platform()], ["CPU cores", os.cpu_count()], ["device", str(ctx.dev)],
             ["CUDA available", torch.cuda.is_available()]]
    if ctx.cuda:
        require(torch.cuda.is_available(), "--device cuda but CUDA is not available")
        p = torch.cuda.get_device_properties(ctx.dev)
        facts += [["CUDA (torch build)", torch.version.cuda], ["cuDNN", torch.backends.cudnn.version()],
                  ["GPUs", torch.cuda.device_count()], ["GPU", p.name], ["GPU memory", f"{p.total_memory / 2**30:.1f} GiB"],
                  ["compute capability", f"{p.major}.{p.minor}"], ["bf16 supported", torch.cuda.is_bf16_supported()],
                  ["TF32 matmul / cuDNN", f"{torch.backends.cuda.matmul.allow_tf32} / {torch.backends.cudnn.allow_tf32}"]]
        r.measured = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}"
        require(torch.cuda.is_bf16_supported(), f"{p.name} does not support bf16 (the bf16 rows will fail)")
    else:
        r.measured = f"CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    r.lines += table(["item", "value"], facts)
    r.data.update({str(k): str(v) for k, v in facts})


# ---------------------------------------------------------------------------------------------------- optimal transport

def brute_force_emd(cost: np.ndarray) -> np.ndarray:
    """Optimal values of uniform K x K problems ``(B, K, K)``: the minimum over all K! permutation plans (Birkhoff:
    an optimal plan of a uniform square problem is a permutation matrix / K)."""
    B, K, _ = cost.shape
    perms = np.array(list(itertools.permutations(range(K))))
    best = np.empty(B)
    for b in range(B):
        best[b] = cost[b][np.arange(K), perms].sum(axis=1).min() / K
    return best


def row_emd(r: Row, ctx: Ctx, K: int) -> None:
    import torch

    from cmemd import ot

    B = ctx.sz.ot_batch if K == 4 else max(4, ctx.sz.ot_batch // 4)
    cost = torch.rand(B, K, K, generator=torch.Generator().manual_seed(K))
    c_dev = cost.to(ctx.dev)
    res = ot.emd(c_dev)
    t0 = time.perf_counter()
    for _ in range(3):
        ot.emd(c_dev)
    sync(ctx.dev)
    ms = (time.perf_counter() - t0) / 3 * 1e3
    best = brute_force_emd(cost.double().numpy())
    value = res.value.double().cpu().numpy()
    plan = res.plan.double().cpu()
    err = float(np.abs(value - best).max())
    marg = max(float((plan.sum(-1) - 1 / K).abs().max()), float((plan.sum(-2) - 1 / K).abs().max()))
    r.measured = f"{B} problems: max |value - brute force| {err:.1e}, marginal error {marg:.1e}, {ms:.2f} ms"
    r.data.update(max_value_error=err, marginal_error=marg, ms=ms, problems=B)
    require(err <= 1e-5, f"EMD value off the brute-force optimum by {err:.2e} (> 1e-5)")
    require(marg <= 1e-6 and float(plan.min()) >= 0, f"plan is not a transport plan (marginal error {marg:.2e})")


def row_sinkhorn(r: Row, ctx: Ctx) -> None:
    import torch

    from cmemd import ot

    worst_row = worst_col = below = 0.0
    parts = []
    for K in (4, 8):
        cost = torch.rand(ctx.sz.ot_batch, K, K, generator=torch.Generator().manual_seed(10 + K))
        res = ot.sinkhorn(cost.to(ctx.dev))
        plan = res.plan.double().cpu()
        row_err = float((plan.sum(-1) - 1 / K).abs().sum(-1).max())
        col_err = float((plan.sum(-2) - 1 / K).abs().sum(-1).max())
        # an (almost) feasible plan cannot cost less than the exact optimum
        gap = float((torch.from_numpy(brute_force_emd(cost.double().numpy())) - res.value.double().cpu()).max())
        worst_row, worst_col, below = max(worst_row, row_err), max(worst_col, col_err), max(below, gap)
        parts.append(f"K={K}: rows {row_err:.1e}, columns {col_err:.1e}")
    r.measured = "; ".join(parts) + f"; at most {below:.1e} below the exact optimum"
    if worst_row > 1e-6:
        r.measured += " (the solver's own tol 1e-6 not reached in its 200 iterations)"
    r.data.update(row_error=worst_row, column_error=worst_col, below_optimum=below)
    require(worst_row <= SINKHORN_MARGINAL_LIMIT and worst_col <= SINKHORN_MARGINAL_LIMIT,
            f"marginal L1 error rows {worst_row:.2e} / columns {worst_col:.2e} (> {SINKHORN_MARGINAL_LIMIT:g})")
    require(below <= 1e-4, f"Sinkhorn's value {below:.2e} below the exact EMD optimum (> 1e-4): not a transport plan")


# ---------------------------------------------------------------------------------------------------- losses, AMP

def row_losses(r: Row, ctx: Ctx) -> None:
    import torch

    from cmemd.engine.trainer import _to_float

    trainer, b = build(ctx.sz, ctx.dev)
    out = trainer.model(b.images.to(ctx.dev), b.modalities.to(ctx.dev))
    total, terms = trainer.objective(out, b.pids.to(ctx.dev), b.modalities.to(ctx.dev))
    total.backward()
    finite = all(bool(torch.isfinite(p.grad).all()) for p in trainer.model.parameters() if p.grad is not None)
    _, terms_cpu = trainer.objective.to("cpu")(to_cpu(_to_float(out)), b.pids, b.modalities)
    rows = [[k, float(v), float(terms_cpu[k]), abs(float(v) - float(terms_cpu[k])) / max(1.0, abs(float(terms_cpu[k])))]
            for k, v in terms.items() if k in terms_cpu]
    worst = max((x[3] for x in rows), default=0.0)
    r.lines += table(["term", str(ctx.dev), "CPU (same model output)", "relative difference"], rows)
    r.measured = f"worst relative difference {worst:.1e}; gradients {'finite' if finite else 'NOT FINITE'}"
    r.data.update(worst=worst, grads_finite=finite)
    require(finite, "non-finite gradients")
    require(worst <= 1e-3, f"loss terms differ from CPU by {worst:.2e} relative (> 1e-3)")


def to_cpu(obj: Any) -> Any:
    """A model output (tensors, lists, dataclasses of them) on the CPU."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(o) for o in obj)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


def amp_steps(ctx: Ctx, amp: str, steps: int, scaler: bool = False) -> dict:
    """Per-step losses of ``steps`` updates on one fixed batch from fixed initial weights; with ``scaler`` the
    GradScaler's scale after each step and the steps it skipped (it lowers the scale when it skips one)."""
    import torch

    trainer, batch = build(ctx.sz, ctx.dev, amp=amp)
    if scaler:  # fp16's own scaler, or (the CPU has no fp16) a scaler on bf16 so that the smoke row runs this code
        trainer.scaler = make_scaler(ctx.dev)
    probe = [p for p in trainer.model.parameters() if p.requires_grad][-1]
    losses, scales, skipped, updated = [], [], 0, 0
    for _ in range(steps):
        before = probe.detach().clone()
        s0 = trainer.scaler.get_scale() if trainer.scaler is not None else None
        losses.append(float(trainer.forward_backward(batch)["loss"]))
        updated += int(not torch.equal(before, probe.detach()))
        if trainer.scaler is not None:
            scales.append(float(trainer.scaler.get_scale()))
            skipped += int(scales[-1] < s0)
    return dict(losses=losses, scales=scales, skipped=skipped, updated=updated)


def row_amp(r: Row, ctx: Ctx, amp: str, tol: float) -> None:
    steps = ctx.sz.amp_steps
    if ctx.fp32_reference is None:
        ctx.fp32_reference = amp_steps(ctx, "none", steps)
    ref = ctx.fp32_reference
    use_scaler = amp == "fp16" or (amp == "bf16+scaler")
    run_amp = "bf16" if amp.startswith("bf16") else amp
    got = amp_steps(ctx, run_amp, steps, scaler=use_scaler)
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got["losses"], ref["losses"])]
    r.lines += table(["step", "fp32 loss", f"{amp} loss", "relative difference"] + (["scale after"] if use_scaler else []),
                     [[i + 1, ref["losses"][i], got["losses"][i], rel[i]] + ([got["scales"][i]] if use_scaler else [])
                      for i in range(steps)])
    r.measured = (f"max relative loss difference {max(rel):.1e} over {steps} steps; weights updated at "
                  f"{got['updated']}/{steps} steps" + (f"; {got['skipped']} skipped, scale {got['scales'][0]:g} -> "
                                                        f"{got['scales'][-1]:g}" if use_scaler else ""))
    r.data.update(relative=rel, **got)
    require(all(math.isfinite(x) for x in got["losses"]), f"non-finite {amp} loss: {got['losses']}")
    if use_scaler:
        require(got["skipped"] == 0, f"the GradScaler skipped {got['skipped']} of {steps} steps (inf/NaN gradients)")
        require(all(s >= SCALER_INIT_SCALE for s in got["scales"]), f"the scale fell: {got['scales']}")
    require(got["updated"] == steps, f"weights changed at {got['updated']} of {steps} steps")
    require(max(rel) <= tol, f"{amp} loss differs from fp32 by {max(rel):.2e} relative (> {tol:g})")


# ---------------------------------------------------------------------------------------------------- syncs, idle time

def count_syncs(fn: Callable[[], Any], dev) -> tuple[int, dict[str, int]]:
    """Synchronising CUDA calls made by ``fn()`` as ``torch.cuda.set_sync_debug_mode("warn")`` reports them, and
    how many came from each source line."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    hits = [w for w in caught if "synchroniz" in str(w.message)]
    where: dict[str, int] = {}
    for w in hits:
        key = f"{Path(w.filename).name}:{w.lineno}"
        where[key] = where.get(key, 0) + 1
    return len(hits), where


def row_syncs(r: Row, ctx: Ctx) -> None:
    if not ctx.cuda:
        r.status = "skipped: the CPU has no host-device synchronisations (counted on CUDA only)"
        r.measured = "-"
        return
    trainer, batch = build(ctx.sz, ctx.dev)
    for _ in range(2):
        trainer.forward_backward(batch)
    n = ctx.sz.profile_steps
    sync(ctx.dev)
    count, where = count_syncs(lambda: [trainer.forward_backward(batch) for _ in range(n)], ctx.dev)
    r.lines += table(["source line", "synchronisations"], sorted(where.items(), key=lambda kv: -kv[1])[:12])
    r.measured = f"{count / n:.1f} per step ({count} in {n} steps)"
    r.data.update(per_step=count / n, where=where)
    judge_syncs(count, n)


def judge_syncs(count: int, steps: int) -> None:
    require(count / steps <= SYNC_LIMIT, f"{count / steps:.1f} synchronisations per step (> {SYNC_LIMIT})")


def union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` clipped to ``[lo, hi]``."""
    total, end = 0.0, lo
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def idle_fraction(steps: list[tuple[float, float]], busy: list[tuple[float, float]]) -> float:
    """Fraction of the time from the first step's start to the last one's end (or the last busy interval's) with
    no busy interval running."""
    lo = min(a for a, _ in steps)
    hi = max([b for _, b in steps] + [b for _, b in busy])
    return 1.0 - union_length(busy, lo, hi) / max(hi - lo, 1e-9)


def row_idle(r: Row, ctx: Ctx) -> None:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    trainer, batch = build(ctx.sz, ctx.dev)
    for _ in range(2):
        trainer.forward_backward(batch)
    sync(ctx.dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(ctx.sz.profile_steps):
            with record_function("gpu_check_step"):
                trainer.forward_backward(batch)
        sync(ctx.dev)
    events = prof.events()
    steps = [(e.time_range.start, e.time_range.end) for e in events if e.name == "gpu_check_step"
             and e.device_type == DeviceType.CPU]
    if ctx.cuda:
        busy = [(e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA]
    else:  # the CPU is host and device: the share of the step outside aten operators (Python, the loss's glue)
        busy = [(e.time_range.start, e.time_range.end) for e in events
                if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    require(bool(steps), "the profiler recorded no step")
    idle = idle_fraction(steps, busy)
    def total(e):  # device_time_total in recent torch, cuda_time_total before
        return (getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)) if ctx.cuda else e.cpu_time_total

    top = sorted(((e.key, total(e)) for e in prof.key_averages()), key=lambda kv: -kv[1])[:10]
    r.lines += table(["operator", "total µs"], [[k, float(v)] for k, v in top])
    r.data.update(idle=idle, busy_intervals=len(busy))
    if not ctx.cuda:
        r.status = "not judged: on the CPU this is the share of a step outside aten operators"
        r.measured = f"{idle:.0%} outside aten operators"
        return
    r.measured = f"GPU idle {idle:.0%} of {ctx.sz.profile_steps} steps ({len(busy)} kernels and copies)"
    require(idle <= IDLE_LIMIT, f"the GPU is idle {idle:.0%} of a training step (> {IDLE_LIMIT:.0%})")


# ---------------------------------------------------------------------------------------------------- speed, memory

def row_autotune(r: Row, ctx: Ctx, amp: str, channels_last: bool, benchmark: bool) -> None:
    import torch

    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        trainer, batch = build(ctx.sz, ctx.dev, amp=amp, channels_last=channels_last)
        first = float(trainer.forward_backward(batch)["loss"])  # autotuning happens in the first steps
        for _ in range(2):
            trainer.forward_backward(batch)
        sync(ctx.dev)
        n = ctx.sz.timed_steps
        t0 = time.perf_counter()
        for _ in range(n):
            last = trainer.forward_backward(batch)
        sync(ctx.dev)
        sps = (time.perf_counter() - t0) / n
    finally:
        torch.backends.cudnn.benchmark = old
    key = (amp, channels_last)
    ctx.autotune[key, benchmark] = dict(first=first, sps=sps)
    imgs = batch.images.shape[0]
    epoch = sps * sysu_epoch_steps()
    r.measured = f"{sps:.3f} s/step, {imgs / sps:.0f} img/s, SYSU epoch {hms(epoch)}, recipe {hms(epoch * RECIPE_EPOCHS)}"
    r.data.update(s_per_step=sps, img_per_s=imgs / sps, first_loss=first)
    require(math.isfinite(first) and math.isfinite(float(last["loss"])), "non-finite loss")
    other = ctx.autotune.get((key, not benchmark))
    if other is not None:
        rel = abs(first - other["first"]) / max(abs(other["first"]), 1e-12)
        r.measured += f"; first loss vs autotuning {'off' if benchmark else 'on'}: {rel:.1e}"
        require(rel <= 1e-3, f"first-step loss differs from autotuning {'off' if benchmark else 'on'} by {rel:.2e} (> 1e-3)")


def sysu_epoch_steps() -> int:
    """Steps of one SYSU-MM01 epoch at 8 x 4: the largest modality // (P*K), as cmemd.data.sampler counts them."""
    return max(SYSU_VISIBLE, SYSU_THERMAL) // (8 * 4)


def row_memory(r: Row, ctx: Ctx) -> None:
    import torch

    rows, peaks = [], {}
    for P in (ctx.sz.P, 2 * ctx.sz.P):
        for amp in ("none", "bf16"):
            if ctx.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(ctx.dev)
            trainer, batch = build(ctx.sz, ctx.dev, amp=amp, P=P)
            for _ in range(2):
                trainer.forward_backward(batch)
            sync(ctx.dev)
            peak = torch.cuda.max_memory_allocated(ctx.dev) / 2**30 if ctx.cuda else float("nan")
            n = int(batch.images.shape[0])
            peaks[n, amp] = peak
            rows.append([n, "fp32" if amp == "none" else amp, peak])
            del trainer, batch
    r.lines += table(["images per step", "precision", "peak memory GiB"], rows)
    r.data["peaks"] = {f"{n} {a}": v for (n, a), v in peaks.items()}
    small, big = 2 * ctx.sz.P * ctx.sz.K, 4 * ctx.sz.P * ctx.sz.K
    if not ctx.cuda:
        r.status = "not judged: the CPU has no peak-memory counter (every setting ran)"
        r.measured = "ran at " + ", ".join(f"{n} img {'fp32' if a == 'none' else a}" for n, a in peaks)
        return
    total = torch.cuda.get_device_properties(ctx.dev).total_memory / 2**30
    r.measured = ", ".join(f"{n} img {'fp32' if a == 'none' else a}: {v:.1f} GiB" for (n, a), v in peaks.items())
    for amp in ("none", "bf16"):
        ratio = peaks[big, amp] / peaks[small, amp]
        require(ratio <= 2.2, f"{amp}: peak memory grows {ratio:.2f}x from {small} to {big} images (> 2.2x)")
    for n in (small, big):
        require(peaks[n, "bf16"] <= 1.05 * peaks[n, "none"], f"bf16 uses more memory than fp32 at {n} images")
    require(peaks[big, "none"] <= 0.9 * total, f"{big} images fp32 need {peaks[big, 'none']:.1f} of {total:.0f} GiB")


# ---------------------------------------------------------------------------------------------------- data, extraction

def row_data(r: Row, ctx: Ctx) -> None:
    t0 = time.time()
    root = ctx.data()
    summary = json.loads((root / "synth_summary.json").read_text())
    r.measured = f"{ctx.sz.synth_ids} ids, generated in {time.time() - t0:.1f} s"
    r.data["summary"] = summary


def row_extract(r: Row, ctx: Ctx) -> None:
    import torch

    from cmemd.app.evaluate import eval_loader_settings, evaluation_records
    from cmemd.app.train import model_config
    from cmemd.config import load_config
    from cmemd.engine.extract import extract_features
    from cmemd.models import build_model

    cfg = load_config("sysu_cmemd", overrides(ctx.sz) + [f"data.root={ctx.data()}", f"data.cache_dir={ctx.work / 'cache_test'}",
                                                         f"data.num_workers={max(1, ctx.sz.workers)}"])
    records = [rec for part in evaluation_records(cfg) for rec in part]
    torch.manual_seed(0)
    model = build_model(model_config(cfg, 64)).to(ctx.dev).eval()
    settings = eval_loader_settings(cfg, ctx.dev)
    kw = dict(height=cfg.data.height, width=cfg.data.width, batch_size=cfg.eval.batch_size, device=ctx.dev)
    times = []
    for _ in range(2):  # cold (decodes and builds the cache), warm (reads the cache)
        t0 = time.perf_counter()
        feats = extract_features(model, records, **kw, **settings)
        sync(ctx.dev)
        times.append(time.perf_counter() - t0)
    n_ref = min(len(records), 4 * cfg.eval.batch_size)
    t0 = time.perf_counter()
    plain = extract_features(model, records[:n_ref], **kw)
    sync(ctx.dev)
    t_plain = (time.perf_counter() - t0) / n_ref
    scale = max(1.0, float(np.abs(plain).max()))
    diff = float(np.abs(feats[:n_ref] - plain).max()) / scale
    warm = len(records) / times[1]
    r.measured = (f"{warm:.0f} img/s warm, {len(records) / times[0]:.0f} cold (cache build), {1 / t_plain:.0f} without "
                  f"workers/cache; SYSU test set ({SYSU_TEST_IMAGES:,} images) {SYSU_TEST_IMAGES / warm:.0f} s per "
                  f"evaluation; features vs plain {diff:.1e}")
    r.lines += [f"{len(records)} test images, loader settings {settings}, batch {cfg.eval.batch_size}."]
    r.data.update(img_per_s_warm=warm, img_per_s_cold=len(records) / times[0], img_per_s_plain=1 / t_plain,
                  relative_difference=diff, settings={k: str(v) for k, v in settings.items()})
    require(feats.shape[0] == len(records) and np.isfinite(feats).all(), "features missing or not finite")
    require(diff <= (1e-4 if ctx.cuda else 0.0),
            f"features with workers/cache/pinned memory differ from plain extraction by {diff:.2e} relative")


# ---------------------------------------------------------------------------------------------------- resume

class SimulatedCrash(Exception):
    pass


def resume_experiment(sz: Sizes, dev, work: Path) -> dict:
    """An uninterrupted 2-epoch run and the same run crashed mid-epoch 2 (after a checkpoint) and resumed, with
    ``run.deterministic=true``; returns their per-step losses, where the resume started and the weight difference."""
    import torch

    from cmemd.app.train import train
    from cmemd.config import load_config
    from cmemd.engine.checkpoint import load_checkpoint
    from cmemd.engine.trainer import Trainer

    S = sz.resume_steps
    ckpt_at = S + S // 2  # mid-epoch 2
    data = make_data(work / "synth_sysu", sz)

    def cfg(out: str, *extra: str):
        return load_config("sysu_cmemd", overrides(sz) + [
            f"data.root={data}", f"data.cache_dir={work / 'cache'}", f"data.steps_per_epoch={S}", "optim.epochs=2",
            "optim.warmup_epochs=1", "optim.milestones=[100]", f"run.out_dir={work / out}", f"run.device={dev}",
            "run.log_every=1", "run.deterministic=true", "run.diagnostics_ids=0", *extra])

    outcome = train(cfg("resume_a"), progress=False, evaluate_after=False)
    deterministic_sps = outcome.history[-1]["seconds"] / S
    real_fb, real_resume = Trainer.forward_backward, Trainer.resume
    resumed_at = {}

    def crashing(self, batch):
        if self.step >= ckpt_at:
            raise SimulatedCrash(f"simulated crash at step {self.step + 1}")
        return real_fb(self, batch)

    def recording(self, path):
        used = real_resume(self, path)
        resumed_at.update(epoch=self.epoch, batch=self.batches_done, step=self.step)
        return used

    Trainer.forward_backward = crashing
    try:
        train(cfg("resume_b", f"run.checkpoint_every_steps={ckpt_at}"), progress=False, evaluate_after=False)
        crashed = False
    except SimulatedCrash:
        crashed = True
    finally:
        Trainer.forward_backward = real_fb
    Trainer.resume = recording
    try:
        t0 = time.time()
        train(cfg("resume_b", f"run.checkpoint_every_steps={ckpt_at}"), resume=True, progress=False,
              evaluate_after=False)
        seconds = time.time() - t0
    finally:
        Trainer.resume = real_resume

    def steps(run: str) -> list[tuple[int, float]]:
        lines = (work / run / "metrics.jsonl").read_text().splitlines()
        return [(rec["step"], rec["loss"]) for rec in map(json.loads, lines) if rec.get("kind") == "step"]

    a, b = (load_checkpoint(work / run / "last.pt")[0]["model"] for run in ("resume_a", "resume_b"))
    diff = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
    env = json.loads((work / "resume_b" / "environment.json").read_text())
    return dict(crashed=crashed, resumed_at=resumed_at, expected_at=dict(epoch=1, batch=S // 2, step=ckpt_at),
                steps_a=steps("resume_a"), steps_b=steps("resume_b"), weight_diff=diff, total_steps=2 * S,
                backends=env.get("backends"), resumed_seconds=seconds, torch_cuda=str(torch.version.cuda),
                deterministic_s_per_step=deterministic_sps)


def judge_resume(res: dict) -> str:
    """The resume row's criterion; returns the measured summary or raises RowFailed."""
    a, b = res["steps_a"], res["steps_b"]
    n = res["total_steps"]
    require(res["crashed"], "the simulated crash did not happen (the run ended before it)")
    require(res["resumed_at"] == res["expected_at"],
            f"resumed at {res['resumed_at']}, expected the checkpoint's {res['expected_at']}")
    require([s for s, _ in a] == list(range(1, n + 1)), f"uninterrupted run logged steps {[s for s, _ in a]}")
    require([s for s, _ in b] == list(range(1, n + 1)), f"resumed run logged steps {[s for s, _ in b]} (each once?)")
    diffs = [(s, abs(la - lb)) for (s, la), (_, lb) in zip(a, b) if la != lb]
    require(not diffs, f"losses differ from the uninterrupted run from step {diffs[0][0]} on" if diffs else "")
    require(res["weight_diff"] == 0.0, f"final weights differ by {res['weight_diff']:.2e}")
    return (f"resumed at epoch {res['resumed_at']['epoch'] + 1} batch {res['resumed_at']['batch']} step "
            f"{res['resumed_at']['step']}; {n} steps, losses and final weights bit-identical")


def row_resume(r: Row, ctx: Ctx) -> None:
    """In a fresh process: CUBLAS_WORKSPACE_CONFIG must be set before CUDA starts there."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--resume-child", "--device", str(ctx.dev),
           "--sizes", ctx.sz.name, "--work", str(ctx.work)]
    status, out = run_command(cmd, timeout=r.budget - 5, env=child_env())
    tail = out[-2500:]
    if status is None:
        r.lines += ["```", tail, "```"]
        raise RowFailed(f"the resume child did not finish in {r.budget - 5:.0f} s")
    lines = [x for x in out.splitlines() if x.startswith("RESUME_RESULT ")]
    if status != 0 or not lines:
        r.lines += ["```", tail, "```"]
        raise RowFailed(f"the resume child exited {status}")
    res = json.loads(lines[-1][len("RESUME_RESULT "):])
    r.data.update({k: v for k, v in res.items() if not k.startswith("steps_")})
    r.lines += [f"Backends of the resumed run: {res.get('backends')}", ""]
    r.lines += table(["step", "uninterrupted loss", "resumed loss"],
                     [[s, la, lb] for (s, la), (_, lb) in zip(res["steps_a"], res["steps_b"])])
    r.measured = judge_resume(res) + (f"; deterministic training {res['deterministic_s_per_step']:.3f} s/step "
                                      f"(epoch 2 of {ctx.sz.resume_steps} steps, data loading included)")


def resume_child(args) -> int:
    import torch

    res = resume_experiment(SMOKE if args.sizes == "smoke" else FULL, torch.device(args.device), args.work)
    print("RESUME_RESULT " + json.dumps(res), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------- DDP

def ddp_command(ctx: Ctx, nproc: int, device: str, sz: Sizes, out_dir: Path, resume: bool) -> list[str]:
    """torchrun of `cmemd train` with loss.lambda_dl=0, a run.max_minutes that stops after the first epoch and the
    final evaluation on."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "cmemd",
           "train", "-c", "sysu_cmemd", *overrides(sz), f"data.root={ctx.data()}", f"data.cache_dir={ctx.work / 'cache'}",
           f"data.steps_per_epoch={sz.ddp_steps}", "optim.epochs=2", "optim.warmup_epochs=1", "optim.milestones=[100]",
           "loss.lambda_dl=0", "run.max_minutes=0.0001", "run.diagnostics_ids=0", "run.log_every=1",
           f"run.device={device}", f"run.out_dir={out_dir}"]
    return cmd + (["--resume"] if resume else [])


def first_error(out: str) -> str:
    """The first ``...Error: message`` line of a launch's output (a rank's, not the launcher's summary)."""
    for line in out.splitlines():
        line = line.split("]: ", 1)[-1].strip() if line.startswith("[rank") else line.strip()
        if re.match(r"^[\w.]*(Error|Exception): ", line) and "ChildFailedError" not in line:
            return line[:300]
    return "no error line in its output"


def logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [x["step"] for x in recs if x.get("kind") == "step"]


def row_ddp(r: Row, ctx: Ctx) -> None:
    import torch

    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if gpus >= 2:
        device, sz, how = "cuda", ctx.sz, f"NCCL on 2 of {gpus} GPUs"
    else:  # one GPU: two ranks cannot share it under NCCL; gloo on the CPU at small sizes tests the same logic
        device, sz, how = "cpu", SMOKE, f"gloo on the CPU at smoke sizes ({gpus} GPU(s))"
    out_dir = ctx.work / "ddp"
    env = child_env()
    per_launch = (r.budget - 10) / 2
    r.data["how"] = how
    for i, resume in enumerate((False, True)):
        t0 = time.time()
        status, out = run_command(ddp_command(ctx, 2, device, sz, out_dir, resume), timeout=per_launch, env=env)
        label = "--resume launch" if resume else "first launch"
        r.lines += [f"{label}: exit {status} in {time.time() - t0:.0f} s", "", "```", out[-2000:], "```", ""]
        require(status is not None, f"{label} did not finish in {per_launch:.0f} s (hung?); {how}")
        require(status == 0, f"{label} exited {status}; {how}; {first_error(out)}")
        steps = logged_steps(out_dir)
        if not resume:
            require(steps == list(range(1, sz.ddp_steps + 1)),
                    f"run.max_minutes did not stop the run after epoch 1: logged steps {steps}")
            require(not (out_dir / "results.json").exists(), "evaluated although training stopped early")
    require(steps == list(range(1, 2 * sz.ddp_steps + 1)), f"logged steps {steps}, each step once expected")
    require((out_dir / "results.json").is_file(), "no results.json: the final evaluation did not run")
    r.measured = f"{how}: stopped by run.max_minutes after epoch 1, resumed, {len(steps)} steps, evaluated"


# ---------------------------------------------------------------------------------------------------- training

def row_train(r: Row, ctx: Ctx, label: str, extra: list[str]) -> None:
    import torch

    from cmemd.app.train import train
    from cmemd.config import load_config

    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.dev)
    out_dir = ctx.work / f"train_{len(list(ctx.work.glob('train_*')))}"
    cfg = load_config("sysu_cmemd", overrides(ctx.sz) + [
        f"data.root={ctx.data()}", f"data.cache_dir={ctx.work / 'cache'}", f"data.steps_per_epoch={ctx.sz.train_steps}",
        "optim.epochs=2", "optim.warmup_epochs=1", "optim.milestones=[100]", f"run.out_dir={out_dir}",
        f"run.device={ctx.dev}", "run.log_every=10", "run.diagnostics_ids=0", *extra])
    outcome = train(cfg, evaluate_after=False, progress=False)
    env = json.loads((out_dir / "environment.json").read_text())
    last = outcome.history[-1]
    sps = last["seconds"] / ctx.sz.train_steps
    mem = torch.cuda.max_memory_allocated(ctx.dev) / 2**30 if ctx.cuda else float("nan")
    epoch = sps * sysu_epoch_steps()
    r.measured = (f"epoch 2: {sps:.3f} s/step, {last['img_per_s']:.0f} img/s, peak {mem:.1f} GiB; SYSU epoch "
                  f"{hms(epoch)}, {RECIPE_EPOCHS}-epoch recipe {hms(epoch * RECIPE_EPOCHS)}")
    r.lines += [f"Backends: {env.get('backends')}"]
    r.data.update(s_per_step=sps, img_per_s=last["img_per_s"], peak_gib=mem, backends=env.get("backends"))
    require(math.isfinite(float(last.get("loss", float("nan")))), "non-finite loss in epoch 2")
    want = "on" if ctx.cuda and "run.cudnn_benchmark=false" not in extra else "off"
    got = "on" if (env.get("backends") or {}).get("cudnn_benchmark") else "off"
    require(got == want, f"cuDNN autotuning {got} in the run, {want} expected")


# ---------------------------------------------------------------------------------------------------- main

def plan(check: Check, ctx: Ctx) -> None:
    cuda = ctx.cuda
    amp2 = ("fp16", 1e-2) if cuda else ("bf16+scaler", 5e-2)
    c = check
    c.run("environment", "device", "CUDA present when asked for; bf16 supported", 20, lambda r: row_env(r, ctx))
    for K in (4, 8):
        c.run("optimal transport", f"exact EMD, K={K}",
              "value = brute force over all K! permutation plans within 1e-5; marginals within 1e-6", 20,
              lambda r, K=K: row_emd(r, ctx, K))
    c.run("optimal transport", "Sinkhorn marginals (K=4, 8)",
          f"at the loss's settings (eps 0.05, 200 iterations) row and column L1 marginal errors <= "
          f"{SINKHORN_MARGINAL_LIMIT:g}; value not below the exact optimum by > 1e-4", 15,
          lambda r: row_sinkhorn(r, ctx))
    c.run("losses", "CM-EMD objective vs CPU", "every term within 1e-3 relative of CPU on the same output; "
          "gradients finite", 30, lambda r: row_losses(r, ctx))
    c.run("AMP", "bf16 vs fp32 (fixed batch)", "per-step loss within 5e-2 relative of fp32 over "
          f"{ctx.sz.amp_steps} steps; weights updated every step", 40, lambda r: row_amp(r, ctx, "bf16", 5e-2))
    c.run("AMP", f"{amp2[0]} + GradScaler vs fp32" + ("" if cuda else " (the CPU has no fp16)"),
          f"per-step loss within {amp2[1]:g} relative of fp32; no skipped step (the scale never falls below "
          f"{SCALER_INIT_SCALE:g}); weights updated every step", 30, lambda r: row_amp(r, ctx, *amp2))
    c.run("host and GPU", "synchronisations per step", f"<= {SYNC_LIMIT} per non-logging step "
          "(torch.cuda.set_sync_debug_mode)", 30, lambda r: row_syncs(r, ctx))
    c.run("host and GPU", "GPU idle time", f"GPU idle <= {IDLE_LIMIT:.0%} of a training step (torch.profiler)", 40,
          lambda r: row_idle(r, ctx))
    for amp, cl in (("none", False), ("bf16", True)) if cuda else (("none", False),):  # CPU: bf16 steps are slow
        for bench in (False, True):
            c.run("step time", f"{'fp32' if amp == 'none' else 'bf16 + channels_last'}, cuDNN autotuning "
                  f"{'on' if bench else 'off'}", "finite loss; first-step loss within 1e-3 of the other autotuning "
                  "setting", 30, lambda r, a=amp, cl=cl, b=bench: row_autotune(r, ctx, a, cl, b))
    c.run("memory", f"peak at {2 * ctx.sz.P * ctx.sz.K} and {4 * ctx.sz.P * ctx.sz.K} images, fp32 and bf16",
          "128 images <= 2.2x 64 images; bf16 <= 1.05x fp32; fits in 90% of the GPU", 45, lambda r: row_memory(r, ctx))
    c.run("data", "synthetic SYSU-layout data", "generated", 60, lambda r: row_data(r, ctx))
    c.run("evaluation", "feature extraction, real test loader", "features with workers + cache + pinned memory equal "
          f"plain extraction ({'1e-4 relative' if cuda else 'exactly'}); throughput reported", 60,
          lambda r: row_extract(r, ctx))
    c.run("resume", f"crash mid-epoch and resume on {ctx.dev.type}, run.deterministic=true",
          "resumed at the checkpoint's epoch/batch/step; every step logged once; per-step losses and final weights "
          "bit-identical to an uninterrupted run", 120, lambda r: row_resume(r, ctx))
    c.run("DDP", "2 processes, lambda_dl=0, max_minutes, evaluation, resume",
          "both launches exit 0 within their time limit; stops after epoch 1; resume runs every remaining step once "
          "and evaluates", 150, lambda r: row_ddp(r, ctx))
    for label, extra in (("fp32, cuDNN autotuning off", ["run.cudnn_benchmark=false"]),
                         ("fp32, cuDNN autotuning auto (on)", []),
                         ("bf16 + channels_last, autotuning auto (on)", ["optim.amp=bf16", "optim.channels_last=true"])):
        c.run("training (sysu_cmemd, synthetic data, 2 epochs)", label,
              "finite loss; the run's cuDNN autotuning as configured; projections reported", 70,
              lambda r, label=label, extra=extra: row_train(r, ctx, label, extra))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available; --smoke: cpu).")
    ap.add_argument("--smoke", "--quick", action="store_true", help="Tiny sizes: a test of the script on the CPU.")
    ap.add_argument("--budget", type=float, default=None,
                    help="Global deadline in seconds [420 (the watchdog exits at most 25 s after it); --smoke 240].")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/gpu.md")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (data, runs) [a temporary folder].")
    ap.add_argument("--resume-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="full", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does, before torch starts OpenMP
    if args.resume_child:
        return resume_child(args)
    import torch

    dev = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    sz = SMOKE if args.smoke else FULL
    budget = args.budget or (240.0 if args.smoke else 420.0)
    work = args.work or Path(tempfile.mkdtemp(prefix="cmemd_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    cmdline = "python bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        "# GPU check" + (" (smoke mode: tiny sizes, a test of the script; numbers mean nothing)" if args.smoke else ""),
        "",
        f"`{cmdline.strip()}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; device {dev}; global deadline "
        f"{budget:.0f} s. Model rows: {sz.arch} width {sz.width}, {sz.height}x{sz.img_width}, {sz.P} ids x ({sz.K} "
        f"visible + {sz.K} thermal) = {2 * sz.P * sz.K} images per step, the `sysu_cmemd` settings without ImageNet "
        "weights. Every row states its pass/fail criterion; written by bench/gpu_check.py after every row.",
        "",
    ]
    check = Check(args.out, header, budget)
    ctx = Ctx(dev, sz, work)
    t0 = time.time()
    plan(check, ctx)
    check.watchdog.cancel()
    check.footer += ["", f"Finished in {time.time() - t0:.0f} s."]
    check.write()
    code = check.exit_code()
    print(f"report: {args.out} (exit status {code}: {check.counts()})")
    return code


if __name__ == "__main__":
    sys.exit(main())
