"""A bounded read-through cache of decoded Zarr chunks.

Why: with zarr-python 3 every read costs about 1.3-2 ms of CPU (event-loop hand-offs and
the shard index) while decoding a 1 x 256 x 256 chunk takes about 0.2 ms.  A training
patch is two reads (image and labels), so reading straight from zarr costs ~4 ms of CPU per
sample, which on a 2-core machine competes with the training step (bench/loader.py).  Random
patches revisit the same chunks many times per epoch, so keeping decoded chunks in a small
LRU cache turns most reads into a numpy copy.  The cache is bounded (``max_bytes``), so the
volume is still never held whole: a volume larger than the cache just gets more misses.

What a miss reads (``read_unit``): one inner chunk, or the whole shard when the shards that
hold the sampled region fit in the cache.  zarr's cost per call is mostly fixed, so one
32 x 512 x 512 shard read costs ~0.7 ms per chunk it holds instead of ~1.9 ms, and the cache
is warm after one read per shard instead of a few thousand chunk reads spread over the
first epochs (bench/loader.py).  A region larger than the cache keeps chunk-sized misses:
whole shards would be evicted before most of them was used.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import product
from typing import Any

import numpy as np


def read_unit(array: Any, z_range: tuple[int, int], max_bytes: int) -> tuple[int, ...]:
    """The box a cache miss reads: the shard if the shards holding ``z_range`` (whole planes)
    fit in ``max_bytes``, else the inner chunk."""
    chunks = tuple(getattr(array, "chunks", array.shape))
    shards = getattr(array, "shards", None)
    if not shards:
        return chunks
    depth = shards[0]
    slices = min(((z_range[1] - 1) // depth + 1) * depth, array.shape[0]) - z_range[0] // depth * depth
    nbytes = slices * array.shape[1] * array.shape[2] * np.dtype(array.dtype).itemsize
    return tuple(shards) if nbytes <= max_bytes else chunks


class CachedArray:
    """``array[box]`` for a 3D zarr.Array through an LRU cache of read units (chunks or shards).

    Only basic slicing with steps of 1 is supported: ``cached[z0:z1, y0:y1, x0:x1]``.
    ``max_bytes=0`` disables caching (every read goes to zarr).  ``unit`` is the box a miss
    reads (a multiple of the inner chunks, see ``read_unit``); default: one inner chunk.
    """

    def __init__(self, array: Any, max_bytes: int, unit: tuple[int, ...] | None = None):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        # cache entries are read units; an in-memory numpy array needs no cache
        self.unit = tuple(unit or getattr(array, "chunks", self.shape))
        self.max_bytes = int(max_bytes) if hasattr(array, "chunks") else 0
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        if self.max_bytes <= 0:
            return np.asarray(self.array[box])
        bounds = [(s.start or 0, self.shape[a] if s.stop is None else s.stop) for a, s in enumerate(box)]
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
        ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(bounds, self.unit)]
        for idx in product(*ranges):
            chunk = self._chunk(idx)
            src, dst = [], []
            for (a, b), i, c in zip(bounds, idx, self.unit):
                lo, hi = max(a, i * c), min(b, (i + 1) * c)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = chunk[tuple(src)]
        return out

    def _chunk(self, idx: tuple[int, ...]) -> np.ndarray:
        chunk = self._cache.get(idx)
        if chunk is not None:
            self._cache.move_to_end(idx)
            self.hits += 1
            return chunk
        self.misses += 1
        box = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, self.unit, self.shape))
        chunk = np.asarray(self.array[box])
        self._cache[idx] = chunk
        self._bytes += chunk.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return chunk
