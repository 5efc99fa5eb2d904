from __future__ import annotations

import pytest

from cmemd.data.synth import SynthConfig, generate_sysu


@pytest.fixture(scope="session")
def tiny_sysu(tmp_path_factory):
    """A small synthetic SYSU-layout set (12 ids, 32x16 images) for engine tests."""
    root = tmp_path_factory.mktemp("tiny") / "sysu"
    generate_sysu(root, SynthConfig(ids=12, images_per_camera=(3, 4), height=32, width=16, seed=3))
    return root


def tiny_overrides(root, out_dir, **extra) -> list[str]:
    """Config overrides for a model and batch small enough to train in seconds on CPU."""
    base = {
        "data.root": root, "data.height": 32, "data.width": 16, "data.num_ids": 3, "data.num_instances": 2,
        "data.num_workers": 0, "data.cache": False, "data.random_erasing": 0.5,
        "model.arch": "resnet18", "model.width": 8, "model.num_stripes": 2, "model.local_dim": 16,
        "optim.optimizer": "sgd", "optim.lr": 0.05, "optim.backbone_lr": 0.01, "optim.epochs": 2,
        "optim.warmup_epochs": 1, "optim.milestones": "[1]", "eval.trials": 2, "eval.batch_size": 64,
        "run.out_dir": out_dir, "run.log_every": 1, "run.deterministic": True,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
