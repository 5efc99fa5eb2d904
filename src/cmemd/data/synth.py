"""A synthetic visible-thermal pedestrian dataset, written in the real datasets' layouts.

Why it looks the way it does (docs/benchmark.md): every attribute that
identifies a person leaves a trace in BOTH modalities. A person is a set of latent attributes
(body geometry, hair, garments with type / thickness / colour / pattern, shoes, carried objects).
The visible image shows colours under a camera's illumination; the thermal image shows a
temperature map computed from the same attributes (skin hot, thin fabric warm, thick fabric and
bags near ambient, dark absorbing fabric warmer, a weak emissivity contrast for patterns), then a
sensor model (automatic gain, blur, noise, fixed-pattern stripes). Colours come from one shared
palette so colour alone does not identify a person. Every image has its own viewpoint, walking
phase, box scale/shift, optional occlusion, background crop and lighting.

Determinism: every random draw comes from a ``numpy.random.Generator`` seeded by
``(seed, tag, id, camera, image)``, so the files do not depend on generation order or on the
number of worker processes; the same seed gives byte-identical files.

Public entry points: :class:`SynthConfig`, :func:`generate_sysu`, :func:`generate_regdb`,
:func:`generate_llcm`, :func:`sample_identity`, :func:`sample_shot`, :func:`render_image`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from cmemd.errors import ConfigError
from cmemd.folders import clear_folder

# Seed tags: the first word after the seed, so that streams for different purposes never collide.
_T_ID, _T_PLAN, _T_SPLIT, _T_SHOT, _T_CAM, _T_SCENE, _T_REGDB, _T_LLCM = 11, 12, 13, 14, 15, 16, 17, 18

# (name, RGB in 0..1, emissivity offset): the shared palette. The offset is the small,
# colour-specific thermal trace of a dye that is not explained by its luminance.
PALETTE: tuple[tuple[str, tuple[float, float, float], float], ...] = (
    ("black", (0.08, 0.08, 0.09), 0.00),
    ("white", (0.92, 0.92, 0.90), 0.02),
    ("grey", (0.50, 0.50, 0.52), -0.03),
    ("navy", (0.10, 0.14, 0.38), 0.04),
    ("red", (0.75, 0.12, 0.12), -0.05),
    ("blue", (0.20, 0.40, 0.80), 0.05),
    ("green", (0.18, 0.50, 0.22), -0.02),
    ("yellow", (0.92, 0.82, 0.22), 0.03),
    ("brown", (0.42, 0.26, 0.14), 0.06),
    ("beige", (0.82, 0.74, 0.58), -0.04),
    ("pink", (0.90, 0.55, 0.65), 0.01),
    ("olive", (0.40, 0.42, 0.16), -0.06),
    ("orange", (0.92, 0.50, 0.12), 0.04),
    ("purple", (0.45, 0.22, 0.55), -0.01),
    ("teal", (0.10, 0.50, 0.50), 0.02),
    ("khaki", (0.62, 0.58, 0.40), -0.03),
)
SKIN_TONES = ((0.95, 0.80, 0.68), (0.86, 0.67, 0.52), (0.70, 0.50, 0.36), (0.48, 0.33, 0.22), (0.32, 0.22, 0.15))
HAIR_COLOURS = ((0.06, 0.05, 0.04), (0.25, 0.16, 0.09), (0.55, 0.40, 0.22), (0.85, 0.75, 0.50), (0.62, 0.62, 0.62))

# SYSU-MM01 cameras: modality, scene (cam2 and cam3 watch the same room), indoor.
SYSU_CAMERAS: dict[int, tuple[str, int, bool]] = {
    1: ("visible", 1, True),
    2: ("visible", 2, True),
    3: ("thermal", 2, True),
    4: ("visible", 4, False),
    5: ("visible", 5, False),
    6: ("thermal", 6, False),
}
# RegDB: one aligned rig, camera 1 visible and camera 2 thermal, one scene.
REGDB_CAMERAS: dict[int, tuple[str, int, bool]] = {1: ("visible", 7, False), 2: ("thermal", 7, False)}
# LLCM: nine dual-mode cameras (an RGB and a NIR sensor under one number, one scene each); the
# authors' code lists no NIR cam3, so none is written. Cams 1-3 indoor.
LLCM_CAMERAS: dict[str, tuple[int, ...]] = {"visible": (1, 2, 3, 4, 5, 6, 7, 8, 9), "thermal": (1, 2, 4, 5, 6, 7, 8, 9)}

VIEWS = ("front", "back", "left", "right")

# Material labels of the label map.
BG, SKIN, HAIR, UP, UP2, LOW, LOW2, SHOE, BAG, HAT, OCC, STRAP = range(12)
N_LABELS = 12


@dataclass
class SynthConfig:
    """Size and difficulty of a synthetic dataset. Every field has a sensible default.

    Difficulty knobs: ``palette_size`` (colours in the shared palette, 2..16: fewer colours make
    colour less identifying), ``variation`` (0..1 strength of view / pose / box scale-shift
    changes between images of one person), ``occlusion_rate`` (probability that an image is partly
    occluded), ``thermal_noise`` (sensor noise std, as a fraction of the thermal range; blur grows
    with it too), ``camera_gap`` (0..1 how different the cameras' illumination / white balance /
    ambient temperature are), ``jpeg_quality`` (min, max quality of the written JPEGs).

    The difficulty defaults were calibrated so that a CPU model trained for a few minutes reaches
    clearly-above-chance but far-from-perfect thermal->visible accuracy (how, and what each setting
    gave: docs/benchmark.md).
    """

    ids: int = 300
    images_per_camera: tuple[int, int] = (10, 20)
    camera_presence: float = 0.8
    height: int = 128
    width: int = 64
    seed: int = 0
    palette_size: int = 4
    variation: float = 0.4
    occlusion_rate: float = 0.1
    thermal_noise: float = 0.01
    camera_gap: float = 0.2
    jpeg_quality: tuple[int, int] = (70, 95)
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        self.images_per_camera = tuple(int(v) for v in self.images_per_camera)  # type: ignore[assignment]
        self.jpeg_quality = tuple(int(v) for v in self.jpeg_quality)  # type: ignore[assignment]
        self.split = tuple(float(v) for v in self.split)  # type: ignore[assignment]
        lo, hi = self.images_per_camera
        checks = [
            (self.ids >= 3, "ids", "use at least 3 ids (one per split)"),
            (1 <= lo <= hi, "images_per_camera", "give (min, max) with 1 <= min <= max"),
            (0.0 < self.camera_presence <= 1.0, "camera_presence", "use a probability in (0, 1]"),
            (self.height >= 32 and self.width >= 16, "height/width", "use at least 32 x 16 pixels"),
            (2 <= self.palette_size <= len(PALETTE), "palette_size", f"use 2..{len(PALETTE)}"),
            (0.0 <= self.variation <= 1.0, "variation", "use a value in [0, 1]"),
            (0.0 <= self.occlusion_rate <= 1.0, "occlusion_rate", "use a probability in [0, 1]"),
            (0.0 <= self.thermal_noise <= 0.5, "thermal_noise", "use a value in [0, 0.5]"),
            (0.0 <= self.camera_gap <= 1.0, "camera_gap", "use a value in [0, 1]"),
            (1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100, "jpeg_quality", "give (min, max) in 1..100"),
            (len(self.split) == 3 and min(self.split) > 0, "split", "give three positive fractions"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise ConfigError(f"SynthConfig.{name} = {getattr(self, name.split('/')[0])!r} is invalid: {fix}")

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


# --------------------------------------------------------------------------- identities and shots


@dataclass
class Identity:
    """Latent attributes of one person, shared by both modalities."""

    pid: int
    height: float  # fraction of the box the person fills
    build: float
    head: float
    leg_ratio: float
    skin: tuple[float, float, float]
    hair_colour: tuple[float, float, float]
    hair: str  # short, long, bald
    sleeve: str  # none, short, long
    upper_type: str  # tshirt, shirt, jacket, coat
    thickness: float  # 0 thin .. 1 thick
    upper: int  # palette index
    upper2: int
    upper_pattern: str  # plain, stripes, checks, logo, twotone
    pattern_period: float
    lower_type: str  # shorts, trousers, skirt
    lower: int
    lower2: int
    lower_pattern: str  # plain, stripes, checks
    lower_thickness: float
    shoes: tuple[float, float, float]
    backpack: int | None
    shoulder_bag: int | None
    handbag: int | None
    hat: int | None
    gender: str
    colour_jitter: tuple[float, float, float]
    gait: float  # stride amplitude


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def sample_identity(seed: int, pid: int, palette_size: int = 12) -> Identity:
    """Draw the latent attributes of person ``pid`` (deterministic in ``(seed, pid)``)."""
    r = _rng(seed, _T_ID, pid)
    P = palette_size
    female = r.random() < 0.45
    upper_type = str(r.choice(["tshirt", "shirt", "jacket", "coat"], p=[0.35, 0.25, 0.25, 0.15]))
    thickness = {"tshirt": 0.1, "shirt": 0.35, "jacket": 0.7, "coat": 0.9}[upper_type] + r.uniform(-0.1, 0.1)
    sleeve = (
        "long" if upper_type in ("jacket", "coat") else str(r.choice(["none", "short", "long"], p=[0.15, 0.55, 0.3]))
    )
    lower_type = str(r.choice(["shorts", "trousers", "skirt"], p=([0.2, 0.45, 0.35] if female else [0.3, 0.7, 0.0])))
    upper = int(r.integers(P))
    upper2 = int((upper + r.integers(1, P)) % P)
    lower = int(r.integers(P))

    def maybe(p: float) -> int | None:
        return int(r.integers(P)) if r.random() < p else None

    ident = Identity(
        pid=pid,
        height=float(r.uniform(0.86, 1.0)),
        build=float(r.uniform(0.8, 1.25) * (0.92 if female else 1.0)),
        head=float(r.uniform(0.85, 1.15)),
        leg_ratio=float(r.uniform(0.44, 0.53)),
        skin=SKIN_TONES[int(r.integers(len(SKIN_TONES)))],
        hair_colour=HAIR_COLOURS[int(r.integers(len(HAIR_COLOURS)))],
        hair=str(r.choice(["short", "long", "bald"], p=([0.3, 0.68, 0.02] if female else [0.8, 0.1, 0.1]))),
        sleeve=sleeve,
        upper_type=upper_type,
        thickness=float(np.clip(thickness, 0.0, 1.0)),
        upper=upper,
        upper2=upper2,
        upper_pattern=str(
            r.choice(["plain", "stripes", "checks", "logo", "twotone"], p=[0.36, 0.16, 0.12, 0.18, 0.18])
        ),
        pattern_period=float(r.uniform(0.035, 0.07)),
        lower_type=lower_type,
        lower=lower,
        lower2=int((lower + r.integers(1, P)) % P),
        lower_pattern=str(r.choice(["plain", "stripes", "checks"], p=[0.7, 0.15, 0.15])),
        lower_thickness=float(r.uniform(0.2, 0.7)),
        shoes=(tuple(PALETTE[int(r.integers(P))][1])),  # type: ignore[arg-type]
        backpack=maybe(0.3),
        shoulder_bag=maybe(0.2),
        handbag=maybe(0.12),
        hat=maybe(0.15),
        gender="female" if female else "male",
        colour_jitter=tuple(float(v) for v in r.normal(0, 0.03, 3)),  # type: ignore[arg-type]
        gait=float(r.uniform(0.5, 1.0)),
    )
    return ident


@dataclass
class Shot:
    """Per-image nuisance: view, walking phase, box, occlusion, lighting, compression."""

    view: str
    phase: float
    scale: float
    cx: float  # fraction of width
    top: float  # fraction of height
    occlusion: tuple[str, float, int, float] | None  # kind, extent, palette index, temperature
    bg_offset: float  # 0..1 crop position in the scene panorama
    brightness: float
    ambient: float  # thermal ambient shift
    quality: int
    clutter: tuple[tuple[float, float, float, float, int, float], ...]  # x, y, w, h (fractions), colour, temp


def sample_shot(r: np.random.Generator, config: SynthConfig, view_bias: np.ndarray | Sequence[float]) -> Shot:
    """Draw the nuisance of one image. ``view_bias`` is the camera's view distribution."""
    v = config.variation
    if r.random() < v:
        view = VIEWS[int(r.integers(4))]
    else:
        view = VIEWS[int(r.choice(4, p=np.asarray(view_bias)))]
    scale = 0.95 - v * r.uniform(0.0, 0.16)
    if r.random() < 0.12 * v:  # a loose detector box that cuts the feet
        scale *= 1.15
    occ = None
    if r.random() < config.occlusion_rate:
        kind = str(r.choice(["bottom", "left", "right"], p=[0.5, 0.25, 0.25]))
        occ = (kind, float(r.uniform(0.15, 0.35)), int(r.integers(config.palette_size)), float(r.uniform(-0.1, 0.4)))
    clutter = tuple(
        (
            float(r.uniform(0, 1)),
            float(r.uniform(0.2, 0.9)),
            float(r.uniform(0.08, 0.3)),
            float(r.uniform(0.05, 0.3)),
            int(r.integers(config.palette_size)),
            float(r.uniform(-0.15, 0.3)),
        )
        for _ in range(int(r.integers(0, 3)))
    )
    return Shot(
        view=view,
        phase=float(r.uniform(0, 2 * np.pi)),
        scale=float(scale),
        cx=float(0.5 + v * r.uniform(-0.1, 0.1)),
        top=float((1 - scale) / 2 + v * r.uniform(-0.04, 0.04)),
        occlusion=occ,
        bg_offset=float(r.random()),
        brightness=float(r.uniform(0.8, 1.15)),
        ambient=float(r.normal(0, 0.05)),
        quality=int(r.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)),
        clutter=clutter,
    )


