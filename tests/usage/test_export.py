"""ONNX export: one file, modality as an input, dynamic batch, same features as PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cmemd
from cmemd.cli import app
from cmemd.export import ExportWrapper


def test_export_routing_equals_forward(tiny_checkpoint):
    model = cmemd.load(tiny_checkpoint)
    net = model.network
    wrapper = ExportWrapper(net)
    x = torch.randn(6, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in ([0, 1, 1, 0, 1, 0], [0] * 6, [1] * 6):
            mt = torch.tensor(m)
            ref = torch.nn.functional.normalize(net(x, mt), dim=1)
            torch.testing.assert_close(wrapper(x, mt), ref, atol=1e-6, rtol=0)
    assert net._route.__func__ is type(net)._route  # the original model keeps its own routing


def test_onnx_matches_pytorch(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images", "modality"]
    model = cmemd.load(tiny_checkpoint)
    rng = np.random.default_rng(0)
    for n, mods in ((1, [1]), (7, [0, 1, 1, 0, 0, 1, 0]), (4, [0, 0, 0, 0])):  # batch sizes other than the export's 3
        x = rng.normal(size=(n, 3, 32, 16)).astype(np.float32)
        m = np.array(mods, np.int64)
        got = sess.run(None, {"images": x, "modality": m})[0]
        ref = model.encode(torch.from_numpy(x), m)
        assert got.shape == (n, model.feature_dim)
        assert np.abs(got - ref).max() <= 1e-4


def test_onnx_of_a_model_without_modality_stems(tiny_checkpoint, tmp_path):
    """A shared-stem model (modality_specific_stages=0) keeps the same two-input signature."""
    ort = pytest.importorskip("onnxruntime")
    from cmemd.engine.checkpoint import load_checkpoint
    from cmemd.export import export_onnx
    from cmemd.models import ModelConfig, build_model

    state, _ = load_checkpoint(tiny_checkpoint)
    net = build_model(ModelConfig(**dict(state["model_config"], pretrained=None, modality_specific_stages=0))).eval()
    summary = export_onnx(net, tmp_path / "shared.onnx", height=32, width=16)
    assert summary["max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "shared.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 16)).astype(np.float32)
    got = sess.run(None, {"images": x, "modality": np.array([0, 1], np.int64)})[0]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(torch.from_numpy(x)), dim=1).numpy()
    assert np.abs(got - ref).max() <= 1e-4


def test_export_leaves_the_callers_model_as_it_was(tiny_checkpoint, tmp_path):
    """The export and its check run on copies: the model keeps its tensors (so its device), mode and values."""
    pytest.importorskip("onnxruntime")  # the check against PyTorch is where the model used to be moved
    from cmemd.export import export_onnx

    net = cmemd.load(tiny_checkpoint).network.train()  # a model in the middle of training
    params = {n: (p, p.data_ptr(), p.device) for n, p in net.named_parameters()}
    values = {k: v.clone() for k, v in net.state_dict().items()}
    summary = export_onnx(net, tmp_path / "m.onnx", height=32, width=16)
    assert summary["max_abs_diff"] <= 1e-4
    assert all(m.training for m in net.modules())
    for n, p in net.named_parameters():
        assert p is params[n][0] and p.data_ptr() == params[n][1] and p.device == params[n][2], n
    for k, v in net.state_dict().items():
        assert torch.equal(v, values[k]), k  # BatchNorm statistics untouched too
