"""Dataset and loaders: batch layout, dtypes, worker-independence, cache equivalence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cmemd.data.dataset import ReIDDataset, build_test_loader, build_train_loader
from cmemd.data.records import ImageRecord
from cmemd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, transforms_from_config
from cmemd.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    recs = []
    for pid in range(5):
        for mod, n in (("visible", 3), ("thermal", 2)):
            for k in range(n):
                p = root / f"{pid}_{mod}_{k}.png"
                if mod == "thermal":  # single-channel files, as thermal images often are
                    Image.fromarray(rng.integers(0, 256, (24, 12), dtype=np.uint8), "L").save(p)
                else:
                    Image.fromarray(rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)).save(p)
                recs.append(ImageRecord(str(p), pid, 1 if mod == "visible" else 3, mod))
    return recs


def collect(loader, epoch=0):
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_train_batches_layout_and_dtypes(records, tmp_path):
    loader = build_train_loader(records, height=16, width=8, P=2, K=2, seed=3, cache_dir=tmp_path, channel_aug=0.5)
    batches = collect(loader)
    assert len(batches) == len(loader) == 15 // 4  # max(15 visible, 10 thermal) // (P*K)
    for b in batches:
        assert b.images.shape == (8, 3, 16, 8) and b.images.dtype == torch.float32
        assert b.pids.dtype == b.modalities.dtype == b.indices.dtype == torch.long
        assert b.modalities.tolist() == [0] * 4 + [1] * 4
        assert torch.equal(b.pids[:4], b.pids[4:])
        for i, pid, m in zip(b.indices.tolist(), b.pids.tolist(), b.modalities.tolist()):
            assert records[i].pid == pid and ("visible", "thermal")[m] == records[i].modality


def test_same_batches_with_0_and_2_workers_and_with_cache(records, tmp_path):
    kw = dict(height=16, width=8, P=2, K=2, seed=11, random_erasing=0.5, channel_aug=0.5)
    b0 = collect(build_train_loader(records, num_workers=0, **kw), epoch=2)
    b2 = collect(build_train_loader(records, num_workers=2, **kw), epoch=2)
    bc = collect(build_train_loader(records, num_workers=0, use_cache=True, cache_dir=tmp_path, **kw), epoch=2)
    for x, y, z in zip(b0, b2, bc):
        for a, b, c in zip(x, y, z):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b) and torch.equal(a, c)
            else:  # the batch layout
                assert a == b == c and a is not None
    # another epoch gives other augmentations of the same index
    other = collect(build_train_loader(records, num_workers=0, **kw), epoch=3)
    assert not all(torch.equal(x.images, y.images) for x, y in zip(b0, other))


def test_persistent_workers_follow_the_epoch(records):
    kw = dict(height=16, width=8, P=2, K=2, seed=5, num_batches=2)
    ref = build_train_loader(records, num_workers=0, **kw)
    pers = build_train_loader(records, num_workers=1, persistent_workers=True, **kw)
    for epoch in (0, 1):
        for x, y in zip(collect(ref, epoch), collect(pers, epoch)):
            assert torch.equal(x.images, y.images)


def test_same_index_same_epoch_same_tensor(records):
    ds = ReIDDataset(records, transforms_from_config(TransformConfig(16, 8, channel_aug=1.0), train=True), seed=1)
    assert torch.equal(ds[(4, 7)][0], ds[(4, 7)][0])
    ds.set_epoch(4)
    assert torch.equal(ds[7][0], ds[(4, 7)][0])
    assert not torch.equal(ds[(4, 7)][0], ds[(5, 7)][0])


def test_repeated_draws_of_an_image_get_different_augmentations(records):
    """The sampler draws some images several times per epoch; each draw is augmented afresh (seeded by its
    position in the epoch), where seeding by (seed, epoch, index) alone gave every repeat the same tensor."""
    loader = build_train_loader(records, height=16, width=8, P=2, K=2, seed=3, num_batches=6, pad=4,
                                random_erasing=0.5, channel_aug=0.5)
    first: dict[int, torch.Tensor] = {}
    repeats = 0
    for b in collect(loader):
        for img, i in zip(b.images, b.indices.tolist()):
            if i in first:
                repeats += 1
                assert not torch.equal(img, first[i]), f"image {i} drawn twice in the epoch with the same augmentation"
            else:
                first[i] = img
    assert repeats >= 20  # 6 steps x 8 draws over 25 images: the check is not vacuous


def test_a_draw_is_reproduced_by_seed_epoch_index_and_position(records):
    """Batch b, slot j of rank r is dataset[(epoch, index, (b * world + r) * batch_size + j)], on any rank
    layout and after a resume that skips steps (the position does not depend on where iteration started)."""
    kw = dict(height=16, width=8, P=2, K=2, seed=7, num_batches=3, random_erasing=0.5, channel_aug=0.5)
    ds = ReIDDataset(records, transforms_from_config(TransformConfig(16, 8, random_erasing=0.5, channel_aug=0.5),
                                                     train=True), seed=7)
    assert torch.equal(ds[(2, 5, 11)][0], ds[(2, 5, 11)][0])
    assert not torch.equal(ds[(2, 5, 11)][0], ds[(2, 5, 12)][0])
    for world, rank in ((1, 0), (2, 1)):
        full = collect(build_train_loader(records, rank=rank, world_size=world, **kw), epoch=2)
        for b, batch in enumerate(full):
            for j, (img, i) in enumerate(zip(batch.images, batch.indices.tolist())):
                assert torch.equal(img, ds[(2, i, (b * world + rank) * 8 + j)][0])
        resumed = build_train_loader(records, rank=rank, world_size=world, **kw)
        resumed.batch_sampler.load_state_dict({"seed": 7, "epoch": 2, "start_batch": 1})
        rest = list(resumed)
        assert len(rest) == 2 and all(torch.equal(x.images, y.images) for x, y in zip(rest, full[1:]))


def test_test_loader_order_and_values(records, tmp_path):
    loader = build_test_loader(records, height=16, width=8, batch_size=4)
    batches = list(loader)
    assert [len(b.indices) for b in batches] == [4] * 6 + [1]
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(len(records)))
    assert torch.cat([b.pids for b in batches]).tolist() == [r.pid for r in records]
    # no augmentation: image 0 is the bilinear resize, normalised
    ref = np.asarray(Image.open(records[0].path).convert("RGB").resize((8, 16), Image.Resampling.BILINEAR)) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(batches[0].images[0].permute(1, 2, 0).numpy(), ref, atol=1e-5)
    cached = list(build_test_loader(records, height=16, width=8, batch_size=4, use_cache=True, cache_dir=tmp_path))
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, cached))


def test_errors(records, tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        build_test_loader([], height=16, width=8)
    with pytest.raises(ConfigError, match="TransformConfig"):
        build_train_loader(records, height=16, width=8, P=2, K=2, nonsense=1)
    from cmemd.data.cache import build_cache

    other = build_cache([r.path for r in records[:3]], 16, 8, cache_dir=tmp_path, progress=False)
    with pytest.raises(DatasetError, match="other paths"):
        ReIDDataset(records, transforms_from_config(TransformConfig(16, 8), train=False), cache=other)


def test_batch_sampler_says_its_interface_explicitly(tmp_path):
    """No attribute forwarding: the epoch API is spelled out, anything else is the wrapped sampler's."""
    from cmemd.data.dataset import EpochTaggedBatchSampler
    from cmemd.data.sampler import CrossModalityIdentitySampler

    recs = [ImageRecord(f"/x/{p}_{m}_{k}.jpg", p, 1 + (m == "thermal"), m)
            for p in range(3) for m in ("visible", "thermal") for k in range(2)]
    inner = CrossModalityIdentitySampler(recs, 2, 1, seed=3)
    tagged = EpochTaggedBatchSampler(inner)
    tagged.set_epoch(2)
    assert tagged.epoch == inner.epoch == 2 and tagged.num_batches == inner.num_batches
    assert tagged.batch_size == inner.batch_size and tagged.state_dict() == inner.state_dict()
    with pytest.raises(AttributeError):
        tagged.pids  # noqa: B018  (the sampler's own attribute: reach it as tagged.sampler.pids)
    assert tagged.sampler.pids == inner.pids