# --------------------------------------------------------------------------- geometry


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _box(yy, y0, y1, x0, x1):
    """Row / column slices of the grid covering [y0, y1] x [x0, x1] (shapes are small: skip the rest)."""
    h, w = yy.shape
    return (
        slice(max(0, int(y0) - 1), max(0, min(h, int(y1) + 2))),
        slice(max(0, int(x0) - 1), max(0, min(w, int(x1) + 2))),
    )


def _ellipse(yy, xx, cy, cx, ry, rx):
    out = np.zeros(yy.shape, bool)
    b = _box(yy, cy - ry, cy + ry, cx - rx, cx + rx)
    out[b] = ((yy[b] - cy) / ry) ** 2 + ((xx[b] - cx) / rx) ** 2 <= 1.0
    return out


def _trapezoid(yy, xx, y0, y1, cx0, cx1, hw0, hw1):
    out = np.zeros(yy.shape, bool)
    hw = max(hw0, hw1)
    b = _box(yy, y0, y1, min(cx0, cx1) - hw, max(cx0, cx1) + hw)
    t = (yy[b] - y0) / max(y1 - y0, 1e-3)
    out[b] = (t >= 0) & (t <= 1) & (np.abs(xx[b] - (cx0 + (cx1 - cx0) * t)) <= hw0 + (hw1 - hw0) * t)
    return out


