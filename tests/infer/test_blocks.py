"""The splitter: block grid, shard alignment, the global tile grid and read boxes."""

from __future__ import annotations

import numpy as np
import pytest

from xtrain.infer.blocks import align_block, block_grid, input_box, plan_tiles, tiles_touching
from xtrain.infer.predict import window_1d


def test_blocks_partition_the_volume_in_z_order():
    shape = (37, 61, 53)
    blocks = block_grid(shape, (16, 32, 32))
    covered = np.zeros(shape, np.int32)
    for b in blocks:
        covered[tuple(slice(a, c) for a, c in b.core)] += 1
    assert (covered == 1).all()
    assert [b.core[0][0] for b in blocks] == sorted(b.core[0][0] for b in blocks)
    assert sum(b.voxels for b in blocks) == np.prod(shape)


@pytest.mark.parametrize("block,unit,expected", [
    ((64, 256, 256), (32, 512, 512), (64, 512, 512)),
    ((10, 20, 30), (8, 16, 16), (16, 32, 32)),
    ((64, 512, 512), (32, 61, 53), (37, 61, 53)),  # clipped to the volume (37, 61, 53)
])
def test_align_block_rounds_up_to_whole_shards(block, unit, expected):
    assert align_block(block, unit, (37, 61, 53) if expected[0] == 37 else (1000, 1000, 1000)) == expected


@pytest.mark.parametrize("n,tile,halo", [(53, 32, 4), (61, 32, 0), (20, 32, 4), (256, 256, 16), (1, 8, 2)])
def test_tile_grid_covers_the_axis_inside_the_volume(n, tile, halo):
    t, starts = plan_tiles(n, tile, halo)
    assert starts[0] == 0 and starts[-1] + t == n and (np.diff(starts) <= tile - 2 * halo).all()
    # the grid is global: the tiles touching a range are a subset of it, never shifted
    sub = tiles_touching(starts, t, n // 3, n // 2 + 1)
    assert set(sub.tolist()) <= set(starts.tolist()) and len(sub) >= 1


def test_input_box_holds_the_core_its_tiles_and_2p5d_slices():
    shape = (37, 61, 53)
    core = ((16, 32), (32, 61), (0, 32))
    box = input_box(core, shape, (0,), tile=32, stride=24, context=1)
    assert box[0] == (15, 33)  # +-1 slice for 3-channel 2.5D input
    assert box[1][0] <= 32 and box[1][1] == 61 and box[2][0] == 0 and box[2][1] >= 32
    # at the volume border the neighbour slice is mirrored inside, never read outside
    assert input_box(((0, 16), (0, 61), (0, 53)), shape, (0,), 32, 24, 1)[0] == (0, 17)


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
def test_windows_are_positive_and_peak_in_the_middle(kind):
    w = window_1d(32, kind)
    assert w.min() > 0 and w.max() == 1 and np.allclose(w, w[::-1]) and w[0] < 0.05


@pytest.mark.parametrize("n,tile,halo", [(501, 512, 16), (501, 256, 16), (1024, 512, 16), (53, 32, 4), (61, 32, 4),
                                         (250, 256, 16), (7, 8, 2), (1000, 100, 0)])
def test_planned_tiles_are_the_fewest_equal_tiles_that_cover_the_axis(n, tile, halo):
    from xtrain.infer.blocks import plan_tiles

    size, starts = plan_tiles(n, tile, halo)
    assert size <= tile and starts[0] == 0 and starts[-1] + size == n
    if len(starts) > 1:
        assert (size - np.diff(starts) >= 2 * halo).all()  # neighbours overlap by >= 2 * halo
    # no fewer tiles of length <= tile can cover n with that overlap
    k = len(starts)
    assert k == 1 or (k - 1) * tile - (k - 2) * 2 * halo < n
    if n <= tile:
        assert (size, list(starts)) == (n, [0])  # a plane up to the tile is one tile


def test_a_501_plane_is_one_512_tile_not_nine():
    from xtrain.infer.blocks import plan_tiles

    assert plan_tiles(501, 512, 16) == (501, [0])
    size, starts = plan_tiles(501, 256, 16)
    assert len(starts) == 3 and size == 189  # 567 voxels of work per axis instead of 3 x 256 = 768
