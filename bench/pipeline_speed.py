"""Images/s of the training loader: decode vs. cache, 0 vs. 2 workers.

    python bench/pipeline_speed.py                 # ~1,000 generated 128x64 JPEGs in a temp dir
    python bench/pipeline_speed.py --data ROOT     # every *.jpg/*.png under ROOT (pid = parent folder)

Writes docs/results/pipeline_speed.md (command, machine, table, ratios against the
decode/0-worker run of the same process).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cmemd.data.dataset import build_train_loader
from cmemd.data.records import ImageRecord


def generate(root: Path, n_ids: int, per_modality: int, seed: int = 0) -> list[ImageRecord]:
    """Smooth random images (noise would make JPEG decoding unrealistically slow)."""
    rng = np.random.default_rng(seed)
    recs = []
    for pid in range(n_ids):
        for mod in ("visible", "thermal"):
            for k in range(per_modality):
                small = rng.integers(0, 256, (16, 8, 3 if mod == "visible" else 1), dtype=np.uint8)
                im = Image.fromarray(small.squeeze(-1) if mod == "thermal" else small).resize((64, 128), Image.Resampling.BICUBIC)
                p = root / f"{pid:04d}_{mod}_{k}.jpg"
                im.save(p, quality=90)
                recs.append(ImageRecord(str(p), pid, 1 if mod == "visible" else 3, mod))
    return recs


def from_folder(root: Path) -> list[ImageRecord]:
    """Records from a folder: pid from the parent folder name, alternate files as thermal.

    Only the loader's throughput is measured, so the modality split need not be the real one.
    """
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    pids = {d: i for i, d in enumerate(sorted({p.parent for p in files}))}
    return [ImageRecord(str(p), pids[p.parent], 1, ("visible", "thermal")[i % 2]) for i, p in enumerate(files)]


def measure(records, *, use_cache: bool, workers: int, cache_dir: Path, args) -> tuple[float, int]:
    loader = build_train_loader(
        records, height=args.height, width=args.width, P=args.P, K=args.K, seed=0, num_workers=workers,
        use_cache=use_cache, cache_dir=cache_dir, channel_aug=0.5, random_erasing=0.5,
        persistent_workers=True,  # steady state: worker start-up is paid once, not per epoch
    )
    n = 0
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            n += batch.images.shape[0]
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="folder of images (default: generate JPEGs)")
    ap.add_argument("--ids", type=int, default=100)
    ap.add_argument("--per-modality", type=int, default=5, help="images per identity and modality when generating")
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("-P", type=int, default=8)
    ap.add_argument("-K", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/results/pipeline_speed.md")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the loader's own parallelism is what is measured

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data is None:
            (tmp / "img").mkdir()
            records = generate(tmp / "img", args.ids, args.per_modality)
            source = f"{len(records)} generated 128x64 JPEGs ({args.ids} ids x {args.per_modality} per modality)"
        else:
            records = from_folder(args.data)
            source = f"{len(records)} images under {args.data}"
        t0 = time.perf_counter()
        from cmemd.data.cache import build_cache

        build_cache([r.path for r in records], args.height, args.width, cache_dir=tmp / "cache", progress=False)
        build_s = time.perf_counter() - t0

        rows = []
        for use_cache in (False, True):
            for workers in (0, 2):
                ips, n = measure(records, use_cache=use_cache, workers=workers, cache_dir=tmp / "cache", args=args)
                rows.append((use_cache, workers, ips, n))
                print(f"cache={use_cache!s:5} workers={workers}: {ips:8.1f} images/s ({n} images)", flush=True)

    ref = rows[0][2]
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], Path.cwd())] + sys.argv[1:])
    lines = [
        "# Training loader throughput",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, torch threads 1 in the main process; "
        f"1-min load average at the end {os.getloadavg()[0]:.1f} (other jobs were sharing the cores)",
        "",
        f"Data: {source}; output {args.height}x{args.width}, batch P={args.P} x (K={args.K} visible + {args.K} thermal), "
        f"{args.epochs} epochs, persistent workers (start-up included); train transforms with pad/crop/flip, channel aug 0.5, random erasing 0.5.",
        f"Building the cache took {build_s:.2f} s (not included below).",
        "",
        "| cache | workers | images/s | vs. decode, 0 workers |",
        "|---|---|---|---|",
    ]
    for use_cache, workers, ips, _ in rows:
        lines.append(f"| {'on' if use_cache else 'off'} | {workers} | {ips:.0f} | {ips / ref:.2f}x |")
    lines += ["", "Numbers from one run on a shared machine; compare ratios, not absolute rates, across machines. "
              "With 2 cores, workers compete with the main process (collation, and here other jobs), so they "
              "help only when decoding dominates and cores are free.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