def _capsule(yy, xx, p0, p1, r):
    """Mask of points within r of segment p0-p1 ((y, x) pairs), and the position t along it."""
    out = np.zeros(yy.shape, bool)
    tt = np.zeros(yy.shape, np.float32)
    b = _box(yy, min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r, min(p0[1], p1[1]) - r, max(p0[1], p1[1]) + r)
    y, x = yy[b], xx[b]
    dy, dx = p1[0] - p0[0], p1[1] - p0[1]
    n = dy * dy + dx * dx + 1e-6
    t = np.clip(((y - p0[0]) * dy + (x - p0[1]) * dx) / n, 0.0, 1.0)
    d2 = (y - p0[0] - t * dy) ** 2 + (x - p0[1] - t * dx) ** 2
    out[b] = d2 <= r * r
    tt[b] = t
    return out, tt


def render_labels(ident: Identity, shot: Shot, h: int, w: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Paint the person into a label map (``BG``, ``SKIN``, ``HAIR``, ``UP``...); z-order by view.

    Returns the label map and (cx, top, person height, half-width) for shading.
    """
    yy, xx = _grid(h, w)
    L = np.zeros((h, w), np.uint8)
    u = shot.scale * ident.height * h  # person height in pixels
    y0 = shot.top * h + (1 - ident.height) * shot.scale * h
    cx = shot.cx * w
    view = shot.view
    side = view in ("left", "right")
    facing = -1.0 if view == "left" else 1.0
    b = ident.build
    sw = (0.068 if side else 0.115) * u * b  # shoulder half width
    hw = (0.060 if side else 0.088) * u * b * (1.06 if ident.gender == "female" else 1.0)
    ys = y0 + 0.16 * u
    yh = y0 + (1 - ident.leg_ratio) * u
    yf = y0 + 0.975 * u
    head_cy, head_ry, head_rx = y0 + 0.072 * u, 0.062 * u * ident.head, 0.046 * u * ident.head
    s = np.sin(shot.phase)
    stride = 0.09 * u * ident.gait

    # --- parts as masks
    arm_r = (0.024 + 0.012 * ident.thickness * (ident.sleeve == "long")) * u * b
    leg_r = 0.034 * u * b
    arm_len = 0.33 * u
    arms = []
    for k, sgn in enumerate((-1.0, 1.0)):
        if side:
            a = 0.45 * ident.gait * s * (1 if k == 0 else -1)
            sh = (ys + 0.02 * u, cx + 0.2 * sw * sgn)
            hand = (sh[0] + arm_len * np.cos(a), sh[1] + facing * arm_len * np.sin(a))
        else:
            a = 0.25 * ident.gait * s * (1 if k == 0 else -1)
            sh = (ys + 0.02 * u, cx + sgn * (sw - arm_r * 0.6))
            hand = (sh[0] + arm_len * (0.93 - 0.12 * abs(a)), sh[1] + sgn * 0.05 * u)
        m, t = _capsule(yy, xx, sh, hand, arm_r)
        arms.append((m, t, hand))
    legs = []
    for k, sgn in enumerate((-1.0, 1.0)):
        if side:
            off = stride * s * (1 if k == 0 else -1)
            hip = (yh, cx + 0.1 * hw * sgn)
            foot = (yf - 0.02 * u * max(0.0, -off / max(stride, 1e-3)), cx + facing * off)
        else:
            lift = 0.035 * u * ident.gait * max(0.0, s * (1 if k == 0 else -1))
            hip = (yh, cx + sgn * hw * 0.5)
            foot = (yf - lift, cx + sgn * (hw * 0.55 + 0.01 * u))
        m, t = _capsule(yy, xx, hip, foot, leg_r)
        legs.append((m, t, foot))

    torso_bottom = yh + (0.2 * u if ident.upper_type == "coat" else 0.03 * u)
    torso = _trapezoid(
        yy, xx, ys - 0.012 * u, torso_bottom, cx, cx, sw, hw * (1.25 if ident.upper_type == "coat" else 1.05)
    )
    neck = _trapezoid(yy, xx, head_cy + 0.5 * head_ry, ys + 0.01 * u, cx, cx, 0.022 * u, 0.026 * u)
    head = _ellipse(yy, xx, head_cy, cx + (0.01 * u * facing if side else 0.0), head_ry, head_rx)

    def paint_arm(i: int) -> None:
        m, t, _hand = arms[i]
        sleeve_end = {"none": 0.0, "short": 0.38, "long": 0.93}[ident.sleeve]
        L[m] = SKIN
        L[m & (t < sleeve_end)] = UP

    def paint_leg(i: int) -> None:
        m, t, foot = legs[i]
        cover = {"shorts": 0.42, "trousers": 0.97, "skirt": 0.0}[ident.lower_type]
        L[m] = SKIN
        L[m & (t < cover)] = LOW
        L[_ellipse(yy, xx, foot[0], foot[1] + (0.02 * u * facing if side else 0.0), 0.02 * u, 0.035 * u)] = SHOE

    def paint_backpack_back() -> None:
        if ident.backpack is not None:
            L[_trapezoid(yy, xx, ys + 0.01 * u, yh - 0.03 * u, cx, cx, sw * 0.8, sw * 0.85)] = BAG

    # back-most: the far arm/leg in side view, long hair in front view, backpack in side view
    if side:
        paint_arm(1)
        paint_leg(1)
        if ident.backpack is not None:
            bx = cx - facing * (sw + 0.05 * u)
            L[_trapezoid(yy, xx, ys + 0.01 * u, yh - 0.05 * u, bx, bx, 0.06 * u, 0.065 * u)] = BAG
    if ident.hair == "long" and view != "back":
        L[_trapezoid(yy, xx, head_cy - 0.3 * head_ry, ys + 0.09 * u, cx, cx, head_rx * 1.15, head_rx * 1.3)] = HAIR
    if not side:
        paint_leg(0)
        paint_leg(1)
    else:
        paint_leg(0)
    # lower garment body: hips / skirt
    if ident.lower_type == "skirt":
        L[_trapezoid(yy, xx, yh - 0.03 * u, yh + 0.42 * (yf - yh), cx, cx, hw * 1.05, hw * 1.7)] = LOW
    else:
        L[_trapezoid(yy, xx, yh - 0.03 * u, yh + 0.06 * u, cx, cx, hw * 1.05, hw * 1.1)] = LOW
    if not side:
        paint_arm(0)
        paint_arm(1)
    L[neck] = SKIN
    L[torso] = UP
    # upper-garment pattern (second material), on the torso only
    period = ident.pattern_period * u
    pat = ident.upper_pattern
    if pat == "stripes":
        L[torso & (((yy - y0) // period) % 2 == 1)] = UP2
    elif pat == "checks":
        L[torso & ((((yy - y0) // period) + ((xx - cx + 10 * period) // period)) % 2 == 1)] = UP2
    elif pat == "twotone":
        L[torso & (yy > ys + 0.45 * (torso_bottom - ys))] = UP2
    elif pat == "logo" and view == "front":
        L[_trapezoid(yy, xx, ys + 0.06 * u, ys + 0.15 * u, cx, cx, 0.05 * u, 0.05 * u)] = UP2
    if ident.lower_pattern != "plain":
        lowm = L == LOW
        lp = period * 1.3
        if ident.lower_pattern == "stripes":
            L[lowm & (((yy - y0) // lp) % 2 == 1)] = LOW2
        else:
            L[lowm & ((((yy - y0) // lp) + ((xx - cx + 10 * lp) // lp)) % 2 == 1)] = LOW2
    if ident.upper_type == "jacket" and view == "front":  # open zip line
        L[torso & (np.abs(xx - cx) < 0.008 * u + 0.5)] = UP2 if pat == "plain" else UP
    # head and hair
    if view == "back":
        L[head] = HAIR if ident.hair != "bald" else SKIN
        if ident.hair == "long":
            L[_trapezoid(yy, xx, head_cy, ys + 0.09 * u, cx, cx, head_rx * 1.0, head_rx * 1.25)] = HAIR
    else:
        L[head] = SKIN
        if ident.hair != "bald":
            cap = _ellipse(
                yy,
                xx,
                head_cy - 0.25 * head_ry,
                cx - (0.012 * u * facing if side else 0),
                head_ry * 0.85,
                head_rx * 1.08,
            )
            L[cap & (yy < head_cy - (0.2 if not side else 0.0) * head_ry)] = HAIR
    if ident.hat is not None:
        L[
            _trapezoid(
                yy, xx, head_cy - 1.15 * head_ry, head_cy - 0.45 * head_ry, cx, cx, head_rx * 0.9, head_rx * 1.25
            )
        ] = HAT
    # carried objects
    if ident.backpack is not None:
        if view == "back":
            paint_backpack_back()
        elif view == "front":
            for sgn in (-1.0, 1.0):
                L[torso & (np.abs(xx - (cx + sgn * sw * 0.55)) < 0.012 * u + 0.4)] = STRAP
    if ident.shoulder_bag is not None:
        sgn = 1.0 if view != "back" else -1.0
        m, _ = _capsule(yy, xx, (ys, cx - sgn * sw * 0.7), (yh - 0.02 * u, cx + sgn * hw), 0.008 * u + 0.4)
        L[m & (torso | (L == LOW))] = STRAP
        bx = cx + sgn * (hw + 0.03 * u) * (0.6 if side else 1.0)
        L[_trapezoid(yy, xx, yh - 0.05 * u, yh + 0.06 * u, bx, bx, 0.045 * u, 0.05 * u)] = BAG
    if side:
        paint_arm(0)
    if ident.handbag is not None:
        hand = arms[0][2]
        L[_trapezoid(yy, xx, hand[0], hand[0] + 0.09 * u, hand[1], hand[1], 0.04 * u, 0.05 * u)] = BAG
    # occlusion
    if shot.occlusion is not None:
        kind, ext = shot.occlusion[0], shot.occlusion[1]
        if kind == "bottom":
            L[yy > h * (1 - ext)] = OCC
        elif kind == "left":
            L[xx < w * ext] = OCC
        else:
            L[xx > w * (1 - ext)] = OCC
    return L, (cx, y0, u, sw)


# --------------------------------------------------------------------------- scenes and cameras


@dataclass
class Scene:
    """A background panorama (3 widths wide) in colour and in temperature."""

    rgb: np.ndarray  # (h, 3w, 3) float32
    temp: np.ndarray  # (h, 3w) float32


@lru_cache(maxsize=32)
def make_scene(seed: int, scene: int, indoor: bool, h: int, w: int) -> Scene:
    """Walls / floor / pillars / doors of one camera scene; cam2 and cam3 share scene 2."""
    r = _rng(seed, _T_SCENE, scene)
    W = 3 * w
    yy, xx = np.mgrid[0:h, 0:W].astype(np.float32)
    horizon = h * r.uniform(0.45, 0.7)
    # muted surfaces: real scenes are mostly greyish, saturated colour is rare
    wall = r.uniform(0.35, 0.8) + r.uniform(-0.08, 0.08, 3)
    floor = r.uniform(0.2, 0.55) + r.uniform(-0.06, 0.06, 3)
    rgb = np.where((yy < horizon)[..., None], wall, floor).astype(np.float32)
    temp = np.where(yy < horizon, r.uniform(-0.1, 0.15), r.uniform(-0.05, 0.3 if not indoor else 0.1)).astype(
        np.float32
    )
    # perspective floor gradient and a few vertical structures
    rgb *= (0.85 + 0.3 * (yy / h))[..., None]
    for _ in range(int(r.integers(3, 7))):
        x0 = r.uniform(0, W)
        ww = r.uniform(0.05, 0.35) * w
        y1 = horizon + r.uniform(0, 0.3) * h
        y0 = r.uniform(0, 0.4) * h
        m = (xx >= x0) & (xx < x0 + ww) & (yy >= y0) & (yy < y1)
        rgb[m] = 0.5 * r.uniform(0.05, 0.95, 3) + 0.5 * r.uniform(0.1, 0.9)
        temp[m] = r.uniform(-0.2, 0.5)
    # floor tiles / texture lines
    period = r.uniform(6, 14)
    lines = (yy > horizon) & ((xx + (yy - horizon) * r.uniform(-1, 1)) % (period * 3) < 1.0)
    rgb[lines] *= 0.8
    # low-frequency texture (lighting falloff, stains) so that backgrounds are not flat
    tex = r.normal(0, 1, (h // 8 + 2, W // 8 + 2)).astype(np.float32)
    tex = np.kron(tex, np.ones((8, 8), np.float32))[:h, :W]
    tex = _blur(tex, 3)
    rgb *= (1.0 + 0.08 * tex)[..., None]
    temp += 0.05 * tex
    return Scene(rgb=rgb.astype(np.float32), temp=temp.astype(np.float32))


@dataclass
class CameraLook:
    wb: np.ndarray  # white-balance gains (3,)
    brightness: float
    contrast: float
    body_contrast: float  # thermal: person-minus-ambient scale (warm rooms flatten people)
    gamma: float
    view_bias: np.ndarray  # (4,) distribution over VIEWS
    stripes: np.ndarray  # (w,) fixed-pattern column noise (thermal)


@lru_cache(maxsize=64)
def camera_look(seed: int, cam: int, indoor: bool, gap: float, w: int, regdb: bool = False) -> CameraLook:
    r = _rng(seed, _T_CAM, cam + (100 if regdb else 0))
    return CameraLook(
        wb=1.0 + gap * r.uniform(-0.22, 0.22, 3) + (np.array([0.08, 0.0, -0.08]) * gap if indoor else 0.0),
        brightness=float(1.0 + gap * r.uniform(-0.25, 0.15) - (0.1 * gap if indoor else 0.0)),
        contrast=float(1.0 + gap * r.uniform(-0.25, 0.25)),
        body_contrast=float((0.75 if indoor else 1.0) * (1.0 + gap * r.uniform(-0.2, 0.2))),
        gamma=float(1.0 + gap * r.uniform(-0.3, 0.3)),
        view_bias=r.dirichlet(np.full(4, 0.8)),
        stripes=r.normal(0, 1, w).astype(np.float32),
    )


# --------------------------------------------------------------------------- rendering


def _material_tables(ident: Identity, shot: Shot, palette_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-label colour (N_LABELS, 3) and temperature (N_LABELS,) for this person and image."""
    jit = np.asarray(ident.colour_jitter, np.float32)

    def col(i: int) -> np.ndarray:
        return np.clip(np.asarray(PALETTE[i % palette_size][1], np.float32) + jit, 0, 1)

    def lum(c: np.ndarray) -> float:
        return float(0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2])

    def fabric(c_idx: int, thickness: float) -> float:
        c = col(c_idx)
        # insulation first; dark fabric absorbs and runs warmer (nonlinear); dye emissivity offset
        # (thin dark ~0.8, thin white ~0.6, thick dark ~0.45, thick white ~0.25; skin is 1.0)
        return 0.65 - 0.45 * thickness + 0.2 * (1.0 - lum(c)) ** 2 + PALETTE[c_idx % palette_size][2] * 1.5

    rgb = np.zeros((N_LABELS, 3), np.float32)
    temp = np.zeros(N_LABELS, np.float32)
    rgb[SKIN], temp[SKIN] = ident.skin, 1.0
    rgb[HAIR], temp[HAIR] = ident.hair_colour, 0.55 if ident.hair == "short" else 0.45
    rgb[UP], temp[UP] = col(ident.upper), fabric(ident.upper, ident.thickness)
    rgb[UP2], temp[UP2] = col(ident.upper2), fabric(ident.upper2, ident.thickness)
    rgb[LOW], temp[LOW] = col(ident.lower), fabric(ident.lower, ident.lower_thickness)
    rgb[LOW2], temp[LOW2] = col(ident.lower2), fabric(ident.lower2, ident.lower_thickness)
    rgb[SHOE], temp[SHOE] = ident.shoes, 0.2
    for lab, idx, base in (
        (
            BAG,
            ident.backpack
            if ident.backpack is not None
            else (ident.shoulder_bag if ident.shoulder_bag is not None else ident.handbag),
            0.05,
        ),
        (HAT, ident.hat, 0.35),
    ):
        if idx is not None:
            c = col(idx)
            rgb[lab], temp[lab] = c, base + 0.2 * (1 - lum(c)) ** 2
    rgb[STRAP], temp[STRAP] = rgb[BAG] * 0.7, 0.25
    if shot.occlusion is not None:
        rgb[OCC], temp[OCC] = col(shot.occlusion[2]) * 0.9, shot.occlusion[3]
    return rgb, temp


