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
