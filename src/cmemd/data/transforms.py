"""Image transforms in torch (no torchvision), with randomness from an explicit generator.

One internal path: every input (PIL image, HxWx3 uint8 array, 3xHxW uint8 tensor) becomes
a uint8 CHW tensor resized to (H, W); the geometric augmentations (pad + random crop,
flip) and the channel augmentations run on it, then it is scaled to [0, 1], normalised
with the ImageNet mean/std, and random erasing runs last on the normalised tensor
(filling with 0 = the mean colour), as in the VT-ReID code base.

Every random op takes a ``torch.Generator``; the same generator state gives the same
output, so a Dataset that seeds one per (seed, epoch, index, draw) is reproducible whatever
the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cmemd.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# ITU-R 601 luma, the weights PIL's convert("L") and CAJ's grayscale use.
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
# CAJ's ChannelAdapGray / ChannelExchange grayscale weights (ICCV21_CAJ/ChannelAug.py, data_loader.py).
CAJ_LUMA: tuple[float, float, float] = (0.2989, 0.5870, 0.1140)
# CAJ's ChannelRandomErasing fill, one value per channel (the CIFAR-10 channel means its code uses; written into
# the already-normalised tensor, as in CAJ).
CAJ_ERASE_FILL: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: Channel augmentation families: ``cmemd`` (ours: channel exchange / grayscale of visible images, intensity
#: jitter of thermal ones) and ``caj`` (Ye et al., ICCV 2021: channel selection of visible images, ChannelAdapGray
#: of thermal ones, channel-level random erasing, all on the normalised tensor as in CAJ's code).
CHANNEL_AUG_KINDS = ("cmemd", "caj")

_PIL_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _rand(g: torch.Generator | None) -> float:
    return float(torch.rand((), generator=g))


def _uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(g)


def _randint(g: torch.Generator | None, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


# -- conversion and resizing ----------------------------------------------------------
def to_uint8_chw(img: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A PIL image, an HxWx3 uint8 array or a 3xHxW uint8 tensor as a 3xHxW uint8 tensor."""
    if isinstance(img, Image.Image):
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"to_uint8_chw: expected an HxWx3 uint8 array, got {img.dtype} {img.shape}")
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"to_uint8_chw: expected a 3xHxW uint8 tensor, got {img.dtype} {tuple(img.shape)}")
        return img
    raise TypeError(f"to_uint8_chw: unsupported image type {type(img).__name__}")


