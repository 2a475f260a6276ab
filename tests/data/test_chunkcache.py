"""The decoded-chunk cache returns exactly what zarr returns, within its byte budget."""

from __future__ import annotations

import numpy as np

from conftest import make_store
from xtrain.data.chunkcache import CachedArray
from xtrain.data.store import Layout, default_layout, open_store, write_store


def test_random_boxes_equal_zarr_reads(tmp_path):
    store = open_store(make_store(tmp_path / "s.zarr", shape=(37, 61, 53)))
    cached = CachedArray(store.image, 1 << 20)
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo = [int(rng.integers(0, n)) for n in store.shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, store.shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.testing.assert_array_equal(cached[box], store.image[box])
    assert cached.hits > cached.misses  # revisited chunks come from the cache


def test_budget_is_respected_and_lru_evicts(tmp_path):
    shape = (12, 40, 40)
    with write_store(tmp_path / "c.zarr", shape, default_layout(shape, (1, 20, 20))) as w:
        arr = w.create("image", shape, np.uint16)
        arr[:] = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    image = open_store(tmp_path / "c.zarr").image
    chunk_bytes = 20 * 20 * 2
    cached = CachedArray(image, 3 * chunk_bytes)
    for z in range(12):
        cached[z:z + 1, 0:40, 0:40]  # 4 chunks per slice
        assert cached._bytes <= 3 * chunk_bytes
    misses = cached.misses
    cached[11:12, 20:40, 20:40]  # most recently used chunk: a hit
    assert cached.misses == misses
    cached[0:1, 0:20, 0:20]  # long evicted: a miss
    assert cached.misses == misses + 1


def test_zero_budget_reads_through(tmp_path):
    store = open_store(make_store(tmp_path / "s.zarr", shape=(5, 9, 7)))
    cached = CachedArray(store.image, 0)
    np.testing.assert_array_equal(cached[0:5, 0:9, 0:7], store.image[:])
    assert cached.hits == cached.misses == 0


def test_sampler_items_identical_with_and_without_cache(tiny_store):
    import torch

    from xtrain.config import DataConfig
    from xtrain.data.sampler import RandomPatches

    cached = RandomPatches(tiny_store, DataConfig(patch=32, slices=3, axis="any", cache_mb=8), (0, 30), seed=1)
    direct = RandomPatches(tiny_store, DataConfig(patch=32, slices=3, axis="any", cache_mb=0), (0, 30), seed=1)
    for i in range(40):
        a, b = cached[i], direct[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _sharded(tmp_path, shape=(37, 61, 53)):
    """Image of ``shape`` in 1 x 16 x 16 chunks inside 8 x 32 x 32 shards (odd sizes: partial shards)."""
    with write_store(tmp_path / "sh.zarr", shape, Layout((1, 16, 16), (8, 32, 32))) as w:
        w.create("image", shape, np.uint16)[:] = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    return open_store(tmp_path / "sh.zarr").image


def test_read_unit_is_the_shard_only_when_the_region_fits(tmp_path):
    from xtrain.data.chunkcache import read_unit

    image = _sharded(tmp_path)
    plane = 61 * 53 * 2  # bytes per z-slice
    # z 3..12 lies in the shards z 0..16: 16 slices must fit
    assert read_unit(image, (3, 12), 16 * plane) == (8, 32, 32)
    assert read_unit(image, (3, 12), 16 * plane - 1) == (1, 16, 16)
    # the last shard is partial: z 32..37 needs only the 5 slices that exist
    assert read_unit(image, (33, 37), 5 * plane) == (8, 32, 32)


def test_shard_units_equal_zarr_reads_with_one_miss_per_shard(tmp_path):
    image = _sharded(tmp_path)
    cached = CachedArray(image, 1 << 30, unit=(8, 32, 32))
    rng = np.random.default_rng(1)
    for _ in range(200):
        lo = [int(rng.integers(0, n)) for n in image.shape]
        hi = [int(rng.integers(a + 1, min(a + 20, n) + 1)) for a, n in zip(lo, image.shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.testing.assert_array_equal(cached[box], image[box])
    assert cached.misses <= 5 * 2 * 2  # every shard read at most once (5 x 2 x 2 shards)
    assert cached._bytes == image.nbytes  # and together they hold exactly the volume
