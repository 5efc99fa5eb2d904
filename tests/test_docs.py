"""What the documentation states as shipped defaults is what the configs ship."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from cmemd.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _doc_table(doc: Path, marker: str) -> tuple[str, list[tuple[str, str]]]:
    """(config file, [(key, value)]) of the table between ``<!-- marker: FILE -->`` and ``<!-- /marker -->``."""
    text = doc.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {marker}: (\S+) -->\n(.*?)<!-- /{marker} -->", text, re.S)
    assert m, f"{doc}: no '{marker}' table"
    rows = []
    for line in m.group(2).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`"):
            rows.append((cells[2].strip("`"), cells[1]))
    return m.group(1), rows


def test_method_md_cpu_defaults_are_the_shipped_config():
    config, rows = _doc_table(ROOT / "docs" / "method.md", "synth-defaults")
    cfg = load_config(ROOT / config).to_dict()
    keys = {k for k, _ in rows}
    # the table must keep stating the numbers a reader checks first
    assert {"model.arch", "model.width", "data.height", "data.width", "optim.epochs", "optim.optimizer",
            "optim.lr"} <= keys
    for key, value in rows:
        section, name = key.split(".")
        assert cfg[section][name] == yaml.safe_load(value), \
            f"docs/method.md says {key} = {value}, {config} ships {cfg[section][name]!r}"


# ---------------------------------------------------------------------- references and links

_SKIP_DIRS = {".git", ".venv", "data", "runs", "build", "dist", "out", "__pycache__", ".pytest_cache", ".hypothesis"}
# the reference files outside the repository, which it must never cite (its own pages are docs/*.md)
_OUTSIDE = tuple(name + ".md" for name in ("METHOD", "PROTOCOLS", "CALIBRATION", "ARCHITECTURE"))


def _text_files(top: Path):
    for path in top.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(part.endswith(".egg-info") for part in parts):  # pip's build metadata (a copy of the README)
            continue
        if path.is_file() and not _SKIP_DIRS & set(parts) and path.suffix in (
                ".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", "") and path.stat().st_size < 2_000_000:
            yield path


def test_no_file_cites_the_reference_files_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in _text_files(ROOT)
            for name in _OUTSIDE if name in p.read_text(encoding="utf-8", errors="replace")]
    assert hits == [], "cite docs/method.md, docs/protocols.md, docs/architecture.md or docs/benchmark.md instead"


def test_code_cites_no_results_page():
    """Code and shipped configs say what they do and link docs/ pages that are not results: a measured number or a
    results page cited from code goes stale when the results move (docs/developing.md)."""
    hits = [str(p.relative_to(ROOT)) for p in _text_files(ROOT / "src") if "docs/results" in p.read_text("utf-8")]
    assert hits == []


def test_relative_links_in_the_pages_resolve():
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "experiments").glob("**/*.md")]
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            target = link.split("#")[0]
            if target and not link.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert broken == []
