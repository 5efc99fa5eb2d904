"""Checkpoints and galleries from elsewhere: nothing in them runs, damage is never papered over.

``data/legacy_last.pt`` is a checkpoint written by cmemd BEFORE checkpoints were loaded with
``weights_only=True`` (its numpy RNG state is a numpy array). It was made with the code of commit
d924ad4 (the main branch before this change) on the synthetic set of ``tests/engine/conftest.py::tiny_sysu``:

    PYTHONPATH=<checkout of d924ad4>/src:<checkout> python - <<'EOF'
    import torch
    from cmemd.app.train import train
    from cmemd.config import load_config
    from cmemd.data.synth import SynthConfig, generate_sysu
    from tests.engine.conftest import tiny_overrides

    torch.set_num_threads(1)
    generate_sysu("/tmp/ck/legacy/sysu", SynthConfig(ids=12, images_per_camera=(3, 4), height=32, width=16, seed=3))
    cfg = load_config(None, tiny_overrides("/tmp/ck/legacy/sysu", "/tmp/ck/legacy/run", **{
        "optim.epochs": 1, "data.steps_per_epoch": 2, "model.width": 2, "model.local_dim": 4}))
    train(cfg, progress=False, evaluate_after=False)
    EOF
    cp /tmp/ck/legacy/run/last.pt tests/reliability/data/legacy_last.pt

(ResNet-18 at width 2: 340 KB, one epoch of 2 steps.)
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cmemd
from cmemd.app.evaluate import load_trained
from cmemd.app.train import train
from cmemd.cli import app
from cmemd.config import config_from_dict, dump_config
from cmemd.engine.checkpoint import (MAGIC, RefusedCheckpointError, load_checkpoint, previous_path, read_checkpoint,
                                     save_checkpoint)
from cmemd.engine.trainer import set_rng_state
from cmemd.errors import CheckpointError, ConfigError, EvaluationError
from cmemd.evaluation.features import save_features
from cmemd.retrieval import check_gallery_model, load_gallery, model_fingerprint
from tests.engine.conftest import tiny_sysu  # noqa: F401  (a fixture)

LEGACY = Path(__file__).parent / "data" / "legacy_last.pt"
runner = CliRunner()


class RunsACommand:
    """Unpickling this runs ``touch <marker>`` (what a malicious checkpoint would do with worse commands)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _with_header(payload: bytes, path: Path) -> Path:
    """``payload`` behind a valid cmemd header (the SHA-256 is unkeyed: anyone can write one)."""
    digest = hashlib.sha256(payload).hexdigest().encode()
    path.write_bytes(b"%s 1 %s %d\n" % (MAGIC, digest, len(payload)) + payload)
    return path


def _legacy_trusted() -> dict:
    """The fixture read the unsafe way, as the old code did: we made the file, so this is safe here."""
    data = LEGACY.read_bytes()
    return torch.load(io.BytesIO(data[data.index(b"\n") + 1:]), map_location="cpu", weights_only=False)


def _legacy_config(root, out_dir, **changes):
    """The fixture's own training config, on ``root`` and writing to ``out_dir``."""
    cfg = config_from_dict(read_checkpoint(LEGACY)["config"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)),
                              run=dataclasses.replace(cfg.run, out_dir=str(out_dir)))
    if changes:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **changes))
    return cfg


@pytest.fixture(scope="module")
def malicious(tmp_path_factory):
    """{kind: (file, marker)}: a bare malicious pickle, and a real checkpoint with one malicious key added."""
    d = tmp_path_factory.mktemp("malicious")
    bare_marker, key_marker = d / "PWNED_bare", d / "PWNED_key"
    bare = _with_header(pickle.dumps(RunsACommand(bare_marker), protocol=2), d / "bare.pt")
    state = read_checkpoint(LEGACY)
    state["extra"] = RunsACommand(key_marker)
    real = save_checkpoint(state, d / "real_plus_key.pt", keep_previous=False)
    return {"bare pickle": (bare, bare_marker), "real checkpoint + 1 key": (real, key_marker)}


