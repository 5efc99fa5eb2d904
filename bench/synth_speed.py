"""Speed of the synthetic generator, single process.

Run: .venv/bin/python bench/synth_speed.py [--ids 20]

Measures (1) rendering only (arrays in memory) and (2) end to end (rendering + JPEG/BMP encoding +
file writes) for the SYSU and RegDB layouts, in the same process, and writes
docs/results/synth_speed.md. The ratio end-to-end / render-only says how much the file system and
encoders cost on this machine.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cmemd.data.synth import (SYSU_CAMERAS, SynthConfig, camera_look, generate_regdb, generate_sysu, make_scene,
                              render_image, sample_identity, sample_shot)


def render_only(cfg: SynthConfig, n: int) -> float:
    t0 = time.process_time()
    for i in range(n):
        cam = 1 + i % 6
        mod, scene_id, indoor = SYSU_CAMERAS[cam]
        ident = sample_identity(cfg.seed, 1 + i // 6, cfg.palette_size)
        look = camera_look(cfg.seed, cam, indoor, cfg.camera_gap, cfg.width)
        scene = make_scene(cfg.seed, scene_id, indoor, cfg.height, cfg.width)
        r = np.random.default_rng([cfg.seed, i])
        render_image(ident, sample_shot(r, cfg, look.view_bias), mod, scene, look, cfg, r)
    return n / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", type=int, default=20)
    ap.add_argument("--out", default="docs/results/synth_speed.md")
    args = ap.parse_args()
    cfg = SynthConfig(ids=args.ids, images_per_camera=(3, 5))
    render_only(cfg, 30)  # warm caches (scenes, grids)
    r_only = render_only(cfg, 600)
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.process_time()
        s = generate_sysu(tmp / "sysu", cfg)
        sysu_rate = s["total"] / (time.process_time() - t0)
        t0 = time.process_time()
        g = generate_regdb(tmp / "regdb", SynthConfig(ids=args.ids))
        regdb_rate = g["total"] / (time.process_time() - t0)
    finally:
        shutil.rmtree(tmp)
    rows = [
        ("render only (128x64, arrays)", 600, r_only),
        (f"SYSU layout end to end (JPEG), {args.ids} ids", s["total"], sysu_rate),
        (f"RegDB layout end to end (BMP), {args.ids} ids", g["total"], regdb_rate),
    ]
    lines = [
        "# Synthetic generator speed (single process)",
        "",
        f"Command: `.venv/bin/python bench/synth_speed.py --ids {args.ids}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, numpy {np.__version__}. "
        "Rates use CPU time of this process (time.process_time), so other jobs on the shared 2-core machine do not distort them; wall time under contention is longer.",
        "",
        "| what | images | images/s |",
        "|---|---|---|",
        *[f"| {name} | {n} | {rate:.0f} |" for name, n, rate in rows],
        "",
        f"End to end / render only: {sysu_rate / r_only:.2f} (SYSU), {regdb_rate / r_only:.2f} (RegDB).",
        "A full SYSU-size set (491 ids, about 40k images) therefore takes about "
        f"{40000 / sysu_rate / 60:.1f} min on one core; `--workers N` divides that.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