def _blur(a: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur, ``passes`` times (edge-replicated)."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        a = (p[:-2, 1:-1] + 2 * p[1:-1, 1:-1] + p[2:, 1:-1]) * 0.25
        p = np.pad(a, 1, mode="edge")
        a = (p[1:-1, :-2] + 2 * p[1:-1, 1:-1] + p[1:-1, 2:]) * 0.25
    return a


def _background(scene_arr: np.ndarray, shot: Shot, w: int) -> np.ndarray:
    x0 = int(shot.bg_offset * (scene_arr.shape[1] - w))
    return scene_arr[:, x0 : x0 + w].copy()


def render_image(
    ident: Identity,
    shot: Shot,
    modality: str,
    scene: Scene,
    look: CameraLook,
    config: SynthConfig,
    r: np.random.Generator,
) -> np.ndarray:
    """Render one image, ``(h, w, 3)`` uint8. Thermal images have three equal channels."""
    h, w = config.height, config.width
    yy, xx = _grid(h, w)
    L, (cx, y0, u, sw) = render_labels(ident, shot, h, w)
    rgb_t, temp_t = _material_tables(ident, shot, config.palette_size)
    person = L > 0
    # cylinder-like shading across the body and a soft top light
    shade = np.clip(1.0 - 0.35 * ((xx - cx) / (1.6 * sw + 1e-3)) ** 2, 0.55, 1.0) * (
        1.02 - 0.1 * (yy - y0) / max(u, 1.0)
    )
    if modality == "visible":
        img = _background(scene.rgb, shot, w)
        for x, y, ww, hh, ci, _ in shot.clutter:
            m = (np.abs(xx / w - x) < ww / 2) & (np.abs(yy / h - y) < hh / 2)
            img[m] = np.asarray(PALETTE[ci % config.palette_size][1], np.float32) * 0.4 + 0.25
        img[person] = rgb_t[L[person]] * shade[person][:, None]
        img = img * (look.wb * look.brightness * shot.brightness).astype(np.float32)
        img = 0.5 + (img - 0.5) * look.contrast
        img = np.clip(img, 0, 1) ** look.gamma
        img = img + 0.015 * r.standard_normal(img.shape, dtype=np.float32)
        return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    # thermal: temperature map -> sensor
    T = _background(scene.temp, shot, w) + shot.ambient
    for x, y, ww, hh, _, tc in shot.clutter:
        m = (np.abs(xx / w - x) < ww / 2) & (np.abs(yy / h - y) < hh / 2)
        T[m] = tc
    body = temp_t[L[person]] * (0.93 + 0.07 * shade[person])
    T[person] = shot.ambient + look.body_contrast * body
    if shot.occlusion is not None:
        T[L == OCC] = temp_t[OCC]
    T = _blur(T.astype(np.float32), 1 + int(round(config.thermal_noise * 25)))
    # automatic gain control: stretch a robust range of the frame to 0..1
    lo, hi = np.percentile(T, (1.0, 99.5))
    g = np.clip((T - lo) / max(hi - lo, 1e-3), 0, 1) ** look.gamma
    g = g * (0.85 + 0.15 * look.contrast) + 0.04
    g = g + config.thermal_noise * (r.standard_normal(g.shape, dtype=np.float32) + 0.5 * look.stripes[None, :])
    g8 = np.clip(g * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(g8[:, :, None], 3, axis=2)


def _encode(img: np.ndarray, path: Path, quality: int) -> None:
    im = Image.fromarray(img, "RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=quality)
    else:
        im.save(path, format="BMP")


# --------------------------------------------------------------------------- SYSU-MM01 layout


def _sysu_plan(config: SynthConfig) -> tuple[dict[str, list[int]], dict[int, dict[int, int]]]:
    """Split ids and decide how many images each (id, camera) gets, with the coverage rules."""
    n = config.ids
    perm = _rng(config.seed, _T_SPLIT).permutation(np.arange(1, n + 1))
    fr = np.asarray(config.split) / sum(config.split)
    n_val = max(1, int(round(n * fr[1])))
    n_test = max(1, int(round(n * fr[2])))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ConfigError(f"SynthConfig.ids = {n} is too small for split {config.split}: use more ids")
    splits = {
        "train": sorted(int(p) for p in perm[:n_train]),
        "val": sorted(int(p) for p in perm[n_train : n_train + n_val]),
        "test": sorted(int(p) for p in perm[n_train + n_val :]),
    }
    test = set(splits["test"])
    lo, hi = config.images_per_camera
    plan: dict[int, dict[int, int]] = {}
    for pid in range(1, n + 1):
        r = _rng(config.seed, _T_PLAN, pid)
        present = {c for c in range(1, 7) if r.random() < config.camera_presence}
        need = [(1, 2, 4, 5), (3, 6)]
        if pid in test:
            need += [(1, 2)]  # indoor search needs an indoor visible gallery
        for group in need:
            if not present & set(group):
                present.add(int(r.choice(group)))
        counts = {c: int(r.integers(lo, hi + 1)) for c in range(1, 7)}
        plan[pid] = {c: counts[c] for c in sorted(present)}
    return splits, plan


def _render_sysu_id(args: tuple[str, SynthConfig, int, dict[int, int]]) -> None:
    out, config, pid, cams = args
    ident = sample_identity(config.seed, pid, config.palette_size)
    for cam, n in cams.items():
        modality, scene_id, indoor = SYSU_CAMERAS[cam]
        scene = make_scene(config.seed, scene_id, indoor, config.height, config.width)
        look = camera_look(config.seed, cam, indoor, config.camera_gap, config.width)
        d = Path(out) / f"cam{cam}" / f"{pid:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(1, n + 1):
            r = _rng(config.seed, _T_SHOT, pid, cam, k)
            shot = sample_shot(r, config, look.view_bias)
            img = render_image(ident, shot, modality, scene, look, config, r)
            _encode(img, d / f"{k:04d}.jpg", shot.quality)


NUISANCE_FILE = "synth_nuisance.csv"
NUISANCE_FIELDS = ("path", "pid", "cam", "view", "phase", "scale", "cx", "top", "occlusion", "occlusion_extent")


def sysu_nuisance(config: SynthConfig, plan: dict[int, dict[int, int]]) -> list[dict]:
    """Each image's nuisance (view, walking phase, box scale/shift, occlusion), re-drawn from the same seeds
    as the rendering (cheap: nothing is rendered). ``path`` is relative to the dataset root."""
    rows = []
    for pid in sorted(plan):
        for cam, n in plan[pid].items():
            look = camera_look(config.seed, cam, SYSU_CAMERAS[cam][2], config.camera_gap, config.width)
            for k in range(1, n + 1):
                shot = sample_shot(_rng(config.seed, _T_SHOT, pid, cam, k), config, look.view_bias)
                occ = shot.occlusion
                rows.append(
                    {
                        "path": f"cam{cam}/{pid:04d}/{k:04d}.jpg",
                        "pid": pid,
                        "cam": cam,
                        "view": shot.view,
                        "phase": round(shot.phase, 6),
                        "scale": round(shot.scale, 6),
                        "cx": round(shot.cx, 6),
                        "top": round(shot.top, 6),
                        "occlusion": occ[0] if occ else "",
                        "occlusion_extent": round(occ[1], 6) if occ else 0.0,
                    }
                )
    return rows


def _write_nuisance(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=NUISANCE_FIELDS)
        w.writeheader()
        w.writerows(rows)


def read_nuisance(root: str | Path) -> dict[str, dict] | None:
    """The generator's nuisance sidecar of a synthetic dataset, ``{relative path: row}``; None where the
    root has none (real datasets never do). Numbers come back as floats, ``pid``/``cam`` as ints."""
    import csv

    path = Path(root) / NUISANCE_FILE
    if not path.is_file():
        return None
    out = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(NUISANCE_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: missing columns {sorted(missing)}; regenerate the data with `cmemd data synth`")
        for i, row in enumerate(reader, start=2):
            try:
                row = dict(
                    row,
                    pid=int(row["pid"]),
                    cam=int(row["cam"]),
                    **{k: float(row[k]) for k in ("phase", "scale", "cx", "top", "occlusion_extent")},
                )
            except ValueError as e:
                raise ConfigError(f"{path}, line {i}: {e}; regenerate the data with `cmemd data synth`") from None
            out[row["path"]] = row
    return out


def _run(fn, jobs: list, workers: int) -> None:
    if workers <= 1:
        for j in jobs:
            fn(j)
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for _ in ex.map(fn, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
            pass


def _write_rand_perm(path: Path, config: SynthConfig, plan: dict[int, dict[int, int]]) -> None:
    """``rand_perm_cam.mat`` in the dataset authors' format: a 6x1 cell of (n_ids, 1) cells of 10 x n."""
    import scipy.io

    cell = np.empty((6, 1), dtype=object)
    for c in range(1, 7):
        inner = np.empty((config.ids, 1), dtype=object)
        for pid in range(1, config.ids + 1):
            n = plan[pid].get(c, 0)
            r = _rng(config.seed, _T_SPLIT, 7, c, pid)
            dtype = np.uint8 if n < 256 else np.uint16
            inner[pid - 1, 0] = (
                np.stack([r.permutation(n) + 1 for _ in range(10)]).astype(dtype) if n else np.zeros((10, 0), np.uint8)
            )
        cell[c - 1, 0] = inner
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"rand_perm_cam": cell})
    data = bytearray(buf.getvalue())
    # MAT-5 files start with 116 bytes of text that scipy stamps with the time: fix it for determinism
    data[:116] = b"MATLAB 5.0 MAT-file, written by cmemd.data.synth".ljust(116, b" ")
    path.write_bytes(bytes(data))


# Everything a generator writes at the top of its folder, in any layout (and the image cache built from those
# files): what regenerating a folder clears first, so that no image of an earlier set survives under the same ids.
GENERATED_ENTRIES = (
    "cam1",
    "cam2",
    "cam3",
    "cam4",
    "cam5",
    "cam6",
    "exp",
    "Visible",
    "Thermal",
    "idx",
    "train_vis",
    "train_nir",
    "test_vis",
    "test_nir",
    "synth_summary.json",
    NUISANCE_FILE,
    ".cmemd_cache",
)


def _check_out(out_dir: Path) -> Path:
    """The output folder, ready: created, or cleared of an earlier synthetic set (``GENERATED_ENTRIES`` only, in a
    folder the generator made: :mod:`cmemd.folders`); a non-empty folder it did not make is a ConfigError."""
    out_dir = Path(out_dir)
    clear_folder(out_dir, "dataset", GENERATED_ENTRIES, option="out_dir", made_by="cmemd.data.synth")
    return out_dir


def generate_sysu(out_dir: str | Path, config: SynthConfig | None = None, workers: int = 1) -> dict:
    """Write a synthetic dataset in the SYSU-MM01 layout and return its exact counts.

    Layout: ``cam1..cam6/<pid:04d>/<k:04d>.jpg`` (cams 1, 2, 4, 5 visible; 3, 6 thermal; cam2 and
    cam3 share a scene), ``exp/{train,val,test,available}_id.txt`` (one line of comma-separated
    1-based ids), ``exp/rand_perm_cam.mat``, ``synth_summary.json`` and, outside the real layout (the
    readers ignore it), ``synth_nuisance.csv``: each image's view, walking phase, box scale/shift and
    occlusion, for the alignment diagnostics (:func:`read_nuisance`). Every id has visible and
    thermal images; every test id has query images (cam3/cam6) and an indoor gallery (cam1/cam2).

    The summary: ``ids`` per split, ``images[split]["cam<c>"]`` counts, ``modalities[split]``,
    ``visible``, ``thermal``, ``total`` and the config.
    """
    config = config or SynthConfig()
    out = _check_out(Path(out_dir))
    splits, plan = _sysu_plan(config)
    _run(_render_sysu_id, [(str(out), config, pid, plan[pid]) for pid in range(1, config.ids + 1)], workers)
    exp = out / "exp"
    exp.mkdir(exist_ok=True)
    for name, ids in (
        ("train", splits["train"]),
        ("val", splits["val"]),
        ("test", splits["test"]),
        ("available", list(range(1, config.ids + 1))),
    ):
        (exp / f"{name}_id.txt").write_text(",".join(str(i) for i in ids) + "\n")
    _write_rand_perm(exp / "rand_perm_cam.mat", config, plan)
    _write_nuisance(out / NUISANCE_FILE, sysu_nuisance(config, plan))
    images = {s: {f"cam{c}": sum(plan[p].get(c, 0) for p in ids) for c in range(1, 7)} for s, ids in splits.items()}
    mods = {
        s: {
            "visible": sum(v for k, v in cams.items() if SYSU_CAMERAS[int(k[3:])][0] == "visible"),
            "thermal": sum(v for k, v in cams.items() if SYSU_CAMERAS[int(k[3:])][0] == "thermal"),
        }
        for s, cams in images.items()
    }
    summary = {
        "layout": "sysu",
        "n_ids": config.ids,
        "ids": splits,
        "images": images,
        "modalities": mods,
        "visible": sum(m["visible"] for m in mods.values()),
        "thermal": sum(m["thermal"] for m in mods.values()),
        "total": sum(m["visible"] + m["thermal"] for m in mods.values()),
        "config": config.to_dict(),
    }
    (out / "synth_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# --------------------------------------------------------------------------- RegDB layout


def _regdb_view(ident: Identity, seed: int) -> str:
    return "front" if _rng(seed, _T_REGDB, 1, ident.pid).random() < 0.5 else "back"


def _render_regdb_id(args: tuple[str, SynthConfig, int]) -> None:
    out, config, pid = args
    ident = sample_identity(config.seed, pid, config.palette_size)
    view = _regdb_view(ident, config.seed)
    scene = make_scene(config.seed, 7, False, config.height, config.width)
    looks = {c: camera_look(config.seed, c, False, config.camera_gap, config.width, regdb=True) for c in (1, 2)}
    bias = np.array([1.0 if v == view else 0.0 for v in VIEWS])
    for k in range(1, 11):
        frame = (pid - 1) * 10 + k
        shot = sample_shot(_rng(config.seed, _T_SHOT, pid, 0, k), config, bias)
        if shot.view in ("front", "back") and shot.view != view and config.variation < 1.0:
            shot.view = view  # one walking direction per person, sides for variation
        for cam, mod, tag in ((1, "visible", "v"), (2, "thermal", "t")):
            r = _rng(config.seed, _T_SHOT, pid, cam, k, 1)
            img = render_image(ident, shot, mod, scene, looks[cam], config, r)
            d = Path(out) / ("Visible" if cam == 1 else "Thermal") / str(pid)
            d.mkdir(parents=True, exist_ok=True)
            _encode(img, d / f"{ident.gender}_{view}_{tag}_{frame:05d}_{k}.bmp", 100)


def regdb_filename(ident: Identity, seed: int, modality: str, k: int) -> str:
    """File name of image ``k`` (1..10) of a synthetic RegDB person, e.g. ``female_back_v_00001_1.bmp``."""
    tag = "v" if modality == "visible" else "t"
    return f"{ident.gender}_{_regdb_view(ident, seed)}_{tag}_{(ident.pid - 1) * 10 + k:05d}_{k}.bmp"


def generate_regdb(out_dir: str | Path, config: SynthConfig | None = None, workers: int = 1) -> dict:
    """Write a synthetic dataset in the RegDB layout and return its exact counts.

    Layout: ``Visible/<pid>/<gender>_<view>_v_<nnnnn>_<k>.bmp`` and the same under ``Thermal/`` with
    ``_t_``: 10 + 10 images per id from one aligned rig (thermal k is the same moment, pose and box
    as visible k; ``nnnnn`` is a global frame number). ``idx/{train,test}_{visible,thermal}_{t}.txt``
    for t = 1..10, lines ``<path relative to root> <label>``. Trial t splits the ids in half at random
    (generator seeded by ``(t, config.seed)``). Train labels are contiguous 0..N_train-1 (sorted
    pids); TEST lines carry the person id (the folder number), not a relabelled class.
    """
    config = config or SynthConfig(ids=100)
    out = _check_out(Path(out_dir))
    n = config.ids
    _run(_render_regdb_id, [(str(out), config, pid) for pid in range(1, n + 1)], workers)
    idx = out / "idx"
    idx.mkdir(exist_ok=True)
    names = {pid: sample_identity(config.seed, pid, config.palette_size) for pid in range(1, n + 1)}
    trials = {}
    for t in range(1, 11):
        perm = np.random.default_rng([t, config.seed]).permutation(np.arange(1, n + 1))
        train = sorted(int(p) for p in perm[: n // 2])
        test = sorted(int(p) for p in perm[n // 2 :])
        for mod, folder in (("visible", "Visible"), ("thermal", "Thermal")):
            tr = [
                f"{folder}/{p}/{regdb_filename(names[p], config.seed, mod, k)} {lab}"
                for lab, p in enumerate(train)
                for k in range(1, 11)
            ]
            te = [
                f"{folder}/{p}/{regdb_filename(names[p], config.seed, mod, k)} {p}" for p in test for k in range(1, 11)
            ]
            (idx / f"train_{mod}_{t}.txt").write_text("\n".join(tr) + "\n")
            (idx / f"test_{mod}_{t}.txt").write_text("\n".join(te) + "\n")
        trials[str(t)] = {"train_ids": train, "test_ids": test}
    summary = {
        "layout": "regdb",
        "n_ids": n,
        "visible": 10 * n,
        "thermal": 10 * n,
        "total": 20 * n,
        "trials": trials,
        "config": config.to_dict(),
    }
    (out / "synth_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# --------------------------------------------------------------------------- LLCM layout


def low_light(img: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """A visible image as a low-light camera takes it: colour faded toward grey, darker, noisier."""
    x = img.astype(np.float32) / 255.0
    lum = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = lum + float(r.uniform(0.25, 0.55)) * (x - lum)  # colour-faded
    x = x * float(r.uniform(0.25, 0.5))  # darker
    x = x + float(r.uniform(0.02, 0.05)) * r.standard_normal(x.shape, dtype=np.float32)  # sensor noise
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


def _llcm_plan(config: SynthConfig) -> tuple[dict[str, list[int]], dict[int, dict[str, dict[int, int]]]]:
    """Train/test ids (train = the train + val fractions of ``config.split``) and, per id and modality,
    the images per camera. Every id has both modalities; every test id is seen by at least two cameras
    of each modality, so that every query keeps a true match after the same-id-same-camera removal."""
    n = config.ids
    perm = _rng(config.seed, _T_SPLIT, 3).permutation(np.arange(1, n + 1))
    fr = np.asarray(config.split) / sum(config.split)
    n_test = max(1, int(round(n * fr[2])))
    if n - n_test < 1:
        raise ConfigError(f"SynthConfig.ids = {n} is too small for split {config.split}: use more ids")
    splits = {"train": sorted(int(p) for p in perm[: n - n_test]), "test": sorted(int(p) for p in perm[n - n_test :])}
    test = set(splits["test"])
    lo, hi = config.images_per_camera
    plan: dict[int, dict[str, dict[int, int]]] = {}
    for pid in range(1, n + 1):
        r = _rng(config.seed, _T_LLCM, pid)
        plan[pid] = {}
        for m, cams in LLCM_CAMERAS.items():
            present = [c for c in cams if r.random() < config.camera_presence]
            need = 2 if pid in test else 1
            for c in r.permutation(np.asarray([c for c in cams if c not in present])):
                if len(present) >= need:
                    break
                present.append(int(c))
            plan[pid][m] = {c: int(r.integers(lo, hi + 1)) for c in sorted(present)}
    return splits, plan


def _llcm_folder(split: str, modality: str) -> str:
    return f"{split}_{'vis' if modality == 'visible' else 'nir'}"


def _render_llcm_id(args: tuple[str, SynthConfig, int, str, dict[str, dict[int, int]]]) -> None:
    out, config, pid, split, cams = args
    ident = sample_identity(config.seed, pid, config.palette_size)
    for m, counts in cams.items():
        for cam, n in counts.items():
            indoor = cam <= 3
            scene = make_scene(config.seed, 20 + cam, indoor, config.height, config.width)  # RGB and NIR share it
            look = camera_look(
                config.seed, 200 + cam + (10 if m == "thermal" else 0), indoor, config.camera_gap, config.width
            )
            d = Path(out) / _llcm_folder(split, m) / f"cam{cam}" / f"{pid:04d}"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(1, n + 1):
                r = _rng(config.seed, _T_SHOT, pid, 200 + cam + (10 if m == "thermal" else 0), k)
                shot = sample_shot(r, config, look.view_bias)
                img = render_image(ident, shot, m, scene, look, config, r)
                path = d / f"{pid:04d}_c{cam:02d}_{k:04d}.jpg"
                if m == "visible":
                    _encode(low_light(img, r), path, shot.quality)
                else:  # NIR written single-channel, as sensors often deliver it
                    Image.fromarray(img[:, :, 0], "L").save(path, format="JPEG", quality=shot.quality)


def generate_llcm(out_dir: str | Path, config: SynthConfig | None = None, workers: int = 1) -> dict:
    """Write a synthetic dataset in the LLCM layout and return its exact counts.

    Layout: ``{train,test}_{vis,nir}/cam<c>/<pid:04d>/<pid>_c<cc>_<k>.jpg`` for the nine dual-mode
    cameras (no NIR cam3, as the authors' code lists none), ``idx/train_vis.txt`` and
    ``idx/train_nir.txt`` (``<path relative to root> <label>``, labels 0..N-1 in id order) and
    ``idx/test_id.txt`` (one line of comma-separated ids). Visible images are low-light (colour
    faded, darker, noisier: :func:`low_light`); NIR images are single-channel JPEGs rendered by the
    thermal model. Camera c's RGB and NIR sensors watch the same scene.

    The summary: ``ids`` per split, ``images[split][modality]`` counts, ``visible``, ``thermal``,
    ``total`` and the config.
    """
    config = config or SynthConfig(ids=60, images_per_camera=(2, 4))
    out = _check_out(Path(out_dir))
    splits, plan = _llcm_plan(config)
    split_of = {p: s for s, ids in splits.items() for p in ids}
    for split in splits:  # every camera folder exists, as in the release, even where no id of a small set uses it
        for m, cams in LLCM_CAMERAS.items():
            for c in cams:
                (out / _llcm_folder(split, m) / f"cam{c}").mkdir(parents=True, exist_ok=True)
    _run(
        _render_llcm_id,
        [(str(out), config, pid, split_of[pid], plan[pid]) for pid in range(1, config.ids + 1)],
        workers,
    )
    idx = out / "idx"
    idx.mkdir(exist_ok=True)
    for m, name in (("visible", "train_vis.txt"), ("thermal", "train_nir.txt")):
        lines = [
            f"{_llcm_folder('train', m)}/cam{c}/{p:04d}/{p:04d}_c{c:02d}_{k:04d}.jpg {label}"
            for label, p in enumerate(splits["train"])
            for c, n in plan[p][m].items()
            for k in range(1, n + 1)
        ]
        (idx / name).write_text("\n".join(lines) + "\n")
    (idx / "test_id.txt").write_text(",".join(str(p) for p in splits["test"]) + "\n")
    images = {s: {m: sum(sum(plan[p][m].values()) for p in ids) for m in LLCM_CAMERAS} for s, ids in splits.items()}
    summary = {
        "layout": "llcm",
        "n_ids": config.ids,
        "ids": splits,
        "images": images,
        "visible": sum(v["visible"] for v in images.values()),
        "thermal": sum(v["thermal"] for v in images.values()),
        "total": sum(v["visible"] + v["thermal"] for v in images.values()),
        "config": config.to_dict(),
    }
    (out / "synth_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


__all__ = [
    "SynthConfig",
    "read_nuisance",
    "sysu_nuisance",
    "Identity",
    "Shot",
    "Scene",
    "PALETTE",
    "SYSU_CAMERAS",
    "REGDB_CAMERAS",
    "sample_identity",
    "sample_shot",
    "render_labels",
    "render_image",
    "make_scene",
    "camera_look",
    "generate_sysu",
    "generate_regdb",
    "generate_llcm",
    "low_light",
    "LLCM_CAMERAS",
    "regdb_filename",
]
