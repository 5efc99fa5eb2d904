"""The evaluation report: figures, ranked lists, t-SNE, index.html, and what a person sees of it in Chromium."""
from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from cmemd.cli import app  # noqa: E402
from cmemd.benchmarks.sysu import SAME_LOCATION  # noqa: E402
from cmemd.evaluation.features import FeatureSet  # noqa: E402
from cmemd.report import ranked_lists, tsne, write_report  # noqa: E402


@pytest.fixture(scope="module")
def eval_run(tiny_checkpoint, tmp_path_factory):
    """`cmemd eval --report --out` on the tiny model (the CLI path: features extracted once, then reported):
    the report folder and the results.json of the same evaluation."""
    out = tmp_path_factory.mktemp("report")
    results = tmp_path_factory.mktemp("results") / "results.json"
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "trials=2",
                                 "--report", str(out), "--out", str(results)])
    assert r.exit_code == 0, r.output
    assert f"report written to {out / 'index.html'}" in r.output
    return out, json.loads(results.read_text())


@pytest.fixture(scope="module")
def eval_report(eval_run):
    return eval_run[0]


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
                  if not (removal is SAME_LOCATION and qc[i] == 3 and gc[j] == 2)]
        out.append([j for _, j in sorted(scores)[:k]])
    return out


@pytest.mark.parametrize("removal", ["none", SAME_LOCATION])
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


# ---------------------------------------------------------------------- in a real browser

# Injected first into a copy of the page: records script errors, console errors and resources that fail to load
# (capture phase: a broken <img> fires no bubbling event), then after `load` writes what every image is to a person
# (decoded size, size on screen, visibility) and those errors into the DOM, which Chromium dumps.
_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(e.message ? "script: " + e.message
  : "resource: " + (e.target && (e.target.src || e.target.href))), true);
const consoleError = console.error;
console.error = (...a) => { window.__errors.push("console: " + a.join(" ")); consoleError(...a); };
window.addEventListener("load", () => {
  const images = [...document.images].map(i => { const r = i.getBoundingClientRect(), c = getComputedStyle(i);
    return {src: i.getAttribute("src"), complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
            shown: [r.width, r.height], visible: c.display !== "none" && c.visibility === "visible"
            && parseFloat(c.opacity) > 0}; });
  const out = document.createElement("pre");
  out.id = "browser-probe";
  out.textContent = JSON.stringify({errors: window.__errors, images: images});
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    """Chromium's path. CI (`.ci/run` installs it, CI=true) must have it; a developer machine may skip."""
    found = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI: no Chromium on this machine (.ci/run installs it: apt-get install chromium)")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return found


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


def _probe_page(report: Path, tmp: Path) -> tuple[dict, str]:
    """Open a copy of ``report``'s index.html, the probe injected, in Chromium; (the probe's record, the DOM)."""
    page = tmp / "page"
    shutil.copytree(report, page)
    index = page / "index.html"
    text = index.read_text(encoding="utf-8")
    assert text.count("<head>") == 1
    index.write_text(text.replace("<head>", "<head>" + _PROBE), encoding="utf-8")
    # a virtual-time budget lets the page finish loading (images decoded, `load` handlers run) before the dump
    r = _chromium("--window-size=1200,2000", "--virtual-time-budget=10000", "--dump-dom", index.as_uri())
    dom = r.stdout
    start = dom.find('<pre id="browser-probe">')
    assert start >= 0, f"Chromium gave no probe record (exit {r.returncode}): {r.stderr[-2000:]}"
    record = dom[start + len('<pre id="browser-probe">'):dom.index("</pre>", start)]
    return json.loads(html.unescape(record)), dom


class _Tables(html.parser.HTMLParser):
    """{h3 text: [[cell text, ...] per row]} of the dumped page: the tables as the browser built them."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._h3: str | None = None
        self._text: list[str] | None = None
        self._current: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "h3":
            self._text = []
        elif tag == "tr" and self._current is not None:
            self.tables[self._current].append([])
        elif tag in ("td", "th"):
            self._text = []

    def handle_endtag(self, tag):
        if tag == "h3":
            self._current = "".join(self._text).strip()
            self.tables[self._current] = []
            self._text = None
        elif tag in ("td", "th") and self._current is not None:
            self.tables[self._current][-1].append("".join(self._text).strip())
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def test_report_in_chromium_loads_shows_every_image_and_the_numbers_of_results_json(eval_run, tmp_path):
    report, results = eval_run
    probe, dom = _probe_page(report, tmp_path)
    assert probe["errors"] == []
    expected = {"cmc.png", "embedding.png", "ranked_lists.png", "training.png"}
    assert {i["src"] for i in probe["images"]} == expected
    for img in probe["images"]:
        with Image.open(report / img["src"]) as im:  # decoded at the file's own size, and drawn on the page
            assert img["complete"] and img["natural"] == [im.width, im.height], img
        assert img["visible"] and img["shown"][0] > 200 and img["shown"][1] > 100, img
    # every table the browser shows is a result of results.json, with its numbers (%, two decimals)
    parser = _Tables()
    parser.feed(dom)
    tables = parser.tables
    names = [k for k in results if k != "modality_gap"]
    assert sorted(tables) == sorted(names)

    def pct(x: float | None) -> str:
        return "-" if x is None or x != x else f"{100 * x:.2f}"

    for name in names:
        res, rows = results[name], tables[name]
        metrics = rows[0][1:]
        assert metrics == ["R1", "R5", "R10", "R20", "mAP", "mINP"]
        assert len(rows) == 1 + len(res["trials"]) + 1
        for row, t, trial in zip(rows[1:], res["trial_ids"], res["trials"]):
            assert row == [f"trial {t}"] + [pct(trial[k]) for k in metrics]
        assert rows[-1] == ["mean ± std"] + [f"{pct(res['mean'][k])} ± {pct(res['std'][k])}" for k in metrics]


def test_the_browser_probe_sees_a_broken_image(eval_report, tmp_path):
    """The probe above can fail: an image that does not decode is reported as a failed resource, of no size."""
    broken = tmp_path / "broken"
    shutil.copytree(eval_report, broken)
    data = (broken / "cmc.png").read_bytes()
    (broken / "cmc.png").write_bytes(b"not a PNG" + data[64:])  # the signature and header gone
    probe, _ = _probe_page(broken, tmp_path)
    cmc = next(i for i in probe["images"] if i["src"] == "cmc.png")
    assert cmc["natural"] == [0, 0]
    assert any("cmc.png" in e for e in probe["errors"]), probe["errors"]


def test_report_screenshot_in_chromium_shows_the_figures(eval_report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2000", (eval_report / "index.html").resolve().as_uri())
    assert shot.is_file(), "Chromium wrote no screenshot"
    a = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert a.shape[:2] == (2000, 1200)
    non_white = (a.min(-1) < 235).mean()
    assert non_white > 0.05, f"only {non_white:.1%} of the page is not white"
    # the figures were loaded, not broken-image icons: green and red frames of the ranked lists show
    green = ((a[..., 1] > 120) & (a[..., 0] < 80) & (a[..., 2] < 80)).sum()
    red = ((a[..., 0] > 170) & (a[..., 1] < 70) & (a[..., 2] < 70)).sum()
    assert green + red > 500, (green, red)
