"""Training throughput (images/s) of our models against an AGW-style layout, side by side in one process.

    python bench/train_speed.py                 # CPU default (ResNet-18 w32, 64x32) + the paper model at a small batch
    python bench/train_speed.py --device cuda   # the same rows on a GPU, at the paper's batch

The AGW-style reference (written here, minimal) keeps what the field's public AGW code keeps: three full ResNets
(a visible one and a thermal one of which only the stems run, and a shared one whose stem is unused), all in the
optimiser. Rows: our baseline layout (stem-only split, global stream) vs that reference (same computation), and
our full CM-EMD model; channels_last and AMP (bf16 on CPU, fp16 on CUDA) on/off. The CM-EMD loss's share of a
step is reported too. Writes docs/results/train_speed.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class AGWStyle(nn.Module):
    """Three full ResNet copies for two modality stems (the layout of the field's AGW baseline)."""

    def __init__(self, arch: str, width: int, num_classes: int) -> None:
        super().__init__()
        from cmemd.models.resnet import ARCHS

        self.visible = ARCHS[arch](width=width, last_stride=1)
        self.thermal = ARCHS[arch](width=width, last_stride=1)
        self.base = ARCHS[arch](width=width, last_stride=1)
        c = self.base.out_channels
        self.bn = nn.BatchNorm1d(c)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(c, num_classes, bias=False)

    @staticmethod
    def _stem(r, x):
        return r.maxpool(r.relu(r.bn1(r.conv1(x))))

    def forward(self, x_v, x_t):
        x = torch.cat([self._stem(self.visible, x_v), self._stem(self.thermal, x_t)])
        b = self.base
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        g = x.pow(3).mean((2, 3)).clamp(min=1e-6).pow(1 / 3)  # GeM p=3 as in our model
        return g, self.classifier(self.bn(g))


def _batch(P, K, h, w, device):
    n = 2 * P * K
    x = torch.randn(n, 3, h, w, device=device)
    pids = torch.arange(P, device=device).repeat_interleave(K).repeat(2)
    mods = torch.cat([torch.zeros(P * K), torch.ones(P * K)]).long().to(device)
    return x, pids, mods


def _time(step, iters, device, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def bench_rows(arch, width, h, w, P, K, iters, device, amp_dtype, rounds=3):
    from cmemd.engine.objective import Objective
    from cmemd.models import ModelConfig, build_model

    x, pids, mods = _batch(P, K, h, w, device)
    n = x.shape[0]
    rows = []

    def ours(cfg_kw, objective, channels_last=False, amp=False):
        model = build_model(ModelConfig(num_classes=395, arch=arch, width=width, **cfg_kw)).to(device)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                out = model(xx, mods)
            loss, _ = objective(out, pids, mods) if not isinstance(objective, str) else (
                nn.functional.cross_entropy(out.global_logits.float(), pids), None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step, sum(p.numel() for p in model.parameters())

    def agw(channels_last=False, amp=False):
        model = AGWStyle(arch, width, 395).to(device)
        xv, xt = x[: n // 2], x[n // 2:]
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            xv, xt = (t.contiguous(memory_format=torch.channels_last) for t in (xv, xt))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                _, logits = model(xv, xt)
            loss = nn.functional.cross_entropy(logits.float(), pids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step, sum(p.numel() for p in model.parameters())

    base_kw = dict(modality_specific_stages=1, use_local=False, test_feature="global")
    amp_name = str(amp_dtype).split('.')[-1]
    full = Objective()
    named = [
        ("AGW-style layout (3 full ResNets, CE)", agw()),
        ("ours, same computation (stem-only split, global, CE)", ours(base_kw, "ce")),
        ("ours, same, channels_last", ours(base_kw, "ce", channels_last=True)),
        (f"AGW-style layout, AMP {amp_name}", agw(amp=True)),
        (f"ours, same computation, AMP {amp_name}", ours(base_kw, "ce", amp=True)),
        (f"ours, same computation, channels_last + AMP {amp_name}", ours(base_kw, "ce", channels_last=True, amp=True)),
        ("ours, full CM-EMD model and loss", ours({}, full)),
        (f"ours, full, AMP {amp_name}", ours({}, full, amp=True)),
    ]
    # Round-robin: every row is timed once per round and the median round counts, so a slow spell of a shared
    # machine hits all rows alike instead of whichever ran during it.
    times: dict[str, list[float]] = {name: [] for name, _ in named}
    for r in range(rounds):
        for name, (step, _) in named:
            times[name].append(_time(step, iters, device, warmup=2 if r == 0 else 0))
    rows = [(name, float(np.median(times[name])), params) for name, (_, params) in named]
    t_ref, t_full = rows[0][1], rows[6][1]
    # the CM-EMD loss's share of a full step: forward + backward of the alignment term alone
    from cmemd.losses import CMEMDLoss

    model = build_model(ModelConfig(num_classes=395, arch=arch, width=width)).to(device)
    with torch.no_grad():
        out = model(x, mods)
    feats = [out.global_feat] + list(out.local_feats.unbind(1)) + list(out.accumulated_feats.unbind(1))
    feats = [f.detach().requires_grad_(True) for f in feats]
    loss_fn = CMEMDLoss()

    def loss_step():
        loss_fn(feats, pids, mods).loss.backward()
    t_loss = _time(loss_step, iters * 3, device)
    return rows, n, t_ref, t_full, t_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=3, help="steps per timing")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the rows; the median counts")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-paper", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    settings = [("CPU default: resnet18 width 32, 64x32, 8 x (4 + 4)", ("resnet18", 32, 64, 32, 8, 4))]
    if not args.skip_paper:
        P = 8 if device.type == "cuda" else 2
        settings.append((f"paper: resnet50 width 64, 288x144, {P} x (4 + 4)", ("resnet50", 64, 288, 144, P, 4)))
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    lines = ["# Training throughput", "", f"Command: `python bench/train_speed.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads{', GPU ' + gpu if gpu else ''}. Each timing: mean over {args.iters} steps "
             f"after 2 warm-up steps (forward, loss, backward, SGD step on random images); rows are timed round-robin, "
             f"{args.rounds} rounds, median shown.", ""]
    for title, (arch, width, h, w, P, K) in settings:
        rows, n, t_ref, t_full, t_loss = bench_rows(arch, width, h, w, P, K, args.iters, device, amp_dtype, args.rounds)
        lines += [f"## {title}", "", "| layout | parameters (M) | s / step | images/s | vs AGW-style |", "|---|---|---|---|---|"]
        for name, t, p in rows:
            lines.append(f"| {name} | {p / 1e6:.1f} | {t:.3f} | {n / t:.0f} | {t_ref / t:.2f}x |")
        lines += ["", f"CM-EMD loss (13 granularities, forward + backward) alone: {1000 * t_loss:.1f} ms = "
                  f"{100 * t_loss / t_full:.1f}% of one full training step.", ""]
        print("\n".join(lines[-(len(rows) + 6):]), flush=True)
    lines += ["Single run on a shared machine; compare ratios, not absolute rates."]
    out = ROOT / "docs" / "results" / ("train_speed.md" if device.type == "cpu" else "train_speed_gpu.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