def resize_pil(img: Image.Image, height: int, width: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize a PIL image to (height, width) (the cache and the decode path share this)."""
    if img.size == (width, height):
        return img
    return img.resize((width, height), _PIL_INTERP[interpolation])


def resize(
    img: Image.Image | np.ndarray | torch.Tensor, height: int, width: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Any supported input as a 3 x height x width uint8 tensor (no-op when already that size)."""
    if interpolation not in _PIL_INTERP:
        raise ConfigError(f"transforms: interpolation must be one of {sorted(_PIL_INTERP)}, got {interpolation!r}")
    if isinstance(img, Image.Image):
        return to_uint8_chw(resize_pil(img, height, width, interpolation))
    t = to_uint8_chw(img)
    if t.shape[1:] == (height, width):
        return t
    out = F.interpolate(t[None].float(), size=(height, width), mode=interpolation, align_corners=False, antialias=True)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


# -- geometric augmentations (uint8 CHW) ---------------------------------------------------
def pad_random_crop(img: torch.Tensor, pad: int, g: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``pad`` on every side, then crop a random window of the original size."""
    if pad <= 0:
        return img
    _, h, w = img.shape
    padded = F.pad(img, (pad, pad, pad, pad), value=0)
    top, left = _randint(g, 0, 2 * pad), _randint(g, 0, 2 * pad)
    return padded[:, top : top + h, left : left + w].contiguous()


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Mirror left-right."""
    return img.flip(-1)


# -- channel augmentations (float [0, 1] CHW) ---------------------------------------------
def grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luma replicated to three channels."""
    w = torch.tensor(LUMA, dtype=img.dtype).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True).expand(3, -1, -1).contiguous()


def channel_exchange(img: torch.Tensor, p: float, g: torch.Generator | None = None) -> torch.Tensor:
    """Visible images (CAJ, Ye et al. 2021): with probability ``p`` replace the image by one of
    R, G, B replicated to all channels, or by its grayscale (each of the four equally likely)."""
    if p <= 0 or _rand(g) >= p:
        return img
    choice = _randint(g, 0, 3)
    if choice == 3:
        return grayscale(img)
    return img[choice : choice + 1].expand(3, -1, -1).contiguous()


def thermal_jitter(
    img: torch.Tensor, p: float, strength: float = 0.2, g: torch.Generator | None = None
) -> torch.Tensor:
    """Thermal images: with probability ``p`` either grayscale or a linear intensity jitter
    ``a * x + b`` (a in [1 - s, 1 + s], b in [-s/2, s/2]), equally likely, clipped to [0, 1]."""
    if p <= 0 or _rand(g) >= p:
        return img
    if _rand(g) < 0.5:
        return grayscale(img)
    a = _uniform(g, 1.0 - strength, 1.0 + strength)
    b = _uniform(g, -strength / 2, strength / 2)
    return (img * a + b).clamp_(0.0, 1.0)


# -- CAJ's channel augmentations (Ye et al. ICCV 2021; float CHW, normalised, as in its code) ------------------------
def caj_channel_exchange(img: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """CAJ's ``ChannelExchange(gray=2)`` (the visible "channel-augmented" view): one of R, G, B, uniformly,
    replicated to all three channels (``gray=2`` draws 0..2, so its grayscale branch is never taken)."""
    c = _randint(g, 0, 2)
    return img[c : c + 1].expand(3, -1, -1).contiguous()


def caj_channel_adap_gray(img: torch.Tensor, p_gray: float = 0.5, g: torch.Generator | None = None) -> torch.Tensor:
    """CAJ's ``ChannelAdapGray(probability=p_gray)`` (its thermal transform): draw one of four branches uniformly;
    R, G or B replicated to all channels, or (fourth branch) grayscale with probability ``p_gray``, else unchanged.
    With p_gray = 0.5: R, G, B 1/4 each, grayscale 1/8, unchanged 1/8."""
    c = _randint(g, 0, 3)
    if c < 3:
        return img[c : c + 1].expand(3, -1, -1).contiguous()
    if _rand(g) > p_gray:
        return img
    w = torch.tensor(CAJ_LUMA, dtype=img.dtype).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True).expand(3, -1, -1).contiguous()


def caj_random_erasing(
    img: torch.Tensor,
    p: float,
    g: torch.Generator | None = None,
    *,
    area: tuple[float, float] = (0.02, 0.4),
    min_aspect: float = 0.3,
    fill: tuple[float, ...] = CAJ_ERASE_FILL,
    attempts: int = 100,
) -> torch.Tensor:
    """CAJ's ``ChannelRandomErasing(probability=p)``: with probability ``p`` fill one rectangle with a value per
    channel (``fill``). Relative area uniform in ``area``, aspect ratio uniform (not log-uniform) in
    [min_aspect, 1/min_aspect], up to ``attempts`` tries for a rectangle that fits. Returns a new tensor."""
    if p <= 0 or _rand(g) >= p:
        return img
    _, h, w = img.shape
    for _ in range(attempts):
        target = _uniform(g, area[0], area[1]) * h * w
        aspect = _uniform(g, min_aspect, 1.0 / min_aspect)
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if ew < w and eh < h:
            top, left = _randint(g, 0, h - eh), _randint(g, 0, w - ew)
            out = img.clone()
            out[:, top : top + eh, left : left + ew] = torch.tensor(fill[: img.shape[0]], dtype=img.dtype).view(
                -1, 1, 1
            )
            return out
    return img


# -- normalisation and erasing (float CHW) -------------------------------------------------
def normalize(
    img: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 (scaled by 1/255) or float [0, 1] CHW -> (x - mean) / std, float32."""
    x = img.float().div_(255.0) if img.dtype == torch.uint8 else img.float()
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


def random_erasing(
    img: torch.Tensor,
    p: float,
    g: torch.Generator | None = None,
    *,
    area: tuple[float, float] = (0.02, 0.4),
    min_aspect: float = 0.3,
    value: float = 0.0,
    attempts: int = 100,
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability ``p`` fill one rectangle of relative
    area in ``area`` and aspect ratio in [min_aspect, 1/min_aspect] (log-uniform) with ``value``.
    Returns a new tensor; the input is left unchanged."""
    if p <= 0 or _rand(g) >= p:
        return img
    _, h, w = img.shape
    for _ in range(attempts):
        target = _uniform(g, area[0], area[1]) * h * w
        aspect = math.exp(_uniform(g, math.log(min_aspect), math.log(1.0 / min_aspect)))
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top, left = _randint(g, 0, h - eh), _randint(g, 0, w - ew)
            out = img.clone()
            out[:, top : top + eh, left : left + ew] = value
            return out
    return img


# -- pipelines -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransformConfig:
    """Options of the train/test pipelines. Probabilities are in [0, 1]; 0 turns an op off.

    ``channel_aug`` is the probability of the modality's channel augmentation, of the family
    ``channel_aug_kind``:

    - ``"cmemd"`` (ours): visible :func:`channel_exchange`, thermal :func:`thermal_jitter` of
      ``thermal_strength``, each with probability ``channel_aug``; random erasing fills 0 (the mean colour).
    - ``"caj"`` (CAJ's code): visible :func:`caj_channel_exchange` with probability ``channel_aug`` (CAJ
      trains on the original and the exchanged copy of every visible image, i.e. half of its visible views
      are exchanged: 0.5); thermal :func:`caj_channel_adap_gray` on every image when ``channel_aug > 0``
      (its own fixed probabilities); random erasing is :func:`caj_random_erasing` (per-channel fill, uniform
      aspect) with probability ``random_erasing``, before the channel operation, as in CAJ.
    """

    height: int = 288
    width: int = 144
    pad: int = 10
    flip: bool = True
    random_erasing: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_min_aspect: float = 0.3
    channel_aug: float = 0.0
    channel_aug_kind: str = "cmemd"
    thermal_strength: float = 0.2
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"TransformConfig: height/width must be positive, got {self.height}x{self.width}")
        if self.pad < 0:
            raise ConfigError(f"TransformConfig: pad must be >= 0, got {self.pad}")
        for name in ("random_erasing", "channel_aug"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"TransformConfig: {name} is a probability in [0, 1], got {v}")
        if self.channel_aug_kind not in CHANNEL_AUG_KINDS:
            raise ConfigError(
                f"TransformConfig: channel_aug_kind must be one of {CHANNEL_AUG_KINDS}, got {self.channel_aug_kind!r}"
            )
        lo, hi = self.erasing_area
        if not 0.0 < lo <= hi < 1.0:
            raise ConfigError(f"TransformConfig: erasing_area must satisfy 0 < lo <= hi < 1, got {self.erasing_area}")
        if not 0.0 < self.erasing_min_aspect <= 1.0:
            raise ConfigError(f"TransformConfig: erasing_min_aspect must be in (0, 1], got {self.erasing_min_aspect}")
        if self.interpolation not in _PIL_INTERP:
            raise ConfigError(
                f"TransformConfig: interpolation must be one of {sorted(_PIL_INTERP)}, got {self.interpolation!r}"
            )


@dataclass(frozen=True)
class Transform:
    """A pipeline: ``transform(img, generator) -> float32 tensor (3, H, W)``.

    ``img`` is a PIL image, an HxWx3 uint8 array or a 3xHxW uint8 tensor (e.g. from the cache).
    Test pipelines ignore the generator.
    """

    config: TransformConfig
    train: bool
    modality: str

    def __call__(self, img: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        c, g = self.config, generator
        x = resize(img, c.height, c.width, c.interpolation)
        if not self.train:
            return normalize(x, c.mean, c.std)
        x = pad_random_crop(x, c.pad, g)
        if c.flip and _rand(g) < 0.5:
            x = hflip(x)
        if c.channel_aug_kind == "caj":  # CAJ's order: normalise, erase, then the channel operation
            x = caj_random_erasing(
                normalize(x, c.mean, c.std), c.random_erasing, g, area=c.erasing_area, min_aspect=c.erasing_min_aspect
            )
            if c.channel_aug > 0:
                if self.modality == "thermal":
                    x = caj_channel_adap_gray(x, 0.5, g)
                elif _rand(g) < c.channel_aug:
                    x = caj_channel_exchange(x, g)
            return x
        if c.channel_aug > 0:
            f = x.float().div_(255.0)
            if self.modality == "visible":
                f = channel_exchange(f, c.channel_aug, g)
            else:
                f = thermal_jitter(f, c.channel_aug, c.thermal_strength, g)
            x = f
        x = normalize(x, c.mean, c.std)
        return random_erasing(x, c.random_erasing, g, area=c.erasing_area, min_aspect=c.erasing_min_aspect)


def build_transforms(
    height: int,
    width: int,
    *,
    train: bool,
    modality: str,
    pad: int = 10,
    flip: bool = True,
    random_erasing: float = 0.5,
    channel_aug: float = 0.0,
    interpolation: str = "bilinear",
    **options: Any,
) -> Transform:
    """The train (augmenting) or test (resize + normalise) pipeline for one modality.

    Extra keyword options are :class:`TransformConfig` fields (``erasing_area``,
    ``erasing_min_aspect``, ``thermal_strength``, ``mean``, ``std``).
    """
    if modality not in ("visible", "thermal"):
        raise ConfigError(f"build_transforms: modality must be 'visible' or 'thermal', got {modality!r}")
    try:
        config = TransformConfig(
            height=height,
            width=width,
            pad=pad,
            flip=flip,
            random_erasing=random_erasing,
            channel_aug=channel_aug,
            interpolation=interpolation,
            **options,
        )
    except TypeError as e:
        raise ConfigError(f"build_transforms: {e}; valid options are the fields of TransformConfig") from None
    return Transform(config, train, modality)


def transforms_from_config(config: TransformConfig, *, train: bool) -> dict[str, Transform]:
    """``{"visible": ..., "thermal": ...}`` pipelines sharing one config."""
    return {m: Transform(config, train, m) for m in ("visible", "thermal")}


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TransformConfig",
    "Transform",
    "build_transforms",
    "transforms_from_config",
    "to_uint8_chw",
    "resize",
    "resize_pil",
    "pad_random_crop",
    "hflip",
    "grayscale",
    "channel_exchange",
    "thermal_jitter",
    "normalize",
    "random_erasing",
    "caj_channel_exchange",
    "caj_channel_adap_gray",
    "caj_random_erasing",
    "CHANNEL_AUG_KINDS",
]
