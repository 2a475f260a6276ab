"""The splitter: a volume cut into blocks (the unit of work) and a global grid of 2D tiles.

    blocks = block_grid((Z, Y, X), (64, 512, 512))       # z-major list of Block (core boxes)
    block.core, block.read                               # what a block writes, and reads (plan.py)
    size, starts = plan_tiles(Y, tile=512, halo=16)      # tile length and origins along one axis

Two grids, on purpose independent of each other:

* **Blocks** partition the volume into disjoint cores.  A worker predicts one block and
  writes only its core, so block cores must be aligned to the output's shards (or chunks
  when unsharded): two workers writing parts of one shard would each rewrite the whole
  shard file and one of them would lose its data.  ``align_block`` rounds a requested block
  up to that unit.
* **Tiles** are the 2D windows the model sees.  Their origins are anchored to the volume
  (``plan_tiles``), not to the block, so a voxel is always predicted from the same tiles,
  whichever block it falls into: the output does not depend on the block size at all
  (bit for bit, see predict.py) and has no seams.  A block reads the union of the tiles
  that touch its core (its "halo" in the plane) plus the 2.5D neighbour slices along the
  slicing axis, mirrored at the volume borders.

Boxes are ((z0, z1), (y0, y1), (x0, x1)) half-open ranges in volume coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Box, box_shape, reflect  # the mirror rule training used for its 2.5D slices

__all__ = ["Block", "Box", "align_block", "block_grid", "box_shape", "input_box", "plan_tiles", "reflect",
           "tiles_touching"]


@dataclass(frozen=True)
class Block:
    """One unit of work: grid index (i, j, k), the core box it writes and the box it reads
    (daisy's write and read ROIs; ``read`` is set by ``plan.plan``: the predictor's input box)."""

    index: tuple[int, int, int]
    core: Box
    read: Box | None = None

    @property
    def name(self) -> str:
        """File-name-safe id, used for the completion marker."""
        return "-".join(str(i) for i in self.index)

    @property
    def voxels(self) -> int:
        return int(np.prod(box_shape(self.core)))


def align_block(block: tuple[int, int, int], unit: tuple[int, int, int],
                shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Round ``block`` up to a multiple of ``unit`` (the output shard), clipped to the volume.

    Clipping to the volume keeps the alignment: a block covering a whole axis has only one
    block along it.
    """
    out = []
    for b, u, n in zip(block, unit, shape):
        b = -(-b // u) * u
        out.append(n if b >= n else b)
    return tuple(out)  # type: ignore[return-value]


def block_grid(shape: tuple[int, int, int], block: tuple[int, int, int]) -> list[Block]:
    """Disjoint blocks covering the volume, in z-major order (the order a TIFF sink wants)."""
    ranges = [[(a, min(a + b, n)) for a in range(0, n, b)] for n, b in zip(shape, block)]
    return [
        Block((i, j, k), (rz, ry, rx))
        for i, rz in enumerate(ranges[0])
        for j, ry in enumerate(ranges[1])
        for k, rx in enumerate(ranges[2])
    ]


def plan_tiles(n: int, tile: int, halo: int) -> tuple[int, np.ndarray]:
    """(length, origins) of the tiles along an axis of ``n`` voxels, planned to the axis.

    The fewest equal tiles of at most ``tile`` voxels that cover the axis with neighbours
    overlapping by at least ``2 * halo``: k = ceil((n - 2h) / (tile - 2h)) tiles of length
    ceil((n + 2h (k - 1)) / k), evenly spread from 0 to n - length.  An axis of at most
    ``tile`` voxels is one tile: a 501-voxel axis with tile 512 is one tile, not the three
    256-voxel tiles (768 voxels of work) that a fixed stride of 224 would give.  The plan depends
    on (n, tile, halo) only, never on a block, so output stays block-independent.
    """
    if n <= tile:
        return n, np.zeros(1, dtype=np.int64)
    k = -(-(n - 2 * halo) // (tile - 2 * halo))
    size = -(-(n + 2 * halo * (k - 1)) // k)
    starts = (np.arange(k, dtype=np.int64) * (n - size)) // (k - 1)
    return int(size), starts


def tiles_touching(starts: np.ndarray, t: int, lo: int, hi: int) -> np.ndarray:
    """The tile origins (of length-``t`` tiles) that overlap the range [lo, hi)."""
    return starts[(starts < hi) & (starts + t > lo)]


def input_box(core: Box, shape: tuple[int, int, int], axes: tuple[int, ...], tile: int, stride: int,
             context: int) -> Box:
    """The region a block must read: for each slicing axis, the core +- ``context`` slices
    (mirrored into the volume) along it and the union of the touching tiles across it
    (tiles of ``plan_tiles(n, tile, (tile - stride) // 2)``)."""
    lo = [n for n in shape]
    hi = [0, 0, 0]
    for a in axes:
        for d in range(3):
            c0, c1 = core[d]
            if d == a:
                idx = reflect(np.arange(c0 - context, c1 + context), 0, shape[d])
                first, last = int(idx.min()), int(idx.max()) + 1
            else:
                t, starts = plan_tiles(shape[d], tile, (tile - stride) // 2)
                s = tiles_touching(starts, t, c0, c1)
                first, last = int(s.min()), int(s.max()) + t
            lo[d], hi[d] = min(lo[d], first), max(hi[d], last)
    return tuple(zip(lo, hi))  # type: ignore[return-value]
