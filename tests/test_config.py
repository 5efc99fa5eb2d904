from __future__ import annotations

import pytest

from cmemd.config import TrainConfig, config_from_dict, dump_config, load_config
from cmemd.errors import ConfigError


def test_defaults_follow_method_md():
    cfg = TrainConfig()
    assert cfg.model.arch == "resnet50" and cfg.model.modality_specific_stages == 3 and cfg.model.last_stride == 1
    assert cfg.model.num_stripes == 6 and cfg.model.local_dim == 512 and cfg.model.pooling == "gem"
    assert (cfg.data.num_ids, cfg.data.num_instances, cfg.data.height, cfg.data.width) == (8, 4, 288, 144)
    assert cfg.optim.milestones == [20, 50] and cfg.optim.epochs == 80 and cfg.optim.warmup_epochs == 10
    assert cfg.loss.emd_solver == "exact" and cfg.loss.emd_cost == "euclidean"


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  arch: resnet18\n  width: 32\noptim:\n  lr: 0.05\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.lr=0.2", "model.use_local=false", "model.test_feature=global",
                                                "optim.milestones=[1,2]", "optim.grad_clip=none"])
    assert cfg.model.arch == "resnet18" and cfg.model.width == 32 and cfg.optim.epochs == 3
    assert cfg.optim.lr == 0.2 and cfg.model.use_local is False and cfg.optim.milestones == [1, 2] and cfg.optim.grad_clip is None
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optim.lrr=0.1", "unknown key 'optim.lrr'"),
        ("optim.epochs=many", "optim.epochs must be int"),
        ("model.use_local=maybe", "model.use_local must be bool"),
        ("loss.alignment=magic", "loss.alignment must be one of"),
        ("nosection.x=1", "unknown key 'nosection'"),
        ("optim.lr", "expected key=value"),
        ("eval.shots=3", "eval.shots must be 1 or 10"),
        ("model.pooling=max", "model.pooling must be one of"),
        ("loss.dl_variant=both", "loss.dl_variant must be one of"),
        ("model.gem_p=0", "model.gem_p=0"),  # the library's own range check, under the config's key
        ("model.use_local=false", "model.test_feature='concat'"),  # and its combination checks
    ],
)
def test_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model:\n  archh: resnet18\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.archh'"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_sysu_baseline_is_agws_recipe():
    """configs/sysu_baseline.yaml: AGW = stem-only modality split, non-local blocks (2 in layer2, 3 in layer3),
    GeM, BN-neck + global feature, plain CE (no label smoothing) + WRT triplet, no alignment, no erasing."""
    from pathlib import Path

    from cmemd.app.train import model_config
    from cmemd.models import build_model

    path = Path(__file__).resolve().parents[1] / "configs" / "sysu_baseline.yaml"
    cfg = load_config(path, ["model.width=8", "model.pretrained=null"])
    assert cfg.loss.label_smoothing == 0.0 and cfg.loss.lambda_triplet == 1.0 and cfg.loss.alignment == "none"
    assert cfg.loss.lambda_dl == 0.0 and cfg.data.random_erasing == 0.0 and cfg.data.channel_aug == 0.0
    assert cfg.model.pooling == "gem" and cfg.model.test_feature == "global" and not cfg.model.use_local
    model = build_model(model_config(cfg, 395))
    blocks = {k.rsplit(".non_local.", 1)[0] + "." + k.rsplit(".non_local.", 1)[1].split(".")[0]
              for k in model.state_dict() if ".non_local." in k}
    assert blocks == {"shared.layer2.0", "shared.layer2.1", "global_stream.layer3.0", "global_stream.layer3.1",
                      "global_stream.layer3.2"}


def test_every_library_option_is_reachable_and_nothing_is_restated():
    import dataclasses
    import inspect

    from cmemd.config import ModelSettings, _choices
    from cmemd.engine.objective import Objective
    from cmemd.app.train import model_config, objective_from_config
    from cmemd.models import ModelConfig

    lib_model = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name != "num_classes"}
    assert {f.name: f.default for f in dataclasses.fields(ModelSettings)} == lib_model
    lib_loss = {p.name: p.default for p in inspect.signature(Objective.__init__).parameters.values()
                if p.kind == p.KEYWORD_ONLY}
    assert dataclasses.asdict(TrainConfig().loss) == lib_loss
    cfg = load_config(None, ["model.gem_p=4.5", "model.gem_learnable=true", "model.zero_init_residual=true",
                             "loss.sinkhorn_iters=7"])
    mc = model_config(cfg, num_classes=5)
    assert (mc.gem_p, mc.gem_learnable, mc.zero_init_residual, mc.num_classes) == (4.5, True, True, 5)
    assert objective_from_config(cfg).align.sinkhorn_iters == 7
    # the choices are the library's own tuples (the same objects), not copies
    from cmemd.losses.alignment import ALIGNMENT_LOSSES
    from cmemd.models.vtreid import POOLINGS

    assert _choices()["loss.alignment"] is ALIGNMENT_LOSSES and _choices()["model.pooling"] is POOLINGS
