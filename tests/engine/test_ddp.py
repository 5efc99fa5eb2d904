"""Two CPU processes (gloo) with DistributedDataParallel: ranks end identical, the optimiser keeps the backbone and
head learning rates apart, and a 2-rank step equals a 1-rank step on the same global batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.engine.conftest import tiny_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cmemd.config import load_config
    from cmemd.app.run import train

    cfg = load_config(None, tiny_overrides(root, out, **{"optim.epochs": 1}))
    outcome = train(cfg, progress=False, evaluate_after=False)
    # parameters only: BN running statistics are per rank between DDP's buffer broadcasts (rank 0's are saved)
    torch.save({k: v.detach().clone() for k, v in outcome.model.named_parameters()}, f"{out}/rank{rank}.state")
    dist.destroy_process_group()


def _group_summary(optimizer) -> list[tuple[str, float, int]]:
    return [(g["name"], g["initial_lr"], sum(p.numel() for p in g["params"])) for g in optimizer.param_groups]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_ddp_keeps_ranks_identical(tiny_sysu, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_sysu), str(out)), nprocs=2, join=True)
    s0, s1 = torch.load(out / "rank0.state"), torch.load(out / "rank1.state")
    assert len(s0) == len(s1) > 100
    for k in s0:
        assert torch.equal(s0[k], s1[k]), f"rank parameters differ: {k}"
    # only rank 0 wrote the run files
    assert (out / "last.pt").is_file() and (out / "metrics.jsonl").is_file()
    from cmemd.engine.checkpoint import read_checkpoint

    ck = read_checkpoint(out / "last.pt")
    assert ck["sampler"]["world_size"] == 2 and ck["step"] >= 1
    for k, v in s0.items():
        assert torch.equal(ck["model"][k], v)
    # the DDP run's optimiser has the plain model's two groups (the wrapper once put everything in "heads" at lr 0.1)
    from cmemd.config import load_config
    from cmemd.app.run import model_config
    from cmemd.engine.schedule import build_optimizer
    from cmemd.models import build_model

    cfg = load_config(None, tiny_overrides(tiny_sysu, out))
    plain = build_model(model_config(cfg, ck["num_classes"]))
    expected = build_optimizer(plain, lr=0.05, backbone_lr=0.01).param_groups
    saved = ck["optimizer"]["param_groups"]
    assert [(g["name"], g["initial_lr"], len(g["params"])) for g in saved] == [
        (g["name"], g["initial_lr"], len(g["params"])) for g in expected]
    assert [g["name"] for g in saved] == ["backbone", "heads"]


# ---------------------------------------------------------------------- one step: 2 ranks == 1 rank

def _step_model():
    """A tiny global-only model (every parameter used by a CE loss on a batch holding both modalities)."""
    from cmemd.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=4, arch="resnet18", width=8, modality_specific_stages=1,
                                    use_local=False, test_feature="global"))
    torch.nn.init.normal_(model.global_classifier.weight, std=0.1)  # gradients of a useful size into the backbone
    return model


def _step_batch():
    """The global batch: 4 ids x (2 visible + 2 thermal), visible half then thermal half (the sampler's layout)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(16, 3, 32, 16, generator=g)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3] * 2)
    mods = torch.tensor([0] * 8 + [1] * 8)
    return images, pids, mods


def _rank_slice(rank: int, world: int) -> torch.Tensor:
    """Rank r's part of the global batch: its ids' visible images, then the same ids' thermal images."""
    per = 8 // world
    return torch.cat([torch.arange(rank * per, (rank + 1) * per), 8 + torch.arange(rank * per, (rank + 1) * per)])


def _one_step(model, optimizer, images, pids, mods) -> dict[str, torch.Tensor]:
    """One SGD step of a per-sample-mean CE loss; BatchNorm in eval mode so the loss is a mean over images
    (batch statistics would make a rank's loss depend on its own half of the batch). Returns the update per parameter."""
    net = getattr(model, "module", model)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    loss = torch.nn.functional.cross_entropy(model(images, mods).global_logits, pids)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {k: v.detach() - before[k] for k, v in net.named_parameters()}


def _step_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from cmemd.engine.schedule import build_optimizer

    model = _step_model()
    plain_groups = _group_summary(build_optimizer(model, lr=0.1, backbone_lr=0.01))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(ddp, lr=0.1, backbone_lr=0.01)  # the wrapped model: must be unwrapped
    images, pids, mods = _step_batch()
    idx = _rank_slice(rank, world)
    delta = _one_step(ddp, optimizer, images[idx], pids[idx], mods[idx])
    torch.save({"groups": _group_summary(optimizer), "plain_groups": plain_groups, "delta": delta},
               f"{out}/step{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_rank_step_equals_one_rank_step(tmp_path):
    from cmemd.engine.schedule import build_optimizer

    mp.spawn(_step_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "step0.pt"), torch.load(tmp_path / "step1.pt")
    # parameter groups of the wrapped model are the plain model's: backbone at 0.01, heads at 0.1
    assert r0["groups"] == r0["plain_groups"]
    assert [(name, lr) for name, lr, _ in r0["groups"]] == [("backbone", 0.01), ("heads", 0.1)]
    assert r0["groups"][0][2] > 10 * r0["groups"][1][2]  # the backbone holds most parameters
    # the reference: one process, no DDP, the whole global batch
    model = _step_model()
    ref = _one_step(model, build_optimizer(model, lr=0.1, backbone_lr=0.01), *_step_batch())
    assert set(ref) == set(r0["delta"])
    moved = 0
    for k, d in ref.items():
        for r in (r0, r1):
            got = r["delta"][k]
            scale = float(d.norm())
            assert float((got - d).norm()) <= 1e-4 * scale + 1e-12, f"{k}: 2-rank step differs from the 1-rank step"
        moved += scale > 0
    assert moved > 0.9 * len(ref)  # nearly every parameter took a step (the comparison is not vacuous)
