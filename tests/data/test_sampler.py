"""Properties of the cross-modality identity sampler."""
from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmemd.data.records import ImageRecord
from cmemd.data.sampler import CrossModalityIdentitySampler
from cmemd.errors import DatasetError, TrainingError


def make_records(counts: list[tuple[int, int]]) -> list[ImageRecord]:
    """counts[pid] = (#visible, #thermal); records interleaved so indices are not grouped by pid."""
    recs = []
    for pid, (nv, nt) in enumerate(counts):
        recs += [ImageRecord(f"v/{pid}_{i}.jpg", pid, 1, "visible") for i in range(nv)]
        recs += [ImageRecord(f"t/{pid}_{i}.jpg", pid, 3, "thermal") for i in range(nt)]
    return recs[::2] + recs[1::2]


@st.composite
def setups(draw):
    P = draw(st.integers(1, 4))
    K = draw(st.integers(1, 4))
    world = draw(st.integers(1, 3))
    n_ids = draw(st.integers(P * world, P * world + 6))
    counts = draw(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=n_ids, max_size=n_ids))
    seed = draw(st.integers(0, 2**31))
    return P, K, world, counts, seed


@settings(max_examples=60, deadline=None)
@given(setups())
def test_batch_structure(setup):
    P, K, world, counts, seed = setup
    recs = make_records(counts)
    s = CrossModalityIdentitySampler(recs, P, K, seed=seed, world_size=world, rank=world - 1)
    n_vis = sum(v for v, _ in counts)
    n_th = sum(t for _, t in counts)
    assert len(s) == max(1, max(n_vis, n_th) // (P * K * world))
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert len(b) == 2 * P * K
        vis, th = b[: P * K], b[P * K :]
        assert all(recs[i].modality == "visible" for i in vis)
        assert all(recs[i].modality == "thermal" for i in th)
        vis_pids = [recs[i].pid for i in vis]
        # K consecutive images per identity, same identity order in both halves
        assert vis_pids == [recs[i].pid for i in th]
        blocks = [vis_pids[j * K : (j + 1) * K] for j in range(P)]
        assert all(len(set(blk)) == 1 for blk in blocks)
        assert len({blk[0] for blk in blocks}) == P  # distinct identities
        # without replacement whenever the identity has >= K images of that modality
        for j in range(P):
            pid = blocks[j][0]
            for half, n in ((vis, counts[pid][0]), (th, counts[pid][1])):
                chosen = half[j * K : (j + 1) * K]
                if n >= K:
                    assert len(set(chosen)) == K
                else:
                    assert set(chosen) <= {i for i, r in enumerate(recs) if r.pid == pid}


@settings(max_examples=30, deadline=None)
@given(setups())
def test_ranks_disjoint_and_equal_length(setup):
    P, K, world, counts, seed = setup
    recs = make_records(counts)
    per_rank = [list(CrossModalityIdentitySampler(recs, P, K, seed=seed, world_size=world, rank=r)) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    for step in zip(*per_rank):
        pid_sets = [{recs[i].pid for i in b} for b in step]
        assert sum(len(s) for s in pid_sets) == len(set().union(*pid_sets)) == P * world


@settings(max_examples=30, deadline=None)
@given(setups())
def test_determinism_and_epochs_differ(setup):
    P, K, world, counts, seed = setup
    recs = make_records(counts)
    a = CrossModalityIdentitySampler(recs, P, K, seed=seed, world_size=world)
    b = CrossModalityIdentitySampler(recs, P, K, seed=seed, world_size=world)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) == list(a)
    assert a.epoch_batches(3) == list(a)


def test_epochs_and_seeds_differ():
    recs = make_records([(6, 6)] * 20)
    s = CrossModalityIdentitySampler(recs, 4, 4, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    assert list(CrossModalityIdentitySampler(recs, 4, 4, seed=2)) != e0


def test_small_identity_sampled_with_replacement():
    recs = make_records([(1, 2), (1, 2)])
    s = CrossModalityIdentitySampler(recs, 2, 4, num_batches=20)
    seen_th: set[int] = set()
    for b in s:
        for pid in (0, 1):
            vis = [i for i in b[:8] if recs[i].pid == pid]
            th = [i for i in b[8:] if recs[i].pid == pid]
            pool_th = {i for i, r in enumerate(recs) if r.pid == pid and r.modality == "thermal"}
            assert len(vis) == 4 and len(set(vis)) == 1  # the one visible image, 4 times
            assert len(th) == 4 and set(th) <= pool_th
            seen_th |= set(th)
    assert len(seen_th) == 4  # draws with replacement still reach every thermal image


def test_missing_modality_excluded_with_warning():
    recs = make_records([(3, 3), (3, 0), (3, 3), (0, 2)])
    with pytest.warns(UserWarning, match="2 of 4 identities"):
        s = CrossModalityIdentitySampler(recs, 2, 2, num_batches=5)
    assert s.excluded_pids == [1, 3]
    assert all({recs[i].pid for i in b} == {0, 2} for b in s)
    with pytest.raises(DatasetError, match="lower P"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CrossModalityIdentitySampler(recs, 3, 2)


def test_resume_mid_epoch_gives_remaining_batches():
    recs = make_records([(5, 7)] * 12)
    s = CrossModalityIdentitySampler(recs, 3, 2, seed=7)
    s.set_epoch(4)
    full = list(s)
    assert len(full) == 14
    it = iter(s)
    for _ in range(5):
        next(it)
    state = s.state_dict()
    assert state["start_batch"] == 5 and state["epoch"] == 4 and state["seed"] == 7

    t = CrossModalityIdentitySampler(recs, 3, 2, seed=0)
    t.load_state_dict(state)
    t.set_epoch(4)  # the engine calls this at the start of the resumed epoch; it must not reset
    assert len(t) == 9
    assert list(t) == full[5:]
    t.set_epoch(5)
    assert len(t) == 14 and list(t) == s.epoch_batches(5)
    # explicit position (what an engine with a prefetching DataLoader passes)
    assert s.state_dict(batches_done=2)["start_batch"] == 2


def test_resume_rejects_other_layout():
    recs = make_records([(5, 5)] * 12)
    state = CrossModalityIdentitySampler(recs, 3, 2).state_dict()
    with pytest.raises(TrainingError, match="K=2"):
        CrossModalityIdentitySampler(recs, 3, 3).load_state_dict(state)
    with pytest.raises(TrainingError, match="start_batch"):
        CrossModalityIdentitySampler(recs, 3, 2).load_state_dict({**state, "start_batch": 10**6})


def test_bad_arguments():
    recs = make_records([(2, 2)] * 4)
    with pytest.raises(ValueError, match="rank"):
        CrossModalityIdentitySampler(recs, 1, 1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="P"):
        CrossModalityIdentitySampler(recs, 0, 1)
