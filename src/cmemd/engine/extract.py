"""Feature extraction: records in, features out, each image through its own modality's branch.

:func:`encode_batch` is the one place the eval feature of a batch is computed (with or without
test-time flip); evaluation, ``cmemd extract``, ``ReIDModel.encode`` and the ONNX export all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

from cmemd.data.records import ImageRecord
from cmemd.models.vtreid import VTReIDModel


def encode_batch(
    model: nn.Module, images: torch.Tensor, modality: torch.Tensor | None, *, flip: bool = False
) -> torch.Tensor:
    """The model's eval-mode feature of a batch; with ``flip`` the mean of the features of the images
    and of their horizontal mirrors (test-time flip, as post-2021 VT-ReID code evaluates)."""
    f = model(images, modality)
    if flip:
        f = (f + model(images.flip(-1), modality)) / 2
    return f


@torch.no_grad()
def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    *,
    height: int,
    width: int,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    use_cache: bool = False,
    cache_dir: str | None = None,
    dataset_root: str | None = None,
    progress: bool = False,
    desc: str = "extract",
    flip: bool = False,
    pin_memory: bool = False,
) -> np.ndarray:
    """The model's test feature for every record, in record order (float32, N x D).

    The modality tensor comes from the records, so a query of thermal images goes through the
    thermal stem and a visible gallery through the visible one, whatever the order. ``flip``
    averages each image's feature with its mirror's (:func:`encode_batch`). ``num_workers`` decode in
    worker processes, ``use_cache`` reads the decoded-image cache (built on first use, see
    :mod:`cmemd.data.cache`) and ``pin_memory`` pins the batches for an asynchronous copy to a GPU; none of
    them changes the features.
    """
    from cmemd.data.dataset import build_test_loader
    from cmemd.progress import progress_bar

    was_training = model.training
    model.eval()
    loader = build_test_loader(
        records,
        height=height,
        width=width,
        batch_size=batch_size,
        num_workers=num_workers,
        use_cache=use_cache,
        cache_dir=cache_dir,
        dataset_root=dataset_root,
        pin_memory=pin_memory,
    )
    out = []
    for batch in progress_bar(loader, desc=desc, disable=not progress, leave=False):
        images, modalities = batch[0].to(device, non_blocking=pin_memory), batch[2].to(device, non_blocking=pin_memory)
        out.append(encode_batch(model, images, modalities, flip=flip).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def extract_outputs(
    model: nn.Module,
    records: Sequence[ImageRecord],
    fields: Sequence[str],
    *,
    height: int,
    width: int,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Named parts of the model's eval-mode output for every record, in record order.

    ``fields`` are :class:`~cmemd.models.VTOutput` attribute names (e.g. ``global_feat``,
    ``local_feats``) or ``"test"`` for the test feature; a field the model does not produce is left out.
    """
    from cmemd.data.dataset import build_test_loader

    was_training = model.training
    model.eval()
    loader = build_test_loader(records, height=height, width=width, batch_size=batch_size)
    parts: dict[str, list[torch.Tensor]] = {f: [] for f in fields}
    net = cast(VTReIDModel, model)  # the named outputs are those of VTReIDModel.forward_output
    for batch in loader:
        out = net.forward_output(batch[0].to(device), batch[2].to(device))
        for f in fields:
            x = net.test_feature(out) if f == "test" else getattr(out, f, None)
            if x is not None:
                parts[f].append(x.float().cpu())
    model.train(was_training)
    return {f: torch.cat(v).numpy() for f, v in parts.items() if v}
