"""Host-device synchronisations: the counting mode counts what it should, a training step of the paper's model and
of the demo makes one on a non-logging step (two on a logging step), and the sync-free fast path (the batch layout)
computes exactly what the plain path computes."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cmemd.engine.objective import Objective
from cmemd.engine.sync_count import SYNC_KINDS, count_host_syncs
from cmemd.engine.terms import LoggedTerms
from cmemd.errors import SolverError, TrainingError
from cmemd.layout import BatchLayout
from cmemd.losses import cmdl_loss, cmemd_loss, group_identities
from cmemd.models import ModelConfig, VTReIDModel

BENCH = Path(__file__).resolve().parents[2] / "bench" / "host_syncs.py"
spec = importlib.util.spec_from_file_location("host_syncs_bench", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


# ------------------------------------------------------------------------------------------ the counting mode

def test_each_kind_is_counted_once_per_call_and_plain_ops_are_not():
    x = torch.arange(6.0)
    mask = x > 2
    with count_host_syncs() as syncs:
        # not synchronising: arithmetic, reductions to tensors, slicing, integer indexing, dtype casts,
        # non-blocking copies, repeat_interleave with a known size
        y = (x * 2 + 1).sum()
        x[1:3], x[torch.tensor([0, 1])], x.to(torch.float64), x.to("cpu", non_blocking=True)
        x.repeat_interleave(2), torch.repeat_interleave(x, torch.tensor([1] * 6), output_size=6)
        torch.where(mask, x, y)
        # synchronising, one call of each
        x[0].item()                                        # item
        float(y), int(x[1]), bool(x[2]), f"{y:.1f}"        # scalar x4
        x.tolist()                                         # tolist
        x.numpy()                                          # numpy
        torch.equal(x, x), torch.allclose(x, x)            # compare x2
        x.nonzero(), torch.masked_select(x, mask), torch.where(mask)  # nonzero x3
        torch.unique(x)                                    # unique
        x[mask]                                            # mask_index
        x.clone()[mask] = 0.0                              # mask_index (assignment)
        torch.bincount(torch.tensor([0, 1, 1]))            # dynamic_shape
        torch.repeat_interleave(x, torch.tensor([1] * 6))  # dynamic_shape
        x.cpu(), x.to("cpu"), torch.tensor([1, 2], device="cpu")  # copy x3 (blocking, a device named)
    expected = Counter(item=1, scalar=4, tolist=1, numpy=1, compare=2, nonzero=3, unique=1, mask_index=2,
                       dynamic_shape=2, copy=3)
    assert set(expected) == set(SYNC_KINDS)
    assert dict(syncs.by_kind) == dict(expected)
    assert syncs.total == sum(expected.values())
    # every site is this file (the innermost frame outside torch)
    assert {site.split(":")[0] for _, _, site in syncs.by_site} == {Path(__file__).name}


def test_optimiser_step_counters_are_not_counted_unless_asked():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    with count_host_syncs() as default:
        opt.step()
    with count_host_syncs(ignore=()) as everything:
        opt.step()
    assert default.total == 0
    assert everything.by_kind["item"] >= 1  # Adam reads its host-side step counter
    # torch's own same-device .to() (clip_grad_norm_ moves each norm to the first grad's device) is a no-op anywhere;
    # the same call written in our code counts (on the CPU the mode cannot tell it from a transfer)
    with count_host_syncs() as clip:
        torch.nn.utils.clip_grad_norm_([p], 1.0)
        p.grad.to(p.device)
    assert dict(clip.by_kind) == {"copy": 1} and next(iter(clip.by_site))[2].startswith(Path(__file__).name)


def test_on_sync_callback_sees_each_call():
    seen = []
    with count_host_syncs(on_sync=lambda kind, op: seen.append((kind, op))):
        float(torch.ones(()))
        torch.ones(3).tolist()
    assert seen == [("scalar", "__float__"), ("tolist", "tolist")]


def test_logged_terms_are_read_with_one_transfer_and_equal_float():
    vals = {f"t{i}": torch.randn(()) * 10 ** i for i in range(8)}
    terms = LoggedTerms(vals)
    with count_host_syncs() as syncs:
        terms["extra"] = torch.tensor(1.5)  # setting reads nothing
        raw = terms.raw()
    assert syncs.total == 0 and raw["extra"] is not None
    with count_host_syncs() as syncs:
        read = dict(terms)
        read_again = terms["t3"]
    assert dict(syncs.by_kind) == {"tolist": 1}
    assert read == {**{k: float(v) for k, v in vals.items()}, "extra": 1.5}
    assert read_again == float(vals["t3"])


# ------------------------------------------------------------------------------------------ training steps

STEPS, LOG_EVERY = 5, 2
SYNC_FREE = ["synth_cmemd", "synth_cmemd cross CM-DL", "synth_cmemd grad_clip", "sysu_cmemd",
             "synth_cmemd_global (demo)", bench.ACCELERATOR_SINKHORN]


@pytest.mark.parametrize("name", SYNC_FREE)
def test_a_training_step_makes_one_sync_and_a_logging_step_two(name, tiny_sysu, tmp_path):
    config, overrides = bench.CONFIGS[name]
    trainer = bench.build_trainer(config, overrides, tiny_sysu, tmp_path / "run", steps=STEPS, log_every=LOG_EVERY)
    with bench.sinkhorn_loop(name):  # the accelerator's Sinkhorn loop for that config
        counts, terms, _, steps = bench.count_steps(trainer)
    assert len(counts) == STEPS - 1 and len(terms) == STEPS
    for k, step in enumerate(steps, start=1):
        kinds = dict(step.by_kind)
        sites = {site.split(":")[0] for _, _, site in step.by_site}
        if k == 1:  # the first step also copies the OT candidate tables to the device, once per process
            kinds.pop("copy", None)
        if k % LOG_EVERY:
            # the non-finite check before backward, nothing else
            assert kinds == {"scalar": 1}, (k, step.table())
            assert sites <= {"trainer.py", "ot.py"}, step.table()
        else:
            # plus the one read of every logged term
            assert kinds == {"scalar": 1, "tolist": 1}, (k, step.table())
    assert max(counts[1:]) <= 3


def test_sinkhorn_on_the_cpu_adds_only_its_convergence_reads(tiny_sysu, tmp_path):
    config, overrides = bench.CONFIGS["synth_cmemd sinkhorn"]
    trainer = bench.build_trainer(config, overrides, tiny_sysu, tmp_path / "run", steps=3, log_every=10)
    _, _, _, steps = bench.count_steps(trainer)
    for step in steps:
        others = {key: n for key, n in step.by_site.items() if not key[2].startswith("ot.py")}
        assert sum(others.values()) == 1, step.table()  # the trainer's check; the rest is Sinkhorn's early exit


# ------------------------------------------------------------------------------------------ fast path == plain path

def _mixed_batch(seed: int = 0):
    """Labels in no particular order, one identity visible-only, shapes (2,1), (1,2), (2,2)."""
    g = torch.Generator().manual_seed(seed)
    pids = [5, 3, 5, 9, 3, 7, 5, 9, 9, 3, 7, 5]
    mods = [0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1]
    perm = torch.randperm(len(pids), generator=g).tolist()
    pids, mods = [pids[i] for i in perm], [mods[i] for i in perm]
    return torch.tensor(pids), torch.tensor(mods), g


def test_layout_matches_the_tensor_grouping():
    pids, mods, _ = _mixed_batch()
    layout = BatchLayout.from_labels(pids.tolist(), mods.tolist())
    groups, n_id, n_skip = group_identities(pids, mods)
    assert (layout.num_identities, layout.num_skipped) == (n_id, n_skip) == (3, 1)
    assert len(layout.groups) == len(groups)
    for (lv, lt), (gv, gt) in zip(layout.groups, groups):
        assert torch.equal(lv, gv) and torch.equal(lt, gt)
    _, inverse = torch.unique(pids, return_inverse=True)
    assert torch.equal(layout.inverse, inverse) and layout.num_pids == 4
    assert layout.modality_counts == (int((mods == 0).sum()), int((mods == 1).sum()))
    order = torch.argsort(mods, stable=True)
    assert torch.equal(layout.modality_order, order)
    assert torch.equal(order[layout.modality_inverse], torch.arange(len(pids)))
    assert BatchLayout.from_labels([1, 1, 2, 2], [0, 0, 1, 1]).modality_order is None
    assert BatchLayout.from_tensors(pids, mods) == layout  # the tensors' labels read to the host, same layout
    with pytest.raises(TrainingError, match="must both be"):
        BatchLayout.from_tensors(pids, mods[:-1])


@pytest.mark.parametrize("alignment,extra", [("cmemd", {}), ("cmemd", {"emd_solver": "sinkhorn"}),
                                              ("hetero-center", {}), ("mmd", {}), ("none", {})])
def test_objective_and_model_with_layout_equal_the_plain_path_bit_for_bit(alignment, extra):
    pids, mods, g = _mixed_batch(1)
    torch.manual_seed(0)
    model = VTReIDModel(ModelConfig(num_classes=10, arch="resnet18", width=8, num_stripes=2, local_dim=8))
    model.train()
    objective = Objective(alignment=alignment, label_smoothing=0.1, dl_variant="cross", **extra)
    x = torch.randn(len(pids), 3, 32, 16, generator=g)
    layout = BatchLayout.from_labels(pids.tolist(), mods.tolist())
    results = []
    for kw in ({}, {"layout": layout}):
        model.zero_grad()
        state = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats move each forward
        out = model(x, mods, **kw)
        total, terms = objective(out, pids, mods, **kw)
        total.backward()
        results.append((dict(terms), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        model.load_state_dict(state)
    (plain, plain_grads), (fast, fast_grads) = results
    assert plain == fast
    assert len(plain_grads) == len(fast_grads) and all(torch.equal(a, b) for a, b in zip(plain_grads, fast_grads))


def test_cmdl_with_layout_equals_plain():
    pids, mods, g = _mixed_batch(2)
    feats = torch.randn(len(pids), 6, generator=g)
    layout = BatchLayout.from_labels(pids.tolist(), mods.tolist())
    for cross in (False, True):
        assert torch.equal(cmdl_loss(feats, pids, mods, cross=cross), cmdl_loss(feats, pids, mods, cross=cross, layout=layout))


def test_non_finite_feature_without_the_check_gives_a_non_finite_loss():
    """With a layout the OT solver does not read the cost back to check it: the NaN must reach the loss, where the
    trainer's one check before backward stops it (tests/engine/test_trainer.py shows that stop)."""
    pids, mods = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    feats = torch.randn(8, 4)
    feats[5, 2] = float("nan")
    layout = BatchLayout.from_labels(pids.tolist(), mods.tolist())
    kw = dict(cost="sqeuclidean")  # (the euclidean cost's safe square root maps a NaN distance to 0)
    for solver in ("exact", "sinkhorn"):
        with pytest.raises(SolverError, match="NaN or inf"):
            cmemd_loss(feats, pids, mods, solver=solver, **kw)
        with count_host_syncs() as syncs:
            res = cmemd_loss(feats, pids, mods, solver=solver, layout=layout, **kw)
        assert not np.isfinite(float(res.loss))
        if solver == "exact":
            assert syncs.total == 0, syncs.table()
    feats[5, 2] = float("inf")
    assert not np.isfinite(float(cmemd_loss(feats, pids, mods, layout=layout, normalize=False, **kw).loss))


def test_a_layout_for_another_batch_is_refused():
    layout = BatchLayout.from_labels([0, 0, 1, 1], [0, 1, 0, 1])
    with pytest.raises(TrainingError, match="layout describes 4 samples but the batch has 6"):
        cmemd_loss(torch.randn(6, 3), torch.zeros(6, dtype=torch.long), torch.tensor([0, 1] * 3), layout=layout)
    with pytest.raises(TrainingError, match="modalities must be 0"):
        BatchLayout.from_labels([0, 1], [0, 2])
