"""Two CPU processes (gloo) train a few steps with DistributedDataParallel: ranks end identical."""
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
    from cmemd.engine.run import train

    cfg = load_config(None, tiny_overrides(root, out, **{"optim.epochs": 1}))
    outcome = train(cfg, progress=False, evaluate_after=False)
    # parameters only: BN running statistics are per rank between DDP's buffer broadcasts (rank 0's are saved)
    torch.save({k: v.detach().clone() for k, v in outcome.model.named_parameters()}, f"{out}/rank{rank}.state")
    dist.destroy_process_group()


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
