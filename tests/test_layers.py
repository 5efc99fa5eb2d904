"""The layers of src/cmemd import only downwards, and nothing imports in a circle.

Rooms, bottom to top (docs/architecture.md):

- base: errors, numerics, layout, progress, threads, folders, ot.py and the other leaf modules;
- library: data (readers, loading), models, losses, evaluation (the metric core), engine;
- benchmarks: one module per benchmark, built on data and evaluation;
- application: config, app, cli (and the modules that serve them: api, export, retrieval).

data and evaluation never import benchmarks or the application; no library or benchmark module (nor report.py)
imports the application; the engine never reads a synthetic generator's files (the synthetic benchmark's
diagnostics do). Function-level imports count like module-level ones: an import inside a function that only
dodges a cycle is still an import against the flow.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cmemd"
LIBRARY = ["data", "models", "losses", "evaluation", "engine", "benchmarks", "ot.py", "report.py"]
BELOW_BENCHMARKS = ["data", "evaluation"]
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


def _files(parts: list[str]) -> list[Path]:
    return [p for part in parts for p in ((SRC / part).rglob("*.py") if (SRC / part).is_dir() else [SRC / part])]


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = ["cmemd", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_library_never_imports_the_application_layer():
    files = _files(LIBRARY)
    assert len(files) > 20
    bad = [f"{p.relative_to(SRC)}:{line}: {name}" for p in files for line, name in _imports(p)
           if name.startswith(APPLICATION) or name in ("cmemd.config", "cmemd.cli")]
    assert not bad, "library modules importing the application layer:\n" + "\n".join(bad)


def test_data_and_evaluation_never_import_the_benchmarks():
    files = _files(BELOW_BENCHMARKS)
    assert len(files) > 15
    bad = [f"{p.relative_to(SRC)}:{line}: {name}" for p in files for line, name in _imports(p)
           if name == "cmemd.benchmarks" or name.startswith("cmemd.benchmarks.")]
    assert not bad, "data/ or evaluation/ importing cmemd.benchmarks (which sits above them):\n" + "\n".join(bad)


def test_data_and_evaluation_do_not_import_each_other_upwards():
    """The readers know nothing of evaluation; the metric core never touches a reader."""
    bad = [f"{p.relative_to(SRC)}:{line}: {name}" for p in _files(["data"]) for line, name in _imports(p)
           if name.startswith("cmemd.evaluation")]
    bad += [f"{p.relative_to(SRC)}:{line}: {name}" for p in _files(["evaluation"]) for line, name in _imports(p)
            if name.startswith("cmemd.data")]
    assert not bad, "data/ and evaluation/ reaching into each other:\n" + "\n".join(bad)


def test_no_import_cycle_in_src():
    """The module graph (every import, function-level ones included) has no cycle."""
    modules = {_module_of(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        deps = set()
        for _, name in _imports(path):
            # "from cmemd.x import y" names both cmemd.x and cmemd.x.y; keep what is a module of ours
            if name in modules and name != mod and not mod.startswith(name + "."):  # a package's own __init__
                deps.add(name)
        graph[mod] = deps
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles in src/cmemd:\n" + "\n".join(cycles)


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
