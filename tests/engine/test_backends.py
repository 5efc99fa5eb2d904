"""What a run sets up before training: the device (``run.device=cuda:N`` selects GPU N and the header names it),
determinism (``run.deterministic``: on CUDA with ``CUBLAS_WORKSPACE_CONFIG``), cuDNN autotuning
(``run.cudnn_benchmark``), and the test loader's data settings. No GPU is needed: ``torch.cuda`` is monkeypatched
where CUDA would be touched, and the CUDA-only loss paths are compared with their CPU counterparts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmemd.app import evaluate as app_evaluate
from cmemd.app import runtime as app_runtime
from cmemd.app.evaluate import eval_loader_settings
from cmemd.app.runtime import Backends, configure_backends, cudnn_benchmark_choice, resolve_device, set_determinism
from cmemd.app.train import model_config, train
from cmemd.config import load_config
from cmemd.errors import ConfigError

from tests.usage.conftest import tiny_checkpoint  # noqa: F401  (fixture)

from .conftest import tiny_overrides

CUDA, CUDA1, CPU = torch.device("cuda"), torch.device("cuda", 1), torch.device("cpu")


@pytest.fixture
def restore_torch_flags():
    """Tests here flip process-wide torch flags; put them back."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


class FakeCuda:
    """Records what the code asks of torch.cuda on a pretend machine with ``count`` GPUs."""

    def __init__(self, monkeypatch, count: int = 2, initialized: bool = False) -> None:
        self.calls: list[tuple] = []
        self.initialized = initialized
        names = [f"GPU model {i}" for i in range(count)]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: self.calls.append(("set_device", torch.device(d))))
        monkeypatch.setattr(torch.cuda, "get_device_name",
                            lambda d=None: self.calls.append(("get_device_name", d)) or names[0 if d is None else int(d)])


# ---------------------------------------------------------------------------------------------- run.device

def test_cuda_index_selects_that_gpu_and_the_environment_names_it(monkeypatch):
    fake = FakeCuda(monkeypatch, count=2)
    dev = resolve_device("cuda:1")
    assert dev == CUDA1 and fake.calls == [("set_device", CUDA1)]
    env = app_runtime.environment(device=dev)
    assert env["cuda"] == "GPU model 1"  # not device 0's name
    # a bare "cuda" / "auto" selects nothing (the current device, 0 unless the caller chose) and is named as such
    fake.calls.clear()
    assert resolve_device("cuda") == CUDA and resolve_device("auto") == CUDA and fake.calls == []
    assert app_runtime.environment(device=CUDA)["cuda"] == "GPU model 0"
    # select=False (train: CUBLAS_WORKSPACE_CONFIG first) leaves the selection to select_device
    fake.calls.clear()
    assert resolve_device("cuda:1", select=False) == CUDA1 and fake.calls == []
    app_runtime.select_device(CUDA1)
    app_runtime.select_device(CUDA)
    app_runtime.select_device(CPU)
    assert fake.calls == [("set_device", CUDA1)]