def test_malicious_checkpoints_never_run_through_any_entry_point(malicious, tiny_sysu, tmp_path):  # noqa: F811
    gallery = save_features(tmp_path / "g.npz", np.eye(4, dtype=np.float32), [-1] * 4, [0] * 4, list("abcd"))
    query = next((tiny_sysu / "cam3").rglob("*.jpg"))
    for kind, (ckpt, marker) in malicious.items():
        run_dir = tmp_path / kind.replace(" ", "_") / "run"
        run_dir.mkdir(parents=True)
        shutil.copy(ckpt, run_dir / "last.pt")
        config = tmp_path / f"{run_dir.parent.name}.yaml"
        dump_config(_legacy_config(tiny_sysu, run_dir), config)
        commands = {
            "eval": ["eval", "--checkpoint", str(ckpt), "--device", "cpu"],
            "extract": ["extract", "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "feats"), "--device", "cpu"],
            "export": ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")],
            "index": ["index", "--checkpoint", str(ckpt), "--images", str(tiny_sysu / "cam1"), "--modality", "visible",
                      "--out", str(tmp_path / "i.npz"), "--device", "cpu"],
            "search": ["search", "--checkpoint", str(ckpt), "--gallery", str(gallery), "--query", str(query),
                       "--query-modality", "thermal", "--device", "cpu"],
            "train --resume": ["train", "-c", str(config), "--resume", "--no-eval"],
        }
        for name, args in commands.items():
            res = runner.invoke(app, args)
            named = run_dir / "last.pt" if name == "train --resume" else ckpt
            assert res.exit_code == 2, (kind, name, res.output)
            assert not marker.exists(), f"{kind} through cmemd {name} ran its command"
            assert "refused" in res.output and str(named) in res.output.replace("\n", ""), (kind, name, res.output)
            assert "posix.system" in res.output, (kind, name, res.output)  # what it asked for
        with pytest.raises(RefusedCheckpointError, match="refused") as err:
            cmemd.load(ckpt)
        assert str(ckpt) in str(err.value) and not marker.exists()
        # the refusal is not mistaken for damage: no fallback to a .prev file beside it
        shutil.copy(LEGACY, previous_path(run_dir / "last.pt"))
        with pytest.raises(RefusedCheckpointError):
            load_checkpoint(run_dir / "last.pt")
        assert not marker.exists()
    assert not list(tmp_path.rglob("*.onnx")) and not (tmp_path / "feats").exists() and not (tmp_path / "i.npz").exists()


def test_other_objects_are_refused_with_what_they_need(tmp_path):
    """Anything beyond tensors and plain data is refused and named, harmless or not."""
    state = read_checkpoint(LEGACY)
    state["module"] = torch.nn.Linear(2, 2)  # a whole module instead of its state dict
    path = save_checkpoint(state, tmp_path / "module.pt", keep_previous=False)
    with pytest.raises(RefusedCheckpointError, match=r"module\.pt: refused.*torch\.nn\.modules\.linear\.Linear"):
        read_checkpoint(path)
    # a numpy array other than the uint32 RNG state of older files is refused too
    state = read_checkpoint(LEGACY)
    state["array"] = np.zeros(3, np.float64)
    with pytest.raises(RefusedCheckpointError, match="refused"):
        read_checkpoint(save_checkpoint(state, tmp_path / "array.pt", keep_previous=False))
    # a payload that is no training state at all
    buf = io.BytesIO()
    torch.save([torch.ones(2)], buf)
    with pytest.raises(CheckpointError, match="holds a list, not a training state"):
        read_checkpoint(_with_header(buf.getvalue(), tmp_path / "list.pt"))


def test_checkpoints_written_before_weights_only_keep_loading(tiny_sysu, tmp_path):  # noqa: F811
    trusted = _legacy_trusted()
    state = read_checkpoint(LEGACY)  # weights_only=True, numpy's uint32 array allowed
    assert state.keys() == trusted.keys()
    for k, v in trusted["model"].items():
        assert torch.equal(state["model"][k], v), k
    assert state["config"] == trusted["config"] and state["sampler"] == trusted["sampler"]
    # its numpy RNG state restores exactly
    set_rng_state(state["rng"])
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    t_kind, t_key, t_pos, t_has_gauss, t_gauss = trusted["rng"]["numpy"]
    assert (kind, pos, has_gauss, gauss) == (t_kind, t_pos, t_has_gauss, t_gauss) and np.array_equal(key, t_key)
    assert random.getstate() == trusted["rng"]["python"]
    assert torch.equal(torch.get_rng_state(), trusted["rng"]["torch"])
    # the model loads and encodes
    model = cmemd.load(LEGACY)
    feats = model.encode(sorted((tiny_sysu / "cam3").rglob("*.jpg"))[:2], "thermal")
    assert feats.shape == (2, model.feature_dim) and np.isfinite(feats).all()
    # and its run resumes: one more epoch; the checkpoint the resumed run writes needs no allow-listed global
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(LEGACY, run / "last.pt")
    out = train(_legacy_config(tiny_sysu, run, epochs=2), resume=True, progress=False, evaluate_after=False)
    new = read_checkpoint(out.checkpoint)
    assert (new["epoch"], new["step"]) == (2, 2 * trusted["step"])
    payload = (run / "last.pt").read_bytes()
    payload = payload[payload.index(b"\n") + 1:]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(payload)) == []
    assert read_checkpoint(previous_path(run / "last.pt"))["step"] == trusted["step"]  # the old file, kept


