"""cmemd.load / ReIDModel.encode and the index / search commands."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cmemd
from cmemd.cli import app
from cmemd.data.images import load_image
from cmemd.data.records import ImageRecord
from cmemd.data.transforms import build_transforms
from cmemd.engine.extract import extract_features
from cmemd.errors import CheckpointError, ConfigError, EvaluationError


def _images(root: Path, cam: str, n: int) -> list[Path]:
    return sorted((root / cam).rglob("*.jpg"))[:n]


def _reference(model, paths, modality) -> np.ndarray:
    """The evaluation path (records -> test loader -> network), normalised here."""
    recs = [ImageRecord(str(p), 0, 1, modality) for p in paths]
    cfg = model.config
    f = extract_features(model.network, recs, height=cfg.data.height, width=cfg.data.width, batch_size=7)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_import_is_light():
    code = "import sys, cmemd; assert 'torch' not in sys.modules, 'torch imported'; assert callable(cmemd.load)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_and_encode_match_evaluation(tiny_checkpoint, tiny_sysu):
    model = cmemd.load(tiny_checkpoint, device="cpu")
    assert model.config.data.height == 32 and model.config.model.arch == "resnet18"
    assert model.device == torch.device("cpu")
    paths = _images(tiny_sysu, "cam3", 5)
    for modality in ("thermal", "visible"):
        ref = _reference(model, paths, modality)
        got = model.encode(paths, modality, batch_size=2)
        assert got.dtype == np.float32 and got.shape == (5, model.feature_dim)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # every input form gives the same features
    pil = [load_image(p) for p in paths]
    ref = model.encode(paths, 1)
    np.testing.assert_allclose(model.encode(pil, "thermal"), ref, atol=1e-6)
    np.testing.assert_allclose(model.encode([np.array(im) for im in pil], "thermal"), ref, atol=1e-6)
    uint8 = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in pil])
    np.testing.assert_allclose(model.encode(uint8, "thermal", batch_size=3), ref, atol=1e-6)
    t = build_transforms(32, 16, train=False, modality="thermal")
    pre = torch.stack([t(im) for im in pil])
    np.testing.assert_allclose(model.encode(pre, "thermal"), ref, atol=1e-6)


def test_per_image_modality_routes_each_image(tiny_checkpoint, tiny_sysu):
    model = cmemd.load(tiny_checkpoint)
    paths = _images(tiny_sysu, "cam1", 2) + _images(tiny_sysu, "cam3", 2)
    mixed = model.encode(paths, ["visible", "visible", "thermal", "thermal"], batch_size=3)
    np.testing.assert_allclose(mixed[:2], model.encode(paths[:2], "visible"), atol=1e-6)
    np.testing.assert_allclose(mixed[2:], model.encode(paths[2:], "thermal"), atol=1e-6)
    # the two modality branches really differ (modality-specific stem)
    assert np.abs(model.encode(paths[:2], "thermal") - mixed[:2]).max() > 1e-3
    with pytest.raises(ConfigError, match="modality"):
        model.encode(paths, "infrared")
    with pytest.raises(ConfigError, match="one per image"):
        model.encode(paths, [0, 1])


def test_load_rejects_bad_checkpoints(tiny_checkpoint, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        cmemd.load(junk)
    # the weights of a different architecture under this checkpoint's header
    from cmemd.engine.checkpoint import load_checkpoint, save_checkpoint

    state, _ = load_checkpoint(tiny_checkpoint)
    state["model_config"] = dict(state["model_config"], width=16)
    other = save_checkpoint(state, tmp_path / "other.pt", keep_previous=False)
    with pytest.raises(CheckpointError, match="do not fit"):
        cmemd.load(other)


def test_index_and_search(tiny_checkpoint, tiny_sysu, tmp_path, monkeypatch):
    runner = CliRunner()
    gallery = tmp_path / "gallery.npz"
    r = runner.invoke(app, ["index", "--checkpoint", str(tiny_checkpoint), "--images", str(tiny_sysu / "cam1"),
                            "--modality", "visible", "--out", str(gallery), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    files = sorted((tiny_sysu / "cam1").rglob("*.jpg"))
    from cmemd.retrieval import load_gallery

    g, mod = load_gallery(gallery)
    assert mod == "visible" and len(g) == len(files) and (g.pids == -1).all() and (g.cams == 0).all()
    assert [Path(p) for p in g.paths] == files
    model = cmemd.load(tiny_checkpoint)
    np.testing.assert_allclose(g.feats, model.encode(files, "visible"), atol=1e-5)

    # the search encodes the query images only, never the gallery
    from cmemd.api import ReIDModel

    calls: list[int] = []
    real = ReIDModel.encode

    def counting(self, images, modality, batch_size=64):
        calls.append(len(images))
        return real(self, images, modality, batch_size)

    monkeypatch.setattr(ReIDModel, "encode", counting)
    queries = _images(tiny_sysu, "cam3", 2)
    strip = tmp_path / "strip.png"
    r = runner.invoke(app, ["search", "--checkpoint", str(tiny_checkpoint), "--gallery", str(gallery),
                            "--query", str(queries[0]), "--query", str(queries[1]), "--query-modality", "thermal",
                            "--top-k", "4", "--out", str(strip), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert calls == [2]
    # brute force: the printed ranking is the cosine-sorted gallery
    q = real(model, queries, "thermal")
    sim = q @ g.feats.T
    lines = [ln.split() for ln in r.output.splitlines() if ln.startswith("  ") and not ln.strip().startswith("strip")]
    assert len(lines) == 8
    for i in range(2):
        expect = np.argsort(-sim[i], kind="stable")[:4]
        got = lines[4 * i: 4 * i + 4]
        assert [ln[2] for ln in got] == [g.paths[j] for j in expect]
        np.testing.assert_allclose([float(ln[1]) for ln in got], sim[i, expect], atol=1e-4)
    for i in (1, 2):
        im = Image.open(tmp_path / f"strip_{i}.png")
        assert im.height >= 128 and im.width >= 5 * 64  # query + 4 matches side by side, 128 x 64 tiles


def test_search_rejects_gallery_of_another_dimension(tiny_checkpoint, tiny_sysu, tmp_path):
    from cmemd.evaluation.features import load_features, save_features
    from cmemd.retrieval import search

    path = save_features(tmp_path / "g7.npz", np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32),
                         [-1] * 4, [0] * 4, ["a", "b", "c", "d"])
    r = CliRunner().invoke(app, ["search", "--checkpoint", str(tiny_checkpoint), "--gallery", str(path),
                                 "--query", str(_images(tiny_sysu, "cam3", 1)[0]), "--query-modality", "thermal"])
    assert r.exit_code == 2 and "7-d" in r.output and "re-index" in r.output
    with pytest.raises(EvaluationError, match="7-d"):
        search(load_features(path), np.ones((1, 5), np.float32))
