"""Optional clean-up of a segmentation (``segment --clean``, ``baseline --clean``): a 3D majority filter.

    box = grow(core, CLEAN_HALO, shape)                  # predict this box, not just the core
    probs = majority_filter(probs_of_box, box, core, shape)   # (K, z, y, x) of the core
    labels = majority_labels(labels_of_box, box, core, shape) # (z, y, x) uint8 of the core
    probs = clean_block(probs_of_box, box, core, shape, hard) # what segment's runner calls

Why: TPB density is counted from voxel edges where all three phases meet, so isolated wrong
voxels at phase boundaries ("speckles") add TPB edges that are not there.  The filter
replaces every voxel's class probabilities by their mean over its 3 x 3 x 3 neighbourhood
(26-neighbours and itself) and takes the argmax: a soft majority vote.  For hard labels
(``majority_labels``, the baselines) the votes are one-hot, and the centre voxel gets half
an extra vote, so a tie keeps its class.

What it removes and keeps: a voxel whose neighbourhood is mostly another class flips (an
isolated voxel or a one-voxel-thin line in a uniform region); a voxel on a flat interface
keeps 18 of 27 votes and stays; so does a voxel on a straight three-phase junction line
(12 of 27 against 9 and 6).  Corners of regions two voxels wide and sharper are rounded off:
the filter assumes structures larger than 3 voxels, true of the Ni/YSZ/pore grains of the
SOC data (mean grain sizes of tens of voxels).

Blockwise exactness: the filter of a voxel reads only its neighbourhood, so a block predicts
its core grown by ``CLEAN_HALO`` = 1 voxel (clipped to the volume; predictions do not depend
on the block, see predict.py), filters and keeps the core.  Outside the volume, values are
mirrored without repeating the edge (-1 -> 1, the rule of geometry.reflect).  The sums
are three separable 3-tap sums in a fixed order, each voxel's from its own neighbourhood
only, so the output is bit-identical for every block size and worker count (tested).
"""

from __future__ import annotations

import numpy as np

from ..geometry import Box, box_shape, grow, reflect

__all__ = ["CLEAN_HALO", "clean_block", "grow", "majority_filter", "majority_labels", "neighbourhood_mean", "one_hot"]

CLEAN_HALO = 1  # voxels of context each side the 3 x 3 x 3 filter needs


def _with_context(data: np.ndarray, box: Box, core: Box, shape: tuple[int, int, int]) -> np.ndarray:
    """(..., core + 1 each side) from ``data`` (..., box): the volume's values, mirrored outside it."""
    lead = data.ndim - 3
    for d in range(3):
        (c0, c1), (b0, b1) = core[d], box[d]
        idx = reflect(np.arange(c0 - 1, c1 + 1), 0, shape[d])
        if idx.min() < b0 or idx.max() >= b1:
            raise ValueError(f"box {box} does not hold the context of core {core} (grow it by {CLEAN_HALO})")
        data = np.take(data, idx - b0, axis=lead + d)
    return data


def _sum3(a: np.ndarray, axis: int) -> np.ndarray:
    """a[i-1] + a[i] + a[i+1] along ``axis`` (output 2 shorter), in that order."""
    n = a.shape[axis]
    s = [slice(None)] * a.ndim

    def part(lo: int) -> np.ndarray:
        s[axis] = slice(lo, n - 2 + lo)
        return a[tuple(s)]

    return part(0) + part(1) + part(2)


def neighbourhood_mean(data: np.ndarray, box: Box, core: Box, shape: tuple[int, int, int]) -> np.ndarray:
    """Mean over 3 x 3 x 3 neighbourhoods of (..., Z, Y, X) ``data`` given for ``box``: (..., core)."""
    a = _with_context(np.asarray(data, dtype=np.float32), box, core, shape)
    lead = a.ndim - 3
    for d in range(3):
        a = _sum3(a, lead + d)
    return a * np.float32(1.0 / 27.0)


def majority_filter(probs: np.ndarray, box: Box, core: Box, shape: tuple[int, int, int]) -> np.ndarray:
    """(K, *box) class probabilities of ``box`` -> (K, *core) neighbourhood means (argmax: the class).

    ``box`` must contain ``grow(core, CLEAN_HALO, shape)``."""
    return neighbourhood_mean(probs, box, core, shape)


def majority_labels(labels: np.ndarray, box: Box, core: Box, shape: tuple[int, int, int],
                    num_classes: int = 3) -> np.ndarray:
    """(*box) uint8 class ids -> (*core) uint8 majority of each 3 x 3 x 3 neighbourhood (ties: keep the centre)."""
    labels = np.asarray(labels)
    votes = np.zeros((num_classes, *box_shape(core)), np.float32)
    for k in range(num_classes):
        votes[k] = neighbourhood_mean(labels == k, box, core, shape)
    centre = labels[tuple(slice(c0 - b0, c1 - b0) for (c0, c1), (b0, _) in zip(core, box))]
    np.put_along_axis(votes, centre[None].astype(np.int64),
                      np.take_along_axis(votes, centre[None].astype(np.int64), 0) + np.float32(0.5 / 27), 0)
    return votes.argmax(axis=0).astype(np.uint8)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(z, y, x) class ids -> (K, z, y, x) float32 one-hot probabilities (a hard predictor's output)."""
    classes = np.arange(num_classes, dtype=labels.dtype).reshape(-1, 1, 1, 1)
    return (labels[None] == classes).astype(np.float32)


def clean_block(probs: np.ndarray, box: Box, core: Box, shape: tuple[int, int, int], hard: bool = False) -> np.ndarray:
    """``--clean`` of one block: (K, *box) probabilities -> (K, *core).

    Soft predictions (a model's): ``majority_filter``.  Hard (one-hot) ones (the threshold
    baselines'): the same 3 x 3 x 3 vote on their labels (``majority_labels``: ties keep the centre's
    class, which a soft vote of one-hot votes would give to the lowest class id), one-hot again."""
    if not hard:
        return majority_filter(probs, box, core, shape)
    labels = probs.argmax(axis=0).astype(np.uint8)
    return one_hot(majority_labels(labels, box, core, shape, probs.shape[0]), probs.shape[0])