def _damaged_run(tmp_path) -> Path:
    """A run folder whose last.pt is cut short and whose last.prev.pt is good."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(LEGACY, previous_path(run / "last.pt"))
    data = LEGACY.read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    return run / "last.pt"


def test_a_named_damaged_checkpoint_is_an_error_not_a_fallback(tmp_path):
    last = _damaged_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"last\.pt: truncated checkpoint .*last\.prev\.pt: pass that file") as err:
        cmemd.load(last)
    assert str(last) in str(err.value)
    with pytest.raises(CheckpointError, match="truncated"):
        load_trained(last)
    for args in (["eval", "--checkpoint", str(last), "--device", "cpu"],
                 ["extract", "--checkpoint", str(last), "--out-dir", str(tmp_path / "f"), "--device", "cpu"],
                 ["export", "--checkpoint", str(last), "--out", str(tmp_path / "m.onnx")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "truncated checkpoint" in res.output and "last.prev.pt" in res.output, res.output
    assert not (tmp_path / "f").exists() and not (tmp_path / "m.onnx").exists()
    # the previous file itself, named, loads
    assert cmemd.load(previous_path(last)).feature_dim > 0


def test_resume_uses_last_prev_when_last_is_missing_or_damaged(tiny_sysu, tmp_path, capsys):  # noqa: F811
    # an uninterrupted 2-epoch run: last.pt (epoch 2), last.prev.pt (epoch 1)
    full = tmp_path / "full"
    train(_legacy_config(tiny_sysu, full, epochs=2), progress=False, evaluate_after=False)
    reference = read_checkpoint(full / "last.pt")
    prev = previous_path(full / "last.pt")
    prev_bytes = prev.read_bytes()

    # last.pt lost: a new run would overwrite last.prev.pt, so it is refused; --resume continues from it
    (full / "last.pt").unlink()
    with pytest.raises(ConfigError, match=r"already holds a run \(last\.prev\.pt\)"):
        train(_legacy_config(tiny_sysu, full, epochs=2), progress=False, evaluate_after=False)
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"last\.pt is missing; resuming from the previous good checkpoint"):
        out = train(_legacy_config(tiny_sysu, full, epochs=2), resume=True, progress=False, evaluate_after=False)
    assert f"resumed from {prev}" in capsys.readouterr().out
    assert prev.read_bytes() == prev_bytes  # the good previous checkpoint is still there, as it was
    resumed = read_checkpoint(out.checkpoint)
    assert resumed["step"] == reference["step"]
    for k, v in reference["model"].items():
        assert torch.equal(resumed["model"][k], v), k  # as if last.pt had never been lost

    # last.pt damaged: it is moved aside, so the next save cannot rotate it into last.prev.pt
    data = (full / "last.pt").read_bytes()
    (full / "last.pt").write_bytes(data[:-1000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_legacy_config(tiny_sysu, full, epochs=2), resume=True, progress=False, evaluate_after=False)
    assert prev.read_bytes() == prev_bytes
    assert any("moved aside" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert (full / "last.damaged.pt").read_bytes() == data[:-1000]
    assert read_checkpoint(full / "last.pt")["step"] == reference["step"]


def _index(checkpoint: Path, images: Path, out: Path) -> Path:
    res = runner.invoke(app, ["index", "--checkpoint", str(checkpoint), "--images", str(images), "--modality", "visible",
                              "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out


def test_search_refuses_a_gallery_of_another_model(tiny_sysu, tmp_path):  # noqa: F811
    images = tmp_path / "images"
    shutil.copytree(sorted((tiny_sysu / "cam1").iterdir())[0], images)
    gallery = _index(LEGACY, images, tmp_path / "g.npz")
    query = str(next((tiny_sysu / "cam3").rglob("*.jpg")))
    search = ["search", "--gallery", str(gallery), "--query", query, "--query-modality", "thermal", "--device", "cpu"]
    res = runner.invoke(app, search + ["--checkpoint", str(LEGACY)])
    assert res.exit_code == 0, res.output
    # the same architecture, one weight changed by one float step: another model
    state = read_checkpoint(LEGACY)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][name].view(-1)[0] = torch.nextafter(state["model"][name].view(-1)[0], torch.tensor(1e9))
    other = save_checkpoint(state, tmp_path / "other.pt", keep_previous=False)
    assert model_fingerprint(cmemd.load(other)) != model_fingerprint(cmemd.load(LEGACY))
    assert model_fingerprint(cmemd.load(LEGACY)) == model_fingerprint(cmemd.load(LEGACY))
    res = runner.invoke(app, search + ["--checkpoint", str(other)])
    assert res.exit_code == 2 and "indexed by another model" in res.output and "re-index" in res.output, res.output
    # a gallery from before fingerprints were recorded is refused, with the way out
    with np.load(gallery, allow_pickle=False) as z:
        old = {k: z[k] for k in z.files if k != "model_fingerprint"}
    np.savez(tmp_path / "old.npz", **old)
    res = runner.invoke(app, search[:1] + ["--gallery", str(tmp_path / "old.npz")] + search[3:]
                        + ["--checkpoint", str(LEGACY)])
    assert res.exit_code == 2 and "does not record which model indexed it" in res.output and "cmemd index" in res.output
    with pytest.raises(EvaluationError, match="does not record"):
        check_gallery_model(tmp_path / "old.npz", cmemd.load(LEGACY))


def test_gallery_object_arrays_are_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    arrays = dict(feats=np.eye(3, dtype=np.float32), pids=np.full(3, -1), cams=np.zeros(3, np.int64),
                  paths=np.asarray(["a", "b", "c"]))
    np.savez(tmp_path / "g.npz", **arrays, modality=np.array([RunsACommand(marker)], dtype=object))
    with pytest.raises(EvaluationError, match=r"g\.npz: 'modality' is stored as a pickled object array"):
        load_gallery(tmp_path / "g.npz")
    res = runner.invoke(app, ["search", "--checkpoint", str(LEGACY), "--gallery", str(tmp_path / "g.npz"),
                              "--query", "q.jpg", "--query-modality", "thermal"])
    assert res.exit_code == 2 and "pickled object array" in res.output, res.output
    np.savez(tmp_path / "h.npz", **arrays, modality=np.asarray(["visible", "thermal"]))
    with pytest.raises(EvaluationError, match="'modality' must be a single string"):
        load_gallery(tmp_path / "h.npz")
    assert not marker.exists()


def test_search_and_export_check_their_arguments_before_any_work(tmp_path):
    missing = tmp_path / "missing.pt"  # never reached: the argument errors come first
    base = ["search", "--checkpoint", str(missing), "--gallery", str(tmp_path / "g.npz"), "--query", "q.jpg",
            "--query-modality", "thermal"]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "nowhere" / "strip.png")])
    assert res.exit_code == 2 and "folder" in res.output and "does not exist" in res.output, res.output
    res = runner.invoke(app, base + ["--out", str(tmp_path / "strip.txt")])
    assert res.exit_code == 2 and "strip.txt" in res.output and ".png" in res.output, res.output
    for opset in ("5", "9", "999"):
        res = runner.invoke(app, ["export", "--checkpoint", str(missing), "--out", str(tmp_path / "m.onnx"),
                                  "--opset", opset])
        assert res.exit_code == 2 and f"--opset {opset}" in res.output and "10.." in res.output, res.output
    res = runner.invoke(app, ["export", "--checkpoint", str(missing), "--out", str(tmp_path / "no" / "m.onnx")])
    assert res.exit_code == 2 and "does not exist" in res.output and "checkpoint not found" not in res.output
