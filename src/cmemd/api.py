"""Use a trained model from Python: ``model = cmemd.load("runs/x/last.pt"); feats = model.encode(images, "thermal")``.

``encode`` applies exactly the evaluation preprocessing (``build_transforms(train=False)``: resize to
the training size, scale, ImageNet normalisation), runs each image through its own modality's
branch and returns **L2-normalised float32 numpy** rows, so ``a @ b.T`` is the cosine similarity
the evaluation ranks by. Test-time flip follows the model's ``eval.flip`` setting unless ``flip=`` says otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from cmemd.data.records import MODALITIES
from cmemd.errors import ConfigError
from cmemd.numerics import l2_normalize

ImageLike = Union[str, Path, "np.ndarray", torch.Tensor, Any]  # Any: a PIL image
ModalityLike = Union[str, int, Sequence[Union[str, int]], np.ndarray, torch.Tensor]


def modality_vector(modality: ModalityLike, n: int) -> torch.Tensor:
    """``modality`` as an int64 (n,) tensor of 0 (visible) / 1 (thermal).

    Accepts one value for every image ("visible", "thermal", 0, 1) or one value per image.
    """
    def one(m: Any) -> int:
        if isinstance(m, str):
            if m not in MODALITIES:
                raise ConfigError(f"modality {m!r} is unknown: use 'visible' or 'thermal' (or 0 / 1)")
            return MODALITIES.index(m)
        if int(m) not in (0, 1):
            raise ConfigError(f"modality {m!r} is unknown: use 0 (visible) or 1 (thermal)")
        return int(m)

    if isinstance(modality, (str, int, np.integer)):
        return torch.full((n,), one(modality), dtype=torch.int64)
    values = [one(m) for m in (modality.tolist() if hasattr(modality, "tolist") else modality)]
    if len(values) != n:
        raise ConfigError(f"modality: {len(values)} values for {n} images; give one value, or one per image")
    return torch.tensor(values, dtype=torch.int64)


class ReIDModel:
    """A trained cmemd model ready to encode images (see :func:`load`).

    Attributes:
        config: the :class:`~cmemd.config.TrainConfig` the model was trained with.
        feature_dim: columns of the features :meth:`encode` returns.
        device: where the network runs.
        height, width: the input size images are resized to.
        flip: the test-time flip :meth:`encode` uses by default (the training config's ``eval.flip``).
    """

    def __init__(self, network: torch.nn.Module, config: Any, device: Union[str, torch.device] = "cpu",
                 source: str = "") -> None:
        self.network = network.eval()
        self.config = config
        self.device = torch.device(device)
        self.source = source
        self.height, self.width = int(config.data.height), int(config.data.width)
        self.flip = bool(getattr(config.eval, "flip", False))
        self._transforms: dict[str, Any] = {}

    @property
    def feature_dim(self) -> int:
        return int(self.network.feature_dim)

    def __repr__(self) -> str:
        m = self.config.model
        return (f"ReIDModel({self.source or '?'}: {m.arch}, test feature {m.test_feature!r}, "
                f"{self.feature_dim}-d, input {self.height}x{self.width}, device {self.device})")

    # ------------------------------------------------------------------ preprocessing
    def _transform(self, modality: str):
        if modality not in self._transforms:
            from cmemd.data.transforms import build_transforms

            self._transforms[modality] = build_transforms(self.height, self.width, train=False, modality=modality)
        return self._transforms[modality]

    def preprocess(self, images: Sequence[ImageLike], modality: ModalityLike) -> torch.Tensor:
        """Images (paths, PIL images, HxWx3 uint8 arrays, 3xHxW uint8 tensors) as the normalised
        N x 3 x H x W float batch evaluation feeds the network."""
        from cmemd.data.images import load_image

        mods = modality_vector(modality, len(images))
        out = []
        for img, m in zip(images, mods.tolist()):
            if isinstance(img, (str, Path)):
                img = load_image(img)
            out.append(self._transform(MODALITIES[m])(img))
        return torch.stack(out) if out else torch.zeros((0, 3, self.height, self.width))

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode(self, images: Union[Sequence[ImageLike], torch.Tensor, np.ndarray], modality: ModalityLike,
               batch_size: int = 64, flip: Optional[bool] = None) -> np.ndarray:
        """L2-normalised features (float32 numpy, N x feature_dim) of ``images``.

        Args:
            images: a list of paths / PIL images / HxWx3 uint8 arrays / 3xHxW uint8 tensors (preprocessed
                like evaluation: resized to the training size and normalised); or an N x 3 x H x W
                tensor: float = already preprocessed (used as is), uint8 = raw pixels (preprocessed).
            modality: "visible" / "thermal" / 0 / 1 for every image, or one value per image.
            batch_size: images per forward pass.
            flip: average each image's feature with its horizontal mirror's before normalising (test-time
                flip); ``None`` uses :attr:`flip` (the model's ``eval.flip``).
        """
        from cmemd.engine.extract import encode_batch

        if batch_size < 1:
            raise ConfigError(f"encode: batch_size must be >= 1, got {batch_size}")
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = torch.from_numpy(images)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ConfigError(f"encode: a tensor of images must be N x 3 x H x W, got {tuple(images.shape)}")
            if images.dtype == torch.uint8:
                images = list(images)  # raw pixels: preprocess each like any other image
            elif not images.is_floating_point():
                raise ConfigError(f"encode: an image tensor must be float (preprocessed) or uint8, got {images.dtype}")
        n = len(images)
        mods = modality_vector(modality, n)
        out = []
        for s in range(0, n, batch_size):
            chunk = images[s:s + batch_size]
            if isinstance(chunk, torch.Tensor):
                x = chunk.float()
            else:
                x = self.preprocess(chunk, mods[s:s + batch_size])
            f = encode_batch(self.network, x.to(self.device), mods[s:s + batch_size].to(self.device),
                              flip=self.flip if flip is None else bool(flip)).float()
            out.append(l2_normalize(f, dim=1).cpu())
        if not out:
            return np.zeros((0, self.feature_dim), np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)


def load(checkpoint: Union[str, Path], device: Union[str, torch.device] = "cpu") -> ReIDModel:
    """Load a checkpoint written by ``cmemd train`` as a :class:`ReIDModel` (eval mode).

    A file that is not a cmemd checkpoint, or weights that do not fit the stored architecture,
    raise :class:`~cmemd.errors.CheckpointError`.
    """
    from cmemd.app.run import load_trained, resolve_device

    dev = resolve_device(str(device))
    network, cfg = load_trained(checkpoint, device=dev)
    return ReIDModel(network, cfg, dev, source=str(checkpoint))
