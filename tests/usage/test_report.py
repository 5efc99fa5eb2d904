"""The evaluation report: figures, ranked lists, t-SNE, index.html (and a headless-browser look)."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from cmemd.cli import app  # noqa: E402
from cmemd.evaluation.features import FeatureSet  # noqa: E402
from cmemd.report import ranked_lists, tsne, write_report  # noqa: E402


@pytest.fixture(scope="module")
def eval_report(tiny_checkpoint, tmp_path_factory):
    """`cmemd eval --report` on the tiny model (the CLI path: features extracted once, then reported)."""
    out = tmp_path_factory.mktemp("report")
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--trials", "2",
                                 "--report", str(out)])
    assert r.exit_code == 0, r.output
    assert f"report written to {out / 'index.html'}" in r.output
    return out


def test_report_files(eval_report):
    page = (eval_report / "index.html").read_text()
    for png in ("cmc.png", "embedding.png", "ranked_lists.png"):
        assert f'src="{png}"' in page
        im = Image.open(eval_report / png)
        assert im.width > 300 and im.height > 200
        assert np.asarray(im.convert("L")).std() > 5  # something was drawn
    # the per-trial table of both SYSU modes, two trials each, and the mean row
    assert page.count("<td>trial 0</td>") == 2 and page.count("<td>trial 1</td>") == 2
    assert page.count("mean ± std") == 2
    assert "thermal" in page and "visible" in page
    # the modality gap of the reported features, and the run's training curves (metrics.jsonl beside last.pt)
    assert "Modality gap" in page and "modality probe" in page
    assert 'src="training.png"' in page
    im = Image.open(eval_report / "training.png")
    assert im.width > 600 and np.asarray(im.convert("L")).std() > 5


def _brute_force_top(q, qc, g, gc, k, removal):
    out = []
    for i in range(len(q)):
        scores = [(-(float(q[i] @ g[j]) / np.linalg.norm(q[i]) / np.linalg.norm(g[j])), j) for j in range(len(g))
                  if not (removal == "sysu-same-location" and qc[i] == 3 and gc[j] == 2)]
        out.append([j for _, j in sorted(scores)[:k]])
    return out


@pytest.mark.parametrize("removal", ["none", "sysu-same-location"])
def test_ranked_lists_match_brute_force(removal):
    rng = np.random.default_rng(1)
    q = FeatureSet(rng.normal(size=(7, 5)).astype(np.float32), np.arange(7), rng.choice([3, 6], 7), np.array(["q"] * 7))
    g = FeatureSet(rng.normal(size=(30, 5)).astype(np.float32), rng.integers(0, 7, 30), rng.choice([1, 2, 4, 5], 30),
                   np.array(["g"] * 30))
    order, scores = ranked_lists(q, g, np.arange(7), top_k=6, removal=removal)
    assert order.tolist() == _brute_force_top(q.feats, q.cams, g.feats, g.cams, 6, removal)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


def test_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 20)) * 4
    labels = np.repeat(np.arange(4), 25)
    x = centres[labels] + rng.normal(size=(100, 20))
    y = tsne(x, perplexity=15, iterations=300, seed=0)
    assert y.shape == (100, 2) and np.isfinite(y).all()
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = labels[d.argmin(1)]
    assert (nearest == labels).mean() > 0.95
    # the 2-D clusters are separated: mean within-cluster distance well below between-cluster
    same = labels[:, None] == labels[None]
    np.fill_diagonal(d, 0)
    assert np.sqrt(d[same]).mean() < 0.5 * np.sqrt(d[~same]).mean()


def test_write_report_rejects_mismatched_features(tmp_path, eval_report):
    from cmemd.errors import EvaluationError

    q = FeatureSet(np.ones((3, 4), np.float32), np.arange(3), np.full(3, 3), np.array(["a"] * 3))
    g = FeatureSet(np.ones((3, 5), np.float32), np.arange(3), np.full(3, 1), np.array(["a"] * 3))
    with pytest.raises(EvaluationError, match="4-d but gallery 5-d"):
        write_report(tmp_path, {"x": object()}, q, g)


def test_index_html_renders_in_chromium(eval_report, tmp_path):
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2000", (eval_report / "index.html").resolve().as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file(), "Chromium wrote no screenshot"
    a = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert a.shape[:2] == (2000, 1200)
    non_white = (a.min(-1) < 235).mean()
    assert non_white > 0.05, f"only {non_white:.1%} of the page is not white"
    # the figures were loaded, not broken-image icons: green and red frames of the ranked lists show
    green = ((a[..., 1] > 120) & (a[..., 0] < 80) & (a[..., 2] < 80)).sum()
    red = ((a[..., 0] > 170) & (a[..., 1] < 70) & (a[..., 2] < 70)).sum()
    assert green + red > 500, (green, red)
    shutil.copy(shot, eval_report / "screenshot.png")