def test_cuda_index_beyond_the_gpus_present_is_a_config_error(monkeypatch):
    fake = FakeCuda(monkeypatch, count=2)
    with pytest.raises(ConfigError, match=r"run.device='cuda:2' but this machine has 2 GPU\(s\)"):
        resolve_device("cuda:2")
    assert fake.calls == []
    FakeCuda(monkeypatch, count=0)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_train_selects_the_gpu_after_setting_the_cublas_workspace(monkeypatch, restore_torch_flags, tmp_path):
    """train() on run.device=cuda:1 with run.deterministic=true: CUBLAS_WORKSPACE_CONFIG is set while CUDA has
    not started, then GPU 1 is selected; stopped right after (no GPU here) by a sentinel in the thread policy."""
    fake = FakeCuda(monkeypatch, count=2)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []

    class Stop(Exception):
        pass

    def thread_policy(*a, **k):
        seen.append((list(fake.calls), app_runtime.os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        raise Stop

    monkeypatch.setattr("cmemd.threads.apply_thread_policy", thread_policy)
    cfg = load_config("synth_cmemd", ["run.device=cuda:1", "run.deterministic=true", f"run.out_dir={tmp_path / 'run'}"])
    with pytest.raises(Stop):
        train(cfg, progress=False)
    assert seen == [([("set_device", CUDA1)], ":4096:8")]


# ---------------------------------------------------------------------------------------------- determinism

def test_deterministic_on_cuda_sets_the_cublas_workspace_and_errors_instead_of_warning(monkeypatch,
                                                                                       restore_torch_flags):
    fake = FakeCuda(monkeypatch)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    note = set_determinism(0, True, CUDA)
    assert app_runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8 set before CUDA started" in note
    # too late: CUDA already running in this process -> set, and the header says it may not have taken effect
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    fake.initialized = True
    note = set_determinism(0, True, CUDA)
    assert app_runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "after CUDA had started" in note and "export CUBLAS_WORKSPACE_CONFIG" in note
    # a deterministic value the user exported is kept and named; a non-deterministic one is replaced
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert "CUBLAS_WORKSPACE_CONFIG=:16:8 from the environment" in set_determinism(0, True, CUDA)
    assert app_runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    set_determinism(0, True, CUDA)
    assert app_runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_on_cpu_leaves_cublas_alone_and_seeds(monkeypatch, restore_torch_flags):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    note = set_determinism(7, True, CPU)
    a = (torch.rand(3), np.random.rand())
    assert "CUBLAS_WORKSPACE_CONFIG" not in app_runtime.os.environ and "CUBLAS" not in note
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    set_determinism(7, False, CPU)
    assert torch.equal(torch.rand(3), a[0]) and np.random.rand() == a[1]


# ---------------------------------------------------------------------------------------------- cuDNN autotuning

@pytest.mark.parametrize("requested, device, deterministic, expected", [
    (None, CUDA, False, True),   # auto: CUDA training, not deterministic
    (None, CUDA1, False, True),
    (None, CUDA, True, False),   # auto never autotunes a deterministic run
    (None, CPU, False, False),   # no cuDNN on CPU
    (True, CPU, False, False),
    (False, CUDA, False, False),
    (True, CUDA, False, True),
    (False, CUDA, True, False),
])
def test_cudnn_benchmark_choice(requested, device, deterministic, expected):
    on, why = cudnn_benchmark_choice(requested, device, deterministic)
    assert on is expected and why


def test_cudnn_benchmark_true_with_deterministic_is_a_config_error():
    for dev in (CUDA, CPU):
        with pytest.raises(ConfigError, match="run.cudnn_benchmark=true with run.deterministic=true"):
            cudnn_benchmark_choice(True, dev, True)


def test_configure_backends_sets_the_flag_and_the_header_says_so(monkeypatch, restore_torch_flags):
    FakeCuda(monkeypatch)
    torch.backends.cudnn.benchmark = False
    b = configure_backends(0, False, None, CUDA)
    assert torch.backends.cudnn.benchmark is True and b == Backends(False, b.determinism_note, True, b.cudnn_benchmark_note)
    assert "cuDNN autotuning on (run.cudnn_benchmark=null" in b.describe()
    b = configure_backends(0, False, False, CUDA)
    assert torch.backends.cudnn.benchmark is False and "cuDNN autotuning off (run.cudnn_benchmark=false)" in b.describe()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    b = configure_backends(0, True, None, CUDA)
    assert torch.backends.cudnn.benchmark is False and b.describe().startswith("deterministic on (")


def test_cudnn_benchmark_key_loads_from_yaml_and_overrides():
    assert load_config("synth_cmemd").run.cudnn_benchmark is None
    assert load_config("synth_cmemd", ["run.cudnn_benchmark=false"]).run.cudnn_benchmark is False
    assert load_config("synth_cmemd", ["run.cudnn_benchmark=true"]).run.cudnn_benchmark is True
    assert load_config("synth_cmemd", ["run.cudnn_benchmark=null"]).run.cudnn_benchmark is None
    with pytest.raises(ConfigError, match="run.cudnn_benchmark"):
        load_config("synth_cmemd", ["run.cudnn_benchmark=sometimes"])


def test_run_records_the_backends_in_environment_json(tiny_sysu, tmp_path, restore_torch_flags, capsys):
    cfg = load_config("synth_cmemd", tiny_overrides(tiny_sysu, tmp_path / "run", **{
        "optim.epochs": 1, "data.steps_per_epoch": 1, "run.diagnostics_ids": 0, "run.device": "cpu"}))
    train(cfg, progress=True, evaluate_after=False)
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["backends"]["deterministic"] is True and env["backends"]["cudnn_benchmark"] is False
    assert env["cuda"] is None
    assert "cpu (" in capsys.readouterr().out  # the header line with the backends


# ---------------------------------------------------------------------------------------------- CUDA-only loss paths

def test_deterministic_cross_entropy_equals_the_library_one(monkeypatch, restore_torch_flags):
    """The dense form used on CUDA under deterministic algorithms gives F.cross_entropy's value and gradient
    (exercised on CPU by pretending the tensor is on CUDA)."""
    from cmemd.losses import classification

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(16, 9, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 9, (16,), generator=g)
    for eps in (0.0, 0.1, 0.5):
        ref = F.cross_entropy(logits, targets, label_smoothing=eps)
        (g_ref,) = torch.autograd.grad(ref, logits)
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        torch.use_deterministic_algorithms(True)
        out = classification.cross_entropy(logits, targets, eps)
        (g_out,) = torch.autograd.grad(out, logits)
        monkeypatch.undo()
        torch.use_deterministic_algorithms(False)
        assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12) and torch.allclose(g_out, g_ref, rtol=1e-10, atol=1e-12)


def test_deterministic_stripe_cumsum_equals_cumsum(monkeypatch, restore_torch_flags):
    from cmemd.models.vtreid import _cumsum_stripes

    f = torch.randn(5, 6, 7, dtype=torch.float64)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    torch.use_deterministic_algorithms(True)
    out = _cumsum_stripes(f)
    monkeypatch.undo()
    torch.use_deterministic_algorithms(False)
    assert torch.allclose(out, f.cumsum(dim=1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- test loader

def test_eval_loader_takes_the_data_settings():
    cfg = load_config("synth_cmemd", ["data.num_workers=3", "data.cache=true", "data.cache_dir=/c",
                                      "data.root=/data/x"])
    assert eval_loader_settings(cfg, "cuda:1") == dict(num_workers=3, use_cache=True, cache_dir="/c",
                                                       dataset_root="/data/x", pin_memory=True)
    assert eval_loader_settings(cfg, CPU, root="/other")["dataset_root"] == "/other"
    assert eval_loader_settings(cfg, "cpu")["pin_memory"] is False


def test_evaluation_passes_the_settings_to_the_extractor(tiny_sysu, tmp_path, monkeypatch):
    from cmemd.models import build_model

    seen = []
    real = app_evaluate.extract_features

    def spy(model, records, **kw):
        seen.append({k: kw[k] for k in ("num_workers", "use_cache", "cache_dir", "dataset_root", "pin_memory")})
        return real(model, records, **kw)

    monkeypatch.setattr(app_evaluate, "extract_features", spy)
    cfg = load_config("synth_cmemd", tiny_overrides(tiny_sysu, tmp_path / "run", **{
        "data.cache": True, "data.cache_dir": tmp_path / "cache", "eval.trials": 1, "eval.modes": "[all]"}))
    model = build_model(model_config(cfg, 12))
    app_evaluate.evaluate_model(model, cfg, progress=False)
    assert seen and all(s == dict(num_workers=0, use_cache=True, cache_dir=str(tmp_path / "cache"),
                                  dataset_root=str(tiny_sysu), pin_memory=False) for s in seen)
    assert list((tmp_path / "cache").glob("*.npy"))  # the test images were cached


def test_features_with_workers_and_cache_equal_plain_extraction(tiny_sysu, tmp_path):
    from cmemd.data.sysu import SYSUMM01
    from cmemd.engine.extract import extract_features
    from cmemd.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=12, arch="resnet18", width=8, num_stripes=2, local_dim=16,
                                    pretrained=None))
    recs = SYSUMM01(tiny_sysu).thermal()[:20]
    kw = dict(height=32, width=16, batch_size=7)
    plain = extract_features(model, recs, **kw)
    fast = extract_features(model, recs, num_workers=2, use_cache=True, cache_dir=str(tmp_path / "c"),
                            pin_memory=torch.cuda.is_available(), **kw)
    cached_again = extract_features(model, recs, use_cache=True, cache_dir=str(tmp_path / "c"), **kw)
    assert plain.shape[0] == len(recs) and np.array_equal(plain, fast) and np.array_equal(plain, cached_again)


def test_extract_uses_the_data_settings_like_eval(tiny_checkpoint, tiny_sysu, tmp_path, monkeypatch):
    """`cmemd extract` gives the test loader the checkpoint's workers / cache / pinned-memory settings, with the
    dataset root it reads (here --data), as `cmemd eval` does."""
    from typer.testing import CliRunner

    import cmemd.engine.extract as engine_extract
    from cmemd.cli import app

    seen = []
    real = engine_extract.extract_features

    def spy(model, records, **kw):
        seen.append({k: kw.get(k) for k in ("num_workers", "use_cache", "cache_dir", "dataset_root", "pin_memory")})
        return real(model, records, **kw)

    monkeypatch.setattr(engine_extract, "extract_features", spy)
    res = CliRunner().invoke(app, ["extract", "--checkpoint", str(tiny_checkpoint), "--out-dir", str(tmp_path / "f"),
                                   "--data", str(tiny_sysu), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    _, cfg = app_evaluate.load_trained(tiny_checkpoint)
    expected = eval_loader_settings(cfg, "cpu", str(tiny_sysu))
    assert len(seen) == 2 and all(s == expected for s in seen), (seen, expected)
    assert expected["dataset_root"] == str(tiny_sysu)
