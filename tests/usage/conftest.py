"""One tiny trained model shared by the usage tests (API, search, report, export)."""
from __future__ import annotations

import pytest

from tests.engine.conftest import tiny_overrides, tiny_sysu  # noqa: F401  (tiny_sysu is a fixture)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_sysu, tmp_path_factory):  # noqa: F811
    """A checkpoint of a tiny model trained for one epoch (a few seconds on CPU)."""
    from cmemd.config import load_config
    from cmemd.app.train import train

    import torch

    out = tmp_path_factory.mktemp("usage") / "run"
    cfg = load_config(None, tiny_overrides(tiny_sysu, out, **{"optim.epochs": 1}))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/conftest.py::_one_thread (session fixtures are set up before module ones)
    try:
        outcome = train(cfg, progress=False, evaluate_after=False)
    finally:
        torch.set_num_threads(n)
    return outcome.checkpoint
