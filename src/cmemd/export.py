"""ONNX export of the feature extractor: ``cmemd export --checkpoint last.pt --out model.onnx``.

One file serves both modalities: inputs ``images`` (float32 N x 3 x H x W, preprocessed as in
evaluation) and ``modality`` (int64 (N,), 0 visible / 1 thermal); output ``features``
(float32 N x D, L2-normalised, as :meth:`cmemd.api.ReIDModel.encode` returns). The batch
dimension is dynamic; H and W are fixed to the training size. With ``flip`` (the checkpoint's
``eval.flip`` by default) the graph also runs the mirrored images and averages the two features,
as :func:`cmemd.engine.extract.encode_batch` does.

The model routes images to their modality's stem with data-dependent ``nonzero`` /
``index_select`` / ``index_copy``, which a traced graph would freeze to the example batch.
The exported graph instead runs both stems on the whole batch and picks each row's with
``torch.where`` (:func:`export_route`): numerically the same (eval-mode BatchNorm is per
sample), at the cost of running the modality-specific stages twice.
"""

from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cmemd.errors import ConfigError
from cmemd.models.vtreid import VTReIDModel
from cmemd.numerics import l2_normalize


def export_route(self: VTReIDModel, x: Tensor, modality: Tensor | None, layout: Any = None) -> Tensor:
    """Branch-free replacement for ``VTReIDModel._route``: both stems, then a per-row select (a batch layout,
    the training loader's shortcut, is not needed: every row takes both stems)."""
    if self.modality_parts is None:
        return x
    if modality is None:
        raise ConfigError("export: modality is required (0 visible / 1 thermal per image)")
    outs = [part(x) for part in self.modality_parts]
    m = modality.reshape(-1, *([1] * (outs[0].dim() - 1)))
    return torch.where(m == 1, outs[1], outs[0])


class ExportWrapper(nn.Module):
    """``(images, modality) -> L2-normalised features`` with export-friendly routing (and test-time flip)."""

    def __init__(self, model: nn.Module, flip: bool = False) -> None:
        super().__init__()
        net = copy.deepcopy(model).eval()
        # An instance attribute shadows the method (torch types Module attribute assignment for tensors and
        # modules only).
        net._route = types.MethodType(export_route, net)  # type: ignore[assignment]
        self.net = net
        self.flip = bool(flip)

    def forward(self, images: Tensor, modality: Tensor) -> Tensor:
        from cmemd.engine.extract import encode_batch

        f = l2_normalize(encode_batch(self.net, images, modality, flip=self.flip), dim=1)
        if self.net.modality_parts is None:
            # A model without modality-specific stages ignores the modality; keep it a graph input
            # (the exporter drops unused inputs) so every exported file has the same signature.
            f = f + 0 * modality.to(f.dtype).unsqueeze(1)
        return f


# The graph slices the stripes with sizes computed from the input (Slice with tensor inputs: opset 10) and
# selects each row's stem with Where (opset 9); the top is what this torch's ONNX exporter writes.
MIN_OPSET = 10


def max_opset() -> int:
    """The newest ONNX opset this torch's exporter writes."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover - a torch that moved it: the TorchScript exporter's documented top
        return 20
    return int(getattr(_constants, "ONNX_MAX_OPSET", getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)))


def check_opset(opset: int) -> None:
    """:class:`ConfigError` unless ``opset`` is one the export can be written in (checked before any work)."""
    top = max_opset()
    if not MIN_OPSET <= int(opset) <= top:
        raise ConfigError(
            f"--opset {opset}: the export needs an ONNX opset in {MIN_OPSET}..{top} "
            f"(the graph's dynamic slicing needs opset {MIN_OPSET}; {top} is the newest this torch "
            "writes); the default is 17"
        )


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    height: int,
    width: int,
    opset: int = 17,
    check: bool = True,
    flip: bool = False,
) -> dict[str, Any]:
    """Write ``model`` (eval mode) as ONNX to ``out``; returns a summary (path, inputs, outputs, test-time
    flip, max difference to PyTorch on a probe batch when onnxruntime is installed and ``check``).

    ``model`` itself is left as it was (device, train/eval mode, weights): the export and the check run on
    CPU copies of it.
    """
    from cmemd.engine.extract import encode_batch

    check_opset(opset)
    out = Path(out)
    if not out.parent.exists():
        raise ConfigError(f"export: folder {out.parent} does not exist; create it first")
    wrapper = ExportWrapper(model, flip=flip).cpu()  # a deep copy: model keeps its device and mode
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, height, width, generator=g)
    m = torch.tensor([0, 1, 0], dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript); it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (x, m),
            str(out),
            input_names=["images", "modality"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "modality": {0: "batch"}, "features": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    summary: dict[str, Any] = {
        "path": str(out),
        "inputs": {"images": f"float32 N x 3 x {height} x {width}", "modality": "int64 N (0 visible, 1 thermal)"},
        "outputs": {"features": "float32 N x D, L2-normalised"},
        "test_time_flip": bool(flip),
    }
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            summary["check"] = "skipped: onnxruntime is not installed (pip install cmemd[export])"
            return summary
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        x = torch.randn(5, 3, height, width, generator=g)
        m = torch.tensor([1, 0, 1, 1, 0], dtype=torch.int64)
        with torch.no_grad():
            # the caller's model stays where and as it is (a GPU model in train mode is not moved or switched)
            reference = copy.deepcopy(model).cpu().eval()
            ref = l2_normalize(encode_batch(reference, x, m, flip=flip), dim=1).numpy()
        got = sess.run(None, {"images": x.numpy(), "modality": m.numpy()})[0]
        summary["max_abs_diff"] = float(abs(got - ref).max())
    return summary


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, *, flip: bool | None = None, **kw: Any
) -> dict[str, Any]:
    """Load a ``cmemd train`` checkpoint and export it (see :func:`export_onnx`); ``flip=None`` follows the
    checkpoint's ``eval.flip``."""
    from cmemd.app.evaluate import load_trained

    check_opset(kw.get("opset", 17))  # before loading the checkpoint
    if not Path(out).parent.exists():
        raise ConfigError(f"export: folder {Path(out).parent} does not exist; create it first")
    model, cfg = load_trained(checkpoint, device="cpu")
    flip = cfg.eval.flip if flip is None else bool(flip)
    return export_onnx(model, out, height=cfg.data.height, width=cfg.data.width, flip=flip, **kw)
