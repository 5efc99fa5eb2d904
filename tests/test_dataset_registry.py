"""The benchmark registry: one entry per benchmark, nothing else compares benchmark names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cmemd.config import load_config
from cmemd.benchmarks.llcm import LLCMBenchmark
from cmemd.benchmarks.registry import BENCHMARKS as DATASETS
from cmemd.benchmarks.registry import detect_layout, get_benchmark
from cmemd.benchmarks.stats import dataset_stats
from cmemd.errors import ConfigError, DatasetError
from tests.data.builders import make_llcm, make_regdb, make_sysu

SRC = Path(__file__).resolve().parents[1] / "src" / "cmemd"
DATASET_MODULES = {"benchmarks/sysu.py", "benchmarks/regdb.py", "benchmarks/llcm.py", "benchmarks/registry.py",
                   "data/sysu.py", "data/regdb.py", "data/llcm.py"}
NAMES = "|".join(DATASETS)
COMPARISON = re.compile(
    rf"""(==|!=|\bin\b)\s*[\(\[\{{]?\s*['"]({NAMES})['"]"""  # x == "sysu", x in ("sysu", ...)
    rf"""|['"]({NAMES})['"]\s*(==|!=|\bin\b)"""  # "sysu" == x, "sysu" in x
    r"""|\b(dataset|layout|protocol)\s*(==|!=)\s*['"]"""  # dataset == "<any literal>"
)


def test_no_dataset_name_comparison_outside_the_dataset_modules():
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in DATASET_MODULES:
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if COMPARISON.search(code):
                hits.append(f"{rel}:{lineno}: {line.strip()}")
    assert not hits, "ask cmemd.benchmarks.registry instead of comparing dataset names:\n" + "\n".join(hits)


def test_the_grep_catches_what_it_should():
    for bad in ('if cfg.data.dataset == "sysu":', "if layout not in ('sysu', 'regdb'):", 'x = "regdb" == name',
                'if protocol != "llcm":'):
        assert COMPARISON.search(bad), bad
    for fine in ('spec = get_benchmark(cfg.data.dataset)', 'if r.protocol != first.protocol:', 'name = "sysu"'):
        assert not COMPARISON.search(fine), fine


def test_each_layout_is_detected_as_itself_only(tmp_path):
    roots = {
        "sysu": make_sysu(tmp_path / "s", {(1, 1): 1, (1, 3): 1}, train=(1,), test=(1,)),
        "regdb": make_regdb(tmp_path / "r", num_ids=4, per_id=1),
        "llcm": make_llcm(tmp_path / "l", {("visible", 1, 1): 1, ("thermal", 1, 2): 1}),
    }
    assert set(roots) == set(DATASETS)
    for name, root in roots.items():
        assert [n for n, s in DATASETS.items() if s.detect(root)] == [name]
        assert detect_layout(root) == name
        assert get_benchmark(name).name == name
    (roots["sysu"] / "Visible").mkdir()
    with pytest.raises(DatasetError, match="several datasets at once"):
        detect_layout(roots["sysu"])


def test_unknown_dataset_lists_what_each_expects_on_disk(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_benchmark("market1501")
    for spec in DATASETS.values():
        assert spec.name in str(e.value) and spec.on_disk in str(e.value)
    with pytest.raises(ConfigError, match="data.dataset must be one of"):
        load_config("llcm_cmemd", ["data.dataset=market1501"])


def test_a_fourth_dataset_is_one_registry_entry(tmp_path, monkeypatch):
    """A new entry (here LLCM's functions under another name) works for stats and configs without other edits."""
    class Toy(LLCMBenchmark):
        name, title, on_disk = "toy", "Toy", "TOY marker"

        def detect(self, root):
            return (root / "TOY").is_file()

    toy = Toy()
    monkeypatch.setitem(DATASETS, "toy", toy)
    root = make_llcm(tmp_path / "t", {("visible", 1, 1): 1, ("thermal", 1, 2): 1})
    (root / "TOY").write_text("")  # the toy's own marker: the root is the toy's layout, not (only) LLCM's
    st = dataset_stats(root, layout="toy")
    assert st["layout"] == "toy" and st["title"] == "Toy" and st["test_ids"] == 1
    assert load_config("llcm_cmemd", ["data.dataset=toy"]).data.dataset == "toy"
