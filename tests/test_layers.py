"""The library packages stay usable without a config object: they never import the application layer; the engine
never reads a synthetic generator's files (the synthetic benchmark's diagnostics do)."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cmemd"
LIBRARY = ["data", "models", "losses", "evaluation", "engine", "benchmarks", "ot.py", "report.py"]
APPLICATION = ("cmemd.config", "cmemd.app", "cmemd.cli")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # function-level imports included
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_library_never_imports_the_application_layer():
    files = [p for part in LIBRARY for p in ((SRC / part).rglob("*.py") if (SRC / part).is_dir() else [SRC / part])]
    assert len(files) > 20
    bad = [f"{p.relative_to(SRC)}:{line}: {name}" for p in files for line, name in _imports(p)
           if name.startswith(APPLICATION) or name in ("cmemd.config", "cmemd.cli")]
    assert not bad, "library modules importing the application layer:\n" + "\n".join(bad)


def test_the_engine_never_reads_the_synthetic_generators_files():
    """The nuisance sidecar is the synthetic benchmark's (cmemd.benchmarks.synthetic): engine/ takes labels, never
    the generator's module, nor the benchmark that reads it."""
    bad = [f"{p.relative_to(SRC)}:{line}: {name}" for p in (SRC / "engine").rglob("*.py") for line, name in _imports(p)
           if name.startswith(("cmemd.data.synth", "cmemd.benchmarks"))]
    assert not bad, "engine modules reading the synthetic generator's files:\n" + "\n".join(bad)


def test_the_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from cmemd.config import load_config\n    from cmemd import app\n")
    assert [n for _, n in _imports(f)] == ["cmemd.config", "cmemd.config.load_config", "cmemd", "cmemd.app"]
