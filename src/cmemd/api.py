"""Use a trained model from Python: ``model = cmemd.load("runs/x/last.pt"); feats = model.encode(images, "thermal")``.

``encode`` applies exactly the evaluation preprocessing (``build_transforms(train=False)``: resize to
the training size, scale, ImageNet normalisation), runs each image through its own modality's
branch and returns **L2-normalised float32 numpy** rows, so ``a @ b.T`` is the cosine similarity
the evaluation ranks by. Test-time flip follows the model's ``eval.flip`` setting unless ``flip=`` says otherwise.

Arguments are checked before any work: an image of an unsupported type or shape, ``modality=0.7`` or
``device="tpu"`` is an :class:`~cmemd.errors.InputError` (a ConfigError and a ValueError) naming the argument
and what is accepted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from cmemd.data.images import load_image
from cmemd.data.records import MODALITIES
from cmemd.errors import InputError
from cmemd.numerics import l2_normalize

ImageLike = Union[str, Path, "np.ndarray", torch.Tensor, Any]  # Any: a PIL image
ModalityLike = str | int | Sequence[str | int] | np.ndarray | torch.Tensor


_MODALITY_HELP = "use 'visible' / 'thermal' or 0 (visible) / 1 (thermal), one for every image or one per image"
_IMAGE_HELP = (
    "accepted: a list of image paths, PIL images, HxWx3 (RGB) or HxW (grayscale) uint8 numpy arrays, or "
    "3xHxW uint8 tensors; or one N x 3 x H x W batch (uint8 pixels, or a float batch already preprocessed "
    "to the model's input size)"
)


def modality_vector(modality: ModalityLike, n: int) -> torch.Tensor:
    """``modality`` as an int64 (n,) tensor of 0 (visible) / 1 (thermal).

    Accepts one value for every image ("visible", "thermal", 0, 1) or one value per image (a list, or a 1-D
    integer array / tensor). Floats and booleans are refused (``0.7`` is no modality), as is anything else.
    """

    def one(m: Any) -> int:
        if isinstance(m, str):
            if m not in MODALITIES:
                raise InputError(f"modality {m!r} is unknown: {_MODALITY_HELP}")
            return MODALITIES.index(m)
        if isinstance(m, (int, np.integer)) and not isinstance(m, (bool, np.bool_)):
            if int(m) not in (0, 1):
                raise InputError(f"modality {m!r} is unknown: {_MODALITY_HELP}")
            return int(m)
        raise InputError(f"modality {m!r} ({type(m).__name__}) is not accepted: {_MODALITY_HELP}")

    if isinstance(modality, (np.ndarray, torch.Tensor)):
        if isinstance(modality, np.ndarray):
            wrong_dtype = modality.dtype.kind not in "iuU"
        else:
            wrong_dtype = modality.is_floating_point() or modality.is_complex() or modality.dtype == torch.bool
        if modality.ndim > 1 or wrong_dtype:
            raise InputError(
                f"modality: an array of dtype {modality.dtype} and shape {tuple(modality.shape)} is not "
                f"accepted: {_MODALITY_HELP}"
            )
        modality = modality.tolist()
    if isinstance(modality, (list, tuple)):
        values = [one(m) for m in modality]
        if len(values) != n:
            raise InputError(f"modality: {len(values)} values for {n} images; give one value, or one per image")
        return torch.tensor(values, dtype=torch.int64).reshape(n)
    return torch.full((n,), one(modality), dtype=torch.int64)


def _as_image(img: Any, where: str) -> Any:
    """One image as the test transform takes it (a PIL image, an HxWx3 uint8 array or a 3xHxW uint8 tensor)."""
    if isinstance(img, (str, os.PathLike)):
        return load_image(Path(img))
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu()
        if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3 and min(img.shape) > 0:
            return img
        if img.dtype == torch.uint8 and img.ndim == 2 and min(img.shape) > 0:
            return img.expand(3, *img.shape).contiguous()  # one grayscale image
        raise InputError(
            f"{where}: a {img.dtype} tensor of shape {tuple(img.shape)} is not an image; "
            "a tensor image is 3xHxW (or HxW grayscale) uint8 pixels"
        )
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise InputError(
                f"{where}: an array of dtype {img.dtype} is not accepted; images are uint8 pixels 0..255 "
                "(a float image in [0, 1]: (a * 255).round().astype(np.uint8))"
            )
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim == 2 and min(img.shape) > 0:
            return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))  # grayscale, as a single-channel file
        if img.ndim == 3 and img.shape[2] == 3 and min(img.shape) > 0:
            return img
        hint = " (RGBA: Image.fromarray(a).convert('RGB'))" if img.ndim == 3 and img.shape[2] == 4 else ""
        raise InputError(
            f"{where}: an array of shape {img.shape} is not an image; an array image is HxWx3 (RGB) or "
            f"HxW (grayscale) uint8{hint}"
        )
    if isinstance(img, (bytes, bytearray, memoryview)):
        raise InputError(
            f"{where}: raw bytes are not decoded here; pass the file's path, or PIL.Image.open(io.BytesIO(data))"
        )
    raise InputError(f"{where}: {type(img).__name__} is not an image; {_IMAGE_HELP}")


def _check_device(device: Any) -> str:
    """``device`` as a string :func:`cmemd.app.runtime.resolve_device` accepts, or InputError naming it."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise InputError(
            f"device={device!r} ({type(device).__name__}) is not accepted: use 'auto', 'cpu', 'cuda' or "
            "'cuda:N' (or a torch.device)"
        )
    if device == "auto":
        return device
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise InputError(f"device={device!r} is not supported: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


class ReIDModel:
    """A trained cmemd model ready to encode images (see :func:`load`).

    Attributes:
        config: the :class:`~cmemd.config.TrainConfig` the model was trained with.
        feature_dim: columns of the features :meth:`encode` returns.
        device: where the network runs.
        height, width: the input size images are resized to.
        flip: the test-time flip :meth:`encode` uses by default (the training config's ``eval.flip``).
    """

    def __init__(
        self, network: torch.nn.Module, config: Any, device: str | torch.device = "cpu", source: str = ""
    ) -> None:
        self.network = network.eval()
        self.config = config
        self.device = torch.device(device)
        self.source = source
        self.height, self.width = int(config.data.height), int(config.data.width)
        self.flip = bool(getattr(config.eval, "flip", False))
        self._transforms: dict[str, Any] = {}

    @property
    def feature_dim(self) -> int:
        # torch types an unknown Module attribute as Tensor | Module; cmemd networks set feature_dim as an int
        return int(self.network.feature_dim)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"ReIDModel({self.source or '?'}: {m.arch}, test feature {m.test_feature!r}, "
            f"{self.feature_dim}-d, input {self.height}x{self.width}, device {self.device})"
        )

    # ------------------------------------------------------------------ preprocessing
    def _transform(self, modality: str):
        if modality not in self._transforms:
            from cmemd.data.transforms import build_transforms

            self._transforms[modality] = build_transforms(self.height, self.width, train=False, modality=modality)
        return self._transforms[modality]

    def preprocess(self, images: Sequence[ImageLike], modality: ModalityLike) -> torch.Tensor:
        """Images (a list of paths, PIL images, HxWx3 or HxW uint8 arrays, 3xHxW uint8 tensors) as the
        normalised N x 3 x H x W float batch evaluation feeds the network."""
        images = self._image_list(images)
        mods = modality_vector(modality, len(images))
        checked = [_as_image(img, f"images[{i}]") for i, img in enumerate(images)]
        out = [self._transform(MODALITIES[m])(img) for img, m in zip(checked, mods.tolist())]
        return torch.stack(out) if out else torch.zeros((0, 3, self.height, self.width))

    @staticmethod
    def _image_list(images: Any) -> Sequence[Any]:
        """``images`` when it is a list of images; InputError for one bare image, a string or bytes (which would
        be iterated character by character), or anything else."""
        if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
            raise InputError(
                f"images: got one {type(images).__name__}, not a list of images; pass a list "
                f"([image]) even for one image ({_IMAGE_HELP})"
            )
        if not isinstance(images, (list, tuple)):
            raise InputError(f"images: {type(images).__name__} is not accepted; {_IMAGE_HELP}")
        return images

    def _batch(self, images: Any) -> torch.Tensor | Sequence[Any]:
        """``images`` of :meth:`encode` as a checked float batch (used as is) or a list of images to preprocess."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise InputError(
                    f"images: a {images.ndim}-D array is not accepted (one image? pass a list: [image]); {_IMAGE_HELP}"
                )
            if images.dtype == np.uint8 and images.shape[-1] == 3 and images.shape[1] != 3:
                return list(images)  # N x H x W x 3 pixels: each an HxWx3 image
            if images.dtype.kind not in "uf":
                raise InputError(f"images: an array of dtype {images.dtype} is not accepted; {_IMAGE_HELP}")
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            return self._image_list(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(
                f"images: a tensor of images must be N x 3 x H x W, got {tuple(images.shape)}; {_IMAGE_HELP}"
            )
        if images.dtype == torch.uint8:
            return list(images)  # raw pixels: preprocess each like any other image
        if not images.is_floating_point():
            raise InputError(f"images: an image tensor must be float (preprocessed) or uint8, got {images.dtype}")
        if tuple(images.shape[2:]) != (self.height, self.width):
            raise InputError(
                f"images: a float (preprocessed) batch must be N x 3 x {self.height} x {self.width}, this "
                f"model's input size, got {tuple(images.shape)}; pass uint8 pixels or a list of images to "
                "have them resized and normalised"
            )
        if images.numel() and not bool(torch.isfinite(images).all()):
            raise InputError(
                "images: the float batch holds NaN or inf values; preprocess the images again "
                "(or pass them as uint8 pixels / paths)"
            )
        return images

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode(
        self,
        images: Sequence[ImageLike] | torch.Tensor | np.ndarray,
        modality: ModalityLike,
        batch_size: int = 64,
        flip: bool | None = None,
    ) -> np.ndarray:
        """L2-normalised features (float32 numpy, N x feature_dim) of ``images``.

        Args:
            images: a list (even of one image) of image paths, PIL images (any mode; converted to RGB), numpy
                uint8 arrays HxWx3 (RGB) or HxW (one grayscale image, its channel repeated, as a single-channel
                file is read), or 3xHxW uint8 tensors, each preprocessed like evaluation (resized to the training
                size and normalised); or one batch: N x 3 x H x W (or N x H x W x 3) uint8 pixels, preprocessed
                the same way, or an N x 3 x height x width float tensor/array already preprocessed (used as is;
                it must be the model's input size and finite). Float *images* are refused rather than guessed
                at (0..1 or 0..255?): convert them to uint8. Bytes, a bare path/image (not in a list),
                4-channel arrays and other shapes raise :class:`~cmemd.errors.InputError`.
            modality: "visible" / "thermal" / 0 / 1 for every image, or one value per image.
            batch_size: images per forward pass (an int >= 1).
            flip: average each image's feature with its horizontal mirror's before normalising (test-time
                flip); ``None`` uses :attr:`flip` (the model's ``eval.flip``).

        Raises:
            InputError: an argument of an unsupported type, shape or value (checked before any work).
            DatasetError: an image file that is missing or does not decode.
        """
        from cmemd.engine.extract import encode_batch

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"encode: batch_size={batch_size!r} must be an integer >= 1")
        if flip is not None and not isinstance(flip, (bool, np.bool_)):
            raise InputError(f"encode: flip={flip!r} must be True, False or None (the model's eval.flip)")
        images = self._batch(images)
        n = len(images)
        mods = modality_vector(modality, n)
        if not isinstance(images, torch.Tensor):  # every in-memory image checked before the first forward pass
            images = [
                img if isinstance(img, (str, os.PathLike)) else _as_image(img, f"images[{i}]")
                for i, img in enumerate(images)
            ]  # files are decoded a batch at a time
        out = []
        for s in range(0, n, batch_size):
            chunk = images[s : s + batch_size]
            if isinstance(chunk, torch.Tensor):
                x = chunk.float()
            else:
                x = self.preprocess(chunk, mods[s : s + batch_size])
            f = encode_batch(
                self.network,
                x.to(self.device),
                mods[s : s + batch_size].to(self.device),
                flip=self.flip if flip is None else bool(flip),
            ).float()
            out.append(l2_normalize(f, dim=1).cpu())
        if not out:
            return np.zeros((0, self.feature_dim), np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> ReIDModel:
    """Load a checkpoint written by ``cmemd train`` as a :class:`ReIDModel` (eval mode).

    A file that is not a cmemd checkpoint, or weights that do not fit the stored architecture,
    raise :class:`~cmemd.errors.CheckpointError`. ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
    :class:`torch.device`; anything else (``"tpu"``) is an :class:`~cmemd.errors.InputError`.
    """
    from cmemd.app.evaluate import load_trained
    from cmemd.app.runtime import resolve_device

    if not isinstance(checkpoint, (str, os.PathLike)):
        raise InputError(
            f"checkpoint={checkpoint!r} ({type(checkpoint).__name__}) is not accepted: pass the path of "
            "a last.pt written by cmemd train"
        )
    dev = resolve_device(_check_device(device))
    network, cfg = load_trained(checkpoint, device=dev)
    return ReIDModel(network, cfg, dev, source=str(checkpoint))
