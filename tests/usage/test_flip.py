"""Test-time flip (eval.flip): one definition, the same features from evaluation, `cmemd extract`, encode and ONNX."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import cmemd
from cmemd.cli import app
from cmemd.engine.extract import encode_batch, extract_features
from cmemd.app.evaluate import evaluation_records

runner = CliRunner()


def test_flip_feature_is_the_mean_of_the_image_and_its_mirror(tiny_checkpoint):
    model = cmemd.load(tiny_checkpoint)
    net = model.network
    x = torch.randn(5, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    m = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        a, b = net(x, m), net(torch.flip(x, dims=[3]), m)
        got = encode_batch(net, x, m, flip=True)
    assert float((a - b).abs().max()) > 1e-3  # the mirror gives another feature: the average is not trivial
    torch.testing.assert_close(got, (a + b) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(encode_batch(net, x, m), a, rtol=0, atol=0)
    np.testing.assert_allclose(model.encode(x, m, flip=True), F.normalize((a + b) / 2, dim=1).numpy(), atol=1e-6)
    assert model.flip is False  # the checkpoint's eval.flip (default off) is encode's default
    np.testing.assert_allclose(model.encode(x, m), F.normalize(a, dim=1).numpy(), atol=1e-6)


def test_flip_gives_the_same_features_in_every_path(tiny_checkpoint, tmp_path):
    """Library extraction, encode, `cmemd extract --flip`, the ONNX graph exported with --flip, and
    `cmemd eval --flip` (through eval-features on the extracted files) agree."""
    model = cmemd.load(tiny_checkpoint)
    cfg = model.config
    query, _ = evaluation_records(cfg)
    recs = query[:6]
    lib = extract_features(model.network, recs, height=cfg.data.height, width=cfg.data.width, batch_size=4, flip=True)
    lib = lib / np.linalg.norm(lib, axis=1, keepdims=True)
    enc = model.encode([r.path for r in recs], "thermal", flip=True, batch_size=5)
    np.testing.assert_allclose(enc, lib, atol=1e-5)
    assert np.abs(enc - model.encode([r.path for r in recs], "thermal")).max() > 1e-4

    res = runner.invoke(app, ["extract", "--checkpoint", str(tiny_checkpoint), "--out-dir", str(tmp_path / "f"), "--flip"])
    assert res.exit_code == 0, res.output
    assert "test-time flip on" in res.output
    with np.load(tmp_path / "f" / "query.npz") as z:
        cli = z["feats"][:6]
    np.testing.assert_allclose(cli / np.linalg.norm(cli, axis=1, keepdims=True), lib, atol=1e-5)

    res = runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "modes=[all]", "trials=2", "--flip",
                              "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "test-time flip on" in res.output  # the results header says so
    direct = json.loads((tmp_path / "r.json").read_text())["sysu all-search single-shot"]
    assert direct["settings"]["test_flip"] is True and "test-time flip on" in direct["description"]
    res = runner.invoke(app, ["eval-features", str(tmp_path / "f" / "query.npz"), str(tmp_path / "f" / "gallery_pool.npz"),
                              "--protocol", "sysu", "mode=all", "trials=2", "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g.json").read_text())["mean"] == pytest.approx(direct["mean"], abs=1e-6)
    res = runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "modes=[all]", "trials=2"])
    assert res.exit_code == 0 and "test-time flip off" in res.output

    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    res = runner.invoke(app, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--flip"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["test_time_flip"] is True and summary["max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = model.preprocess([r.path for r in recs], "thermal").numpy()
    got = sess.run(None, {"images": x, "modality": np.ones(len(recs), np.int64)})[0]
    np.testing.assert_allclose(got, enc, atol=1e-4)
