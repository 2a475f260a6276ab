"""Boxes in volume coordinates and the mirror rule at volume borders (dependency-free but numpy).

    box = ((z0, z1), (y0, y1), (x0, x1))     # half-open ranges, volume coordinates
    box_shape(box)                            # (z1 - z0, y1 - y0, x1 - x0)
    grow(box, 1, shape)                       # one voxel more on every side, clipped to the volume
    reflect(np.arange(-2, 3), 0, n)           # [2, 1, 0, 1, 2]: mirrored without repeating the edge

The training sampler, the predictor's 2.5D slices and the clean-up filter all mirror with
``reflect``, so a voxel at the border gets the same context in training and inference.
"""

from __future__ import annotations

import numpy as np

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def box_shape(box: Box) -> tuple[int, int, int]:
    """(z, y, x) extent of ``box``."""
    return tuple(b - a for a, b in box)  # type: ignore[return-value]


def grow(box: Box, halo: int, shape: tuple[int, int, int]) -> Box:
    """``box`` grown by ``halo`` voxels on every side, clipped to a volume of ``shape``."""
    return tuple((max(0, a - halo), min(n, b + halo)) for (a, b), n in zip(box, shape))  # type: ignore[return-value]


def reflect(idx: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mirror integer indices into [lo, hi) without repeating the edge (-1 -> 1), any distance
    (``np.pad(mode="reflect")``'s rule, applied to indices)."""
    n = hi - lo
    if n == 1:
        return np.full_like(idx, lo)
    period = 2 * (n - 1)
    i = np.mod(idx - lo, period)
    return lo + np.where(i >= n, period - i, i)
