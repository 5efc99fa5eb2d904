"""Golden protocol outputs: every benchmark's protocol and option on fixed seeded features, every number saved.

Run from the repository root::

    PYTHONPATH=src python tests/evaluation/golden/record.py --check   # compare with protocols.json.gz, bit for bit
    PYTHONPATH=src python tests/evaluation/golden/record.py --write   # (re)record protocols.json.gz

It goes through each benchmark's two entry points (``evaluate`` from a ``featurize`` callback on records,
and ``evaluate_features`` on precomputed feature sets), as the CLI and the application call them, so a
refactor of the protocols, the draws or the metric core is checked end to end. The numbers are compared
as JSON text (Python's float repr round-trips exactly), per-query AP/INP/first-hit included.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import scipy.io

from cmemd.benchmarks.registry import get_benchmark as _get  # (recorded before issue 26 through cmemd.data.registry)
from cmemd.data.records import ImageRecord
from cmemd.evaluation import FeatureSet, ReRanking, to_dict
from cmemd.evaluation.metrics import removal_name

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "protocols.json.gz"
OFFICIAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "sysu_official"
DIM = 8


def featurize(records, desc: str) -> np.ndarray:
    """A fixed feature per image: its identity's prototype plus noise seeded by the image's path."""
    out = np.empty((len(records), DIM), dtype=np.float32)
    for i, r in enumerate(records):
        proto = np.random.default_rng(r.pid).normal(size=DIM)
        seed = int.from_bytes(hashlib.sha256(r.path.encode()).digest()[:8], "little")
        out[i] = proto + 1.3 * np.random.default_rng(seed).normal(size=DIM)
    return out


def fset(records) -> FeatureSet:
    return FeatureSet(featurize(records, ""), np.array([r.pid for r in records], np.int64),
                      np.array([r.camid for r in records], np.int64), np.array([r.path for r in records], dtype=str))


def sysu_sets(official: bool) -> dict[str, list[ImageRecord]]:
    """Thermal queries and a visible pool. ``official``: the pool the authors' rand_perm_cam.mat describes
    (its first 24 test ids, files 0001..000n per (camera, id)); otherwise a seeded pool of 20 ids."""
    rng = np.random.default_rng(7)
    pool, query = [], []
    if official:
        perm = scipy.io.loadmat(str(OFFICIAL / "rand_perm_cam.mat"))["rand_perm_cam"].reshape(-1)
        ids = sorted(int(x) for x in scipy.io.loadmat(str(OFFICIAL / "test_id.mat"))["id"].ravel())[:24]
        counts = {(p, c): (perm[c - 1].reshape(-1)[p - 1].shape[1] if p - 1 < perm[c - 1].size
                           and perm[c - 1].reshape(-1)[p - 1].size else 0) for p in ids for c in (1, 2, 4, 5)}
    else:
        ids = list(range(1, 21))
        counts = {(p, c): int(rng.integers(0, 14)) if (p + c) % 5 else 0 for p in ids for c in (1, 2, 4, 5)}
    for p in ids:
        for c in (1, 2, 4, 5):
            pool += [ImageRecord(f"/sysu/cam{c}/{p:04d}/{k:04d}.jpg", p, c, "visible") for k in range(1, counts[(p, c)] + 1)]
        for c in (3, 6):
            query += [ImageRecord(f"/sysu/cam{c}/{p:04d}/{k:04d}.jpg", p, c, "thermal")
                      for k in range(1, 1 + int(rng.integers(0, 4)))]
    return {"query": query, "gallery_pool": pool}


def regdb_sets(trial: int) -> dict[str, list[ImageRecord]]:
    rng = np.random.default_rng(11)
    vis = [ImageRecord(f"/regdb/Visible/{p}/v_{k}.bmp", p, 1, "visible") for p in range(30) for k in range(int(rng.integers(2, 6)))]
    th = [ImageRecord(f"/regdb/Thermal/{p}/t_{k}.bmp", p, 2, "thermal") for p in range(30) for k in range(int(rng.integers(2, 6)))]
    return {f"visible_trial{trial}": vis, f"thermal_trial{trial}": th}


def llcm_sets() -> dict[str, list[ImageRecord]]:
    rng = np.random.default_rng(13)
    out = {"visible": [], "thermal": []}
    for m, folder, cams in (("visible", "test_vis", range(1, 10)), ("thermal", "test_nir", (1, 2, 4, 5, 6, 7, 8, 9))):
        for p in range(1, 26):
            for c in cams:
                n = int(rng.integers(0, 4)) if (p * c) % 4 else 0
                out[m] += [ImageRecord(f"/llcm/{folder}/cam{c}/{p:04d}/{k}.jpg", p, c, m) for k in range(n)]
    return out


def _results(out) -> dict:
    return {name: to_dict(res, per_query=True) for name, res in out.results.items()}


def _report(out) -> dict | None:
    if out.report is None:
        return None
    rep = {}
    for k, v in out.report.items():
        if isinstance(v, FeatureSet):
            rep[k] = {"feats": hashlib.sha256(np.ascontiguousarray(v.feats).tobytes()).hexdigest(),
                      "pids": v.pids.tolist(), "cams": v.cams.tolist(), "paths": [str(p) for p in v.paths]}
        else:
            rep[k] = removal_name(v) if k == "removal" else v  # a SameLocation rule is recorded by its name
    return rep


def record() -> dict:
    rr = ReRanking()
    rr_small = ReRanking(k1=5, k2=3, lambda_value=0.4)
    gold: dict = {}
    sysu, regdb, llcm = _get("sysu"), _get("regdb"), _get("llcm")

    # SYSU-MM01: modes x shots x draws, plain and re-ranked, featurize path and features path
    rand_perm = str(OFFICIAL / "rand_perm_cam.mat")
    for method in ("python-random", "official"):
        sets = sysu_sets(method == "official")
        opts = {"rand_perm": rand_perm} if method == "official" else {}
        for shots in (1, 10):
            out = sysu.evaluate(sets, featurize, modes=("all", "indoor"), shots=shots, method=method, trials=10,
                                feature_name="f", **opts)
            gold[f"sysu evaluate {method} shots={shots}"] = _results(out)
            out = sysu.evaluate(sets, featurize, modes=("indoor",), shots=shots, method=method, trials=[2, 5],
                                rerank=rr, return_features=True, **opts)
            gold[f"sysu evaluate {method} shots={shots} rerank+report"] = {"results": _results(out), "report": _report(out)}
            q, g = fset(sets["query"]), fset(sets["gallery_pool"])
            for mode in ("all", "indoor"):
                for rerank in (None, rr_small):
                    res = sysu.evaluate_features(q, g, mode=mode, shots=shots, method=method, trials=3, rerank=rerank,
                                                 **opts)
                    gold[f"sysu features {method} {mode} shots={shots} rerank={rerank is not None}"] = to_dict(res, per_query=True)
    out = sysu.evaluate(sysu_sets(False), featurize, **sysu.val_options)
    gold["sysu evaluate val options"] = _results(out)

    # RegDB: both directions of a trial, plain and re-ranked
    for trial in (1, 7):
        sets = regdb_sets(trial)
        out = regdb.evaluate(sets, featurize, trial=trial, feature_name="f", rerank=rr if trial == 7 else None,
                             return_features=trial == 7)
        gold[f"regdb evaluate trial={trial}"] = {"results": _results(out), "report": _report(out)}
    vis, th = fset(regdb_sets(1)["visible_trial1"]), fset(regdb_sets(1)["thermal_trial1"])
    for direction in ("v2t", "t2v"):
        for rerank in (None, rr_small):
            q, g = (vis, th) if direction == "v2t" else (th, vis)
            res = regdb.evaluate_features(q, g, direction=direction, trial=3, rerank=rerank)
            gold[f"regdb features {direction} rerank={rerank is not None}"] = to_dict(res, per_query=True)

    # LLCM: every direction (the authors' transposed one included), counts and trial lists
    sets = llcm_sets()
    out = llcm.evaluate(sets, featurize, directions=("t2v", "v2t", "v2t-authors"), trials=10, feature_name="f",
                        return_features=True)
    gold["llcm evaluate all directions"] = {"results": _results(out), "report": _report(out)}
    out = llcm.evaluate(sets, featurize, directions=("v2t",), trials=[1, 4])
    gold["llcm evaluate v2t trials=[1,4]"] = _results(out)
    vis, th = fset(sets["visible"]), fset(sets["thermal"])
    for direction in ("t2v", "v2t", "v2t-authors"):
        q, g = (th, vis) if direction == "t2v" else (vis, th)
        res = llcm.evaluate_features(q, g, direction=direction, trials=4)
        gold[f"llcm features {direction}"] = to_dict(res, per_query=True)
    return gold


def portable(text: str) -> str:
    """The JSON text with the split files' folder written as ``<shared>/...``, so that the record does not depend on
    where the checkout (and ../shared beside it) lies."""
    return re.sub(r'"[^"]*/shared/data/sysu_official/', '"<shared>/data/sysu_official/', text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record protocols.json.gz")
    ap.add_argument("--check", action="store_true", help="compare with protocols.json.gz (exit 1 on any difference)")
    args = ap.parse_args()
    if not (OFFICIAL / "rand_perm_cam.mat").is_file():
        print(f"{OFFICIAL}: the SYSU-MM01 authors' split files are needed (the project's ../shared folder)")
        return 2
    text = portable(json.dumps(record(), indent=1, sort_keys=True))
    if args.write:
        GOLDEN.write_bytes(gzip.compress((text + "\n").encode(), mtime=0))
        print(f"wrote {GOLDEN} ({len(text)} characters)")
    if args.check:
        saved = portable(gzip.decompress(GOLDEN.read_bytes()).decode())
        old = json.loads(saved)
        new = json.loads(text)
        bad = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if bad or saved != text + "\n":
            print("golden protocol outputs DIFFER:\n  " + "\n  ".join(bad or ["(formatting only)"]))
            return 1
        print(f"golden protocol outputs identical ({len(new)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
