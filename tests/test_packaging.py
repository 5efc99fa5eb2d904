"""The wheel works outside the checkout: built from a copy of the sources, installed (not editable) in a fresh
virtual environment, and run from an empty folder: `cmemd --version`, `cmemd configs`, and `cmemd demo` shrunk to a
few steps (synthetic data, training, evaluation, report), everything written under that folder.

The fresh environment gets its dependencies (torch, numpy, ...) from this test environment's site-packages through
a .pth file, so nothing is downloaded; the package itself must come from the wheel, which the test checks.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import cmemd

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 300) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", CMEMD_PROGRESS_INTERVAL="0")

    # 1. a wheel from a copy of what the sdist holds (pyproject, README, src): no file elsewhere in the checkout helps
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, tree], tmp_path, env)
    (wheel,) = dist.glob("cmemd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "src/cmemd/configs").glob("*.yaml")}
    assert shipped and {f"cmemd/configs/{n}" for n in shipped} <= names

    # 2. a fresh venv outside the checkout; dependencies from this environment, cmemd from the wheel
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_cmemd_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--force-reinstall", wheel], tmp_path, env)
    cli = venv / "bin" / "cmemd"
    assert cli.is_file()

    # 3. from an empty folder
    work = tmp_path / "empty"
    work.mkdir()
    where = _run([py, "-c", "import cmemd; print(cmemd.__file__)"], work, env).strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), f"cmemd imported from {where}, not the wheel"
    assert _run([cli, "--version"], work, env).strip() == f"cmemd {cmemd.__version__}"
    listed = _run([cli, "configs"], work, env)
    for name in shipped:
        assert name[: -len(".yaml")] in listed
    out = _run([cli, "demo", "--ids", "12", "--epochs", "1", "data.num_ids=3", "data.num_instances=2",
                "data.steps_per_epoch=3", "eval.trials=2", "run.log_every=1"], work, env, timeout=600)
    assert "sysu all-search single-shot" in out and "R1" in out
    assert "modality gap" in out and "test ids' plan purity" in out  # the mechanism, measured on the test ids
    results = json.loads((work / "runs/demo/results.json").read_text())
    assert {"sysu all-search single-shot", "sysu indoor-search single-shot"} <= set(results)
    assert (work / "data/demo_sysu/synth_summary.json").is_file() and (work / "runs/demo/report/index.html").is_file()
    steps = [json.loads(x) for x in (work / "runs/demo/metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["kind"] == "step"] == [1, 2, 3]
    # a packaged config by name and a user file whose base names one, from the same empty folder
    (work / "mine.yaml").write_text("base: synth_cmemd\noptim:\n  epochs: 1\n")
    _run([cli, "train", "-c", "mine.yaml", "--no-eval", "data.root=data/demo_sysu", "run.out_dir=runs/mine",
          "data.num_ids=3", "data.num_instances=2", "data.steps_per_epoch=2"], work, env)
    assert (work / "runs/mine/last.pt").is_file()
