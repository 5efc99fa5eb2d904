"""A new benchmark is one module + one registry line + its tests.

This file is the module: a whole benchmark (its layout and reader, options, protocol and registry entry) in one
place, registered with one line, then trained, evaluated and checked through the CLI with nothing else edited:
the ``eval:`` section takes its option (derived from its ``Options``), ``cmemd data stats/check`` read its layout,
and the protocol's numbers equal a brute-force ranking written from the rule below.

The toy layout: ``TOY`` (a marker), ``train_id.txt`` / ``test_id.txt`` (one line of ids each) and
``visible/<pid>/<k>.png``, ``thermal/<pid>/<k>.png``. The protocol: every thermal test image queries every visible
test image; no removal; standard CMC.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np
import pytest
from typer.testing import CliRunner

from cmemd.benchmarks import Benchmark, EvalOutput, feature_set
from cmemd.benchmarks.registry import BENCHMARKS
from cmemd.cli import app
from cmemd.data.fs import list_images, read_id_file
from cmemd.data.records import ImageRecord
from cmemd.errors import DatasetError, EvaluationError
from cmemd.evaluation import ProtocolResult, ReRanking, load_features
from cmemd.evaluation.features import FeatureSet
from cmemd.evaluation.metrics import METRICS, check_feat_pair, check_labels, resolve_device
from cmemd.evaluation.protocol import Selection, Side, evaluate_selections
from tests.data.builders import write_image
from tests.engine.conftest import tiny_overrides

runner = CliRunner()
CAMERA = {"visible": 1, "thermal": 2}


# ---------------------------------------------------------------------- the benchmark, in one place

def read_toy(root: Path, split: str) -> list[ImageRecord]:
    """The reader: every image of the split's ids, visible then thermal, ids ascending, files sorted."""
    ids = read_id_file(root / f"{split}_id.txt", "the toy layout has train_id.txt and test_id.txt")
    out = []
    for m, cam in CAMERA.items():
        for pid in sorted(ids):
            images, others, problems = list_images(root / m / str(pid))
            if problems or others:
                raise DatasetError(f"{root / m / str(pid)}: unexpected entries", problems + others)
            out += [ImageRecord(str(root / m / str(pid) / f), pid, cam, m) for f in images]
    return out


@dataclass(frozen=True)
class ToyOptions:
    """``eval.toy_metric``: the similarity the toy ranks by (an option no other benchmark has)."""

    toy_metric: str = "cosine"

    def __post_init__(self) -> None:
        if self.toy_metric not in METRICS:
            raise EvaluationError(f"toy_metric must be one of {METRICS}, got {self.toy_metric!r}")


def evaluate_toy(query: FeatureSet, gallery: FeatureSet, *, metric: str = "cosine",
                 feature_name: Optional[str] = None) -> ProtocolResult:
    """The protocol: every query against every gallery image, no removal, standard CMC."""
    qf, gf = check_feat_pair(query.feats, gallery.feats)
    qp, gp = check_labels(query.pids, "query pids", len(qf), "query"), check_labels(gallery.pids, "gallery pids", len(gf), "gallery")
    qc, gc = check_labels(query.cams, "query cams", len(qf), "query"), check_labels(gallery.cams, "gallery cams", len(gf), "gallery")
    (r,) = evaluate_selections(Side(qf, qp, qc, "query"), Side(gf, gp, gc, "gallery"), [Selection()], removal="none",
                               cmc="standard", metric=metric, max_rank=20, chunk_size=None,
                               device=resolve_device(None), memory_budget=2**26)
    settings = dict(title="Toy thermal->visible", feature_name=feature_name, metric=metric, removal="none",
                    cmc="standard", rerank=None)
    return ProtocolResult("toy", settings, [0], [r])


class Toy(Benchmark):
    name: ClassVar[str] = "toy"
    title: ClassVar[str] = "Toy"
    cameras: ClassVar[Mapping[str, tuple[int, ...]]] = {m: (c,) for m, c in CAMERA.items()}
    on_disk: ClassVar[str] = "TOY, {train,test}_id.txt, {visible,thermal}/<id>/*.png"
    Options: ClassVar[type] = ToyOptions

    def detect(self, root: Path) -> bool:
        return (Path(root) / "TOY").is_file()

    def stats(self, root):
        train, test = read_toy(Path(root), "train"), read_toy(Path(root), "test")
        return {"train_ids": len({r.pid for r in train})}, {"train": train, "test": test}

    def check(self, root):
        try:
            return [], read_toy(Path(root), "train") + read_toy(Path(root), "test")
        except DatasetError as e:
            return e.problems or [str(e)], []

    def train_records(self, root, *, trial=None, hold_out_val=False):
        recs = read_toy(Path(root), "train")
        label = {pid: i for i, pid in enumerate(sorted({r.pid for r in recs}))}
        return [ImageRecord(r.path, label[r.pid], r.camid, r.modality) for r in recs]

    def test_sets(self, root, *, trial=None):
        recs = read_toy(Path(root), "test")
        return {m: [r for r in recs if r.modality == m] for m in CAMERA}

    def evaluate(self, sets: Mapping[str, Sequence[ImageRecord]], featurize, *, trial=None, feature_name=None,
                 rerank: Optional[ReRanking] = None, return_features: bool = False, **options: Any) -> EvalOutput:
        o: ToyOptions = self.options(**options)
        q, g = feature_set(featurize(sets["thermal"], "thermal"), sets["thermal"]), \
            feature_set(featurize(sets["visible"], "visible"), sets["visible"])
        report = dict(query=q, gallery=g, removal="none", query_modality="thermal", gallery_modality="visible")
        return EvalOutput({"toy t2v": evaluate_toy(q, g, metric=o.toy_metric, feature_name=feature_name)},
                          report if return_features else None)

    def evaluate_features(self, query, gallery, *, feature_name=None, rerank=None, trial=None,
                          toy_metric: str = "cosine") -> ProtocolResult:
        return evaluate_toy(query, gallery, metric=toy_metric, feature_name=feature_name)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(BENCHMARKS, "toy", Toy())  # the one registry line (cmemd.benchmarks.register in a module)


