"""Two CPU processes (gloo) with DistributedDataParallel: ranks end identical, the optimiser keeps the backbone and
head learning rates apart, a 2-rank step equals a 1-rank step on the same global batch, every stop is taken by all
ranks together, logged terms are the ranks' means, the batch layout is the documented one and one image cache is built."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.engine.conftest import tiny_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: What the worker's runs do (each a tiny `train` in the same 2-process group, so one launch covers them all).
RUNS = {
    # global batch (the default), image cache on, no CM-DL; rank 0 alone has a spent time budget
    "a": {"data.ddp_batch": "global", "data.num_ids": 4, "data.cache": True, "loss.lambda_dl": 0, "optim.epochs": 2},
    # every rank its own batch; rank 1 alone is asked to stop (a signal) during step 2
    "b": {"data.ddp_batch": "per_rank", "data.num_ids": 3, "optim.epochs": 1},
    # rank 1 alone gets a non-finite loss at step 2
    "c": {"data.num_ids": 4, "optim.epochs": 1},
}


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import contextlib
    import io
    import json
    import signal

    import cmemd.data.cache as cache_module
    from cmemd.app.runtime import TrainingInterrupted
    from cmemd.app.train import train
    from cmemd.config import load_config
    from cmemd.engine.trainer import Trainer
    from cmemd.errors import TrainingError

    decoded = []
    real_load = cache_module.load_image

    def slow_load(path, *a, **k):  # counts decodes; slow enough that two unsynchronised builders would overlap
        decoded.append(path)
        time.sleep(0.01)
        return real_load(path, *a, **k)

    cache_module.load_image = slow_load
    real_fb = Trainer.forward_backward
    plan: dict = {}
    seen: list = []

    def forward_backward(self, batch):  # records this rank's own terms and batch size; injects the run's fault
        if rank == 1 and plan.get("stop_at") == self.step + 1:
            self.request_stop(signal.SIGINT)
        if rank == 1 and plan.get("nan_at") == self.step + 1:
            real_objective = self.objective
            self.objective = lambda *a, **k: (lambda t: (t[0] * float("nan"), t[1]))(real_objective(*a, **k))
            try:
                return real_fb(self, batch)
            finally:
                self.objective = real_objective
        terms = real_fb(self, batch)
        seen.append({"step": self.step + 1, "images": int(batch.images.shape[0]), **terms})
        return terms

    Trainer.forward_backward = forward_backward
    for name, overrides in RUNS.items():
        plan.clear()
        seen.clear()
        plan.update({"b": {"stop_at": 2}, "c": {"nan_at": 2}}.get(name, {}))
        extra = dict(overrides)
        if name == "a":
            extra.update({"data.cache_dir": f"{out}/cache", "run.max_minutes": 1e-9 if rank == 0 else None})
        cfg = load_config(None, tiny_overrides(root, f"{out}/{name}", **extra))
        result: dict = {}
        stdout = io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout):
                outcome = train(cfg, progress=rank == 0, evaluate_after=False)
            result["epochs_run"] = len(outcome.history)
            if name == "a":  # parameters only: BN running statistics are per rank between DDP's buffer broadcasts
                torch.save({k: v.detach().clone() for k, v in outcome.model.named_parameters()}, f"{out}/a{rank}.state")
        except TrainingInterrupted as e:
            result["interrupted"] = [e.signum, e.epoch, e.step, e.exit_code]
        except TrainingError as e:
            result["error"] = str(e)
        result.update(stdout=stdout.getvalue(), steps=list(seen), decoded=len(decoded))
        decoded.clear()
        Path(f"{out}/{name}{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _group_summary(optimizer) -> list[tuple[str, float, int]]:
    return [(g["name"], g["initial_lr"], sum(p.numel() for p in g["params"])) for g in optimizer.param_groups]


def _spawn_with_timeout(fn, args, timeout: float = 240.0) -> None:
    """mp.spawn that fails (instead of hanging) when a rank is left waiting in a collective."""
    ctx = mp.start_processes(fn, args=args, nprocs=2, join=False, start_method="spawn")
    t0 = time.time()
    while not ctx.join(timeout=5):
        if time.time() - t0 > timeout:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung: the ranks did not take the same stop decision")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_ddp(tiny_sysu, tmp_path):
    """One 2-process launch, three runs: (a) the global batch with data.cache on and loss.lambda_dl=0 (a
    parameter left without gradient once crashed DDP), rank 0's time budget spent (rank 1 has none): both stop
    after epoch 1; one image cache built (by rank 0; rank 1 decodes nothing); ranks end identical. (b) per_rank
    batches, a stop asked on rank 1 only: both stop after the same step with a resumable mid-epoch checkpoint.
    (c) a non-finite loss on rank 1 only: both ranks raise TrainingError. In every run the logged step terms
    are the means of the ranks' own terms, and the steps per epoch are the docs' (the one-GPU count)."""
    import json

    from cmemd.app.train import training_data
    from cmemd.config import load_config
    from cmemd.engine.checkpoint import read_checkpoint

    out = tmp_path / "ddp"
    out.mkdir()
    _spawn_with_timeout(_worker, (2, _free_port(), str(tiny_sysu), str(out)))
    res = {f"{n}{r}": json.loads((out / f"{n}{r}.json").read_text()) for n in RUNS for r in (0, 1)}
    records = training_data(load_config(None, tiny_overrides(tiny_sysu, out))).records
    largest = max(sum(r.modality == m for r in records) for m in ("visible", "thermal"))
    K = 2

    def logged(run: str) -> list[dict]:
        lines = [json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines()]
        return [x for x in lines if x["kind"] == "step"]

    def check_mean(run: str) -> None:
        steps = logged(run)
        r0, r1 = ({s["step"]: s for s in res[f"{run}{r}"]["steps"]} for r in (0, 1))
        assert steps and [s["step"] for s in steps] == sorted(r0) == sorted(r1)
        for s in steps:
            for k in ("loss", "ce_global", "ce_local"):
                mean = (r0[s["step"]][k] + r1[s["step"]][k]) / 2
                assert s[k] == pytest.approx(mean, rel=1e-9, abs=1e-12), (run, s["step"], k)
            assert r0[s["step"]]["loss"] != r1[s["step"]]["loss"]  # the ranks did see different images

    # (a) global batch: 4 ids split 2 + 2, the one-GPU steps per epoch; both ranks stopped after epoch 1 of 2
    steps_a = largest // (4 * K)
    assert res["a0"]["epochs_run"] == res["a1"]["epochs_run"] == 1
    assert "data.ddp_batch=global" in res["a0"]["stdout"] and f"{steps_a} steps/epoch" in res["a0"]["stdout"]
    assert "not trained" in res["a0"]["stdout"] and "stripe_logits" in res["a0"]["stdout"]
    assert {s["images"] for r in (0, 1) for s in res[f"a{r}"]["steps"]} == {2 * 2 * K}
    ck = read_checkpoint(out / "a" / "last.pt")
    assert ck["step"] == steps_a and ck["epoch"] == 1 and ck["sampler"]["world_size"] == 2
    assert [s["step"] for s in logged("a")] == list(range(1, steps_a + 1))
    check_mean("a")
    # one cache: rank 0 decoded every training image once, rank 1 opened rank 0's file
    assert res["a0"]["decoded"] == len(records) and res["a1"]["decoded"] == 0
    assert len(list((out / "cache").glob("*.npy"))) == 1
    s0, s1 = torch.load(out / "a0.state"), torch.load(out / "a1.state")
    assert len(s0) == len(s1) > 100
    for k in s0:
        assert torch.equal(s0[k], s1[k]), f"rank parameters differ: {k}"
        assert torch.equal(ck["model"][k], s0[k])
    # the DDP run's optimiser has the plain model's two groups (the wrapper once put everything in "heads" at
    # lr 0.1), without the frozen stripe weights
    from cmemd.app.train import model_config, objective_from_config
    from cmemd.engine.schedule import build_optimizer
    from cmemd.models import build_model

    cfg = load_config(None, tiny_overrides(tiny_sysu, out, **RUNS["a"]))
    plain = build_model(model_config(cfg, ck["num_classes"]))
    assert objective_from_config(cfg).freeze_unused(plain) == ["stripe_logits"]
    expected = build_optimizer(plain, lr=0.05, backbone_lr=0.01).param_groups
    saved = ck["optimizer"]["param_groups"]
    assert [(g["name"], g["initial_lr"], len(g["params"])) for g in saved] == [
        (g["name"], g["initial_lr"], len(g["params"])) for g in expected]
    assert [g["name"] for g in saved] == ["backbone", "heads"]
    assert torch.equal(ck["model"]["stripe_logits"], plain.stripe_logits.detach())  # never trained

    # (b) per-rank batch: 3 ids on each rank, still the one-GPU steps per epoch; stop on rank 1 -> both after step 2
    steps_b = largest // (3 * K)
    assert "data.ddp_batch=per_rank" in res["b0"]["stdout"] and f"{steps_b} steps/epoch" in res["b0"]["stdout"]
    assert {s["images"] for r in (0, 1) for s in res[f"b{r}"]["steps"]} == {2 * 3 * K}
    assert res["b0"]["interrupted"] == res["b1"]["interrupted"] == [signal.SIGINT, 0, 2, 130]
    ck = read_checkpoint(out / "b" / "last.pt")
    assert ck["step"] == ck["batches_done"] == 2 and ck["epoch"] == 0 and ck["sampler"]["num_batches"] == steps_b
    check_mean("b")

    # (c) non-finite loss on rank 1 at step 2: both ranks raise, rank 0 saying it was another rank's loss
    assert "non-finite loss" in res["c1"]["error"] and "on rank 1" in res["c1"]["error"]
    assert "non-finite loss" in res["c0"]["error"] and "another rank" in res["c0"]["error"]
    assert [s["step"] for s in res["c0"]["steps"]] == [1]


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


def test_batch_layout_of_each_mode(tiny_sysu, tmp_path):
    """What data.ddp_batch means for W ranks, without launching them: the ids per rank, the steps per epoch (the
    one-GPU count in both modes, as docs/reproduce.md says; a sampler built with that layout agrees), and an
    uneven split of the global batch refused with the fix named."""
    from cmemd.app.train import ddp_batch_layout, training_data
    from cmemd.config import load_config
    from cmemd.data.sampler import CrossModalityIdentitySampler
    from cmemd.errors import ConfigError

    cfg = load_config(None, tiny_overrides(tiny_sysu, tmp_path, **{"data.num_ids": 4}))
    records = training_data(cfg).records
    one_gpu = max(sum(r.modality == m for r in records) for m in ("visible", "thermal")) // (4 * 2)
    for mode, per_rank in (("global", 2), ("per_rank", 4)):
        cfg.data.ddp_batch = mode
        for world in (1, 2):
            layout = ddp_batch_layout(cfg, records, world)
            assert layout.ids_per_rank == (4 if world == 1 else per_rank) and layout.steps_per_epoch == one_gpu
            samplers = [CrossModalityIdentitySampler(records, layout.ids_per_rank, 2, rank=r, world_size=world,
                                                     num_batches=layout.num_batches) for r in range(world)]
            assert {s.num_batches for s in samplers} == {one_gpu}
            assert all(len(b) == 2 * 2 * layout.ids_per_rank for s in samplers for b in s.epoch_batches(0))
    cfg.data.ddp_batch, cfg.data.num_ids = "global", 3
    with pytest.raises(ConfigError, match=r"data\.num_ids=3 .* 2 ranks .*data\.ddp_batch=per_rank"):
        ddp_batch_layout(cfg, records, 2)
    cfg.data.ddp_batch = "per_rank"
    assert ddp_batch_layout(cfg, records, 2).ids_per_rank == 3