# ---------------------------------------------------------------------- its tests

def make_toy(root: Path, train=(1, 2, 3, 4), test=(5, 6, 7), per_id=3) -> Path:
    rng = np.random.default_rng(0)
    (root / "TOY").parent.mkdir(parents=True, exist_ok=True)
    (root / "TOY").write_text("")
    (root / "train_id.txt").write_text(",".join(map(str, train)))
    (root / "test_id.txt").write_text(",".join(map(str, test)))
    for pid in train + test:
        for m in CAMERA:
            for k in range(per_id):
                write_image(root / m / str(pid) / f"{k}.png", value=int(rng.integers(0, 256)), size=(16, 32))
    return root


def brute_force(q: FeatureSet, g: FeatureSet) -> tuple[float, float]:
    """Rank-1 and mAP of every query against the whole gallery by cosine similarity (ties: gallery order)."""
    qn = q.feats / np.linalg.norm(q.feats, axis=1, keepdims=True)
    gn = g.feats / np.linalg.norm(g.feats, axis=1, keepdims=True)
    r1, aps = [], []
    for i in range(len(qn)):
        order = np.argsort(-(gn @ qn[i]).astype(np.float32), kind="stable")
        hits = g.pids[order] == q.pids[i]
        r1.append(float(hits[0]))
        ranks = np.nonzero(hits)[0]
        aps.append(float(np.mean([(j + 1) / (r + 1) for j, r in enumerate(ranks)])))
    return float(np.mean(r1)), float(np.mean(aps))


def test_a_benchmark_in_one_file_trains_and_evaluates_through_the_cli(registered, tmp_path):
    root = make_toy(tmp_path / "toy")
    res = runner.invoke(app, ["data", "check", str(root), "--no-decode"])
    assert res.exit_code == 0, res.output  # detected as the toy layout, nothing else edited
    res = runner.invoke(app, ["data", "stats", str(root)])
    assert res.exit_code == 0 and "Toy layout" in res.output and "train ids: 4" in res.output, res.output

    out = tmp_path / "run"
    over = tiny_overrides(root, out, **{"data.dataset": "toy", "optim.epochs": 1, "eval.toy_metric": "cosine",
                                        "data.num_ids": 2})
    res = runner.invoke(app, ["train", "-c", "synth_cmemd", *over])
    assert res.exit_code == 0, res.output
    assert "Toy thermal->visible" in res.output and "R1" in res.output

    res = runner.invoke(app, ["extract", "--checkpoint", str(out / "last.pt"), "--out-dir", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval-features", str(tmp_path / "f" / "thermal.npz"), str(tmp_path / "f" / "visible.npz"),
                              "--protocol", "toy", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "r.json").read_text())
    r1, mAP = brute_force(load_features(tmp_path / "f" / "thermal.npz"), load_features(tmp_path / "f" / "visible.npz"))
    assert got["mean"]["R1"] == pytest.approx(r1, abs=1e-6) and got["mean"]["mAP"] == pytest.approx(mAP, abs=1e-6)
    assert json.loads((out / "results.json").read_text())["toy t2v"]["mean"]["mAP"] == pytest.approx(mAP, abs=1e-5)


def test_its_option_is_an_eval_setting_checked_by_the_benchmark(registered, tmp_path):
    root = make_toy(tmp_path / "toy")
    res = runner.invoke(app, ["train", "-c", "synth_cmemd", *tiny_overrides(root, tmp_path / "run", **{
        "data.dataset": "toy", "eval.toy_metric": "hamming"})])
    assert res.exit_code == 2 and "eval.toy_metric must be one of" in res.output, res.output


def test_without_the_registry_line_the_name_and_option_are_unknown(tmp_path):
    from cmemd.config import load_config
    from cmemd.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'eval.toy_metric'"):
        load_config(None, ["eval.toy_metric=cosine"])
    with pytest.raises(ConfigError, match="data.dataset must be one of"):
        load_config(None, ["data.dataset=toy"])
