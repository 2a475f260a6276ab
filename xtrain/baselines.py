"""Classical segmentation baselines that need no training.

Multi-Otsu picks the thresholds that best split a histogram into ``classes`` groups
(maximum between-class variance).  It is computed from a histogram, never from the raw
voxels: skimage's exhaustive search is O(bins^(classes-1)), so the 65536 values of a uint16
volume are first binned into ``nbins`` (256) bins.  The store attributes already hold such
a histogram (``info.stats["hist"]``), so a whole store can be thresholded without reading it:

    hist = store.info.stats["hist"]
    edges = np.linspace(*hist["range"], len(hist["counts"]) + 1)
    thresholds = multi_otsu_thresholds(hist["counts"], edges)
    labels = apply_thresholds(store.image[z0:z1], thresholds)

Class ids follow intensity order: 0 darkest (pore), 1 (YSZ), 2 brightest (Ni).
"""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_multiotsu

from .errors import InvalidInputError

DEFAULT_BINS = 256


def multi_otsu_thresholds(counts: np.ndarray, edges_or_values: np.ndarray, classes: int = 3) -> np.ndarray:
    """``classes - 1`` increasing thresholds (in intensity units) from a histogram.

    ``edges_or_values``: either the ``len(counts) + 1`` bin edges (as ``np.histogram``
    returns them) or the ``len(counts)`` bin values (centres, or the integer values of an
    exact histogram).
    """
    counts = np.asarray(counts, dtype=np.float64)
    values = np.asarray(edges_or_values, dtype=np.float64)
    if counts.ndim != 1 or values.ndim != 1:
        raise InvalidInputError("multi-Otsu needs a 1D histogram: counts and edges/values must be 1D arrays")
    if values.size == counts.size + 1:
        values = 0.5 * (values[:-1] + values[1:])  # edges -> bin centres
    elif values.size != counts.size:
        raise InvalidInputError(
            f"histogram has {counts.size} counts but {values.size} edges/values; "
            f"give {counts.size + 1} edges or {counts.size} values"
        )
    if classes < 2:
        raise InvalidInputError(f"multi-Otsu needs classes >= 2, got {classes}")
    if np.count_nonzero(counts) < classes:
        raise InvalidInputError(
            f"the histogram has only {np.count_nonzero(counts)} non-empty bins; cannot split it into {classes} classes"
        )
    return np.asarray(threshold_multiotsu(hist=(counts, values), classes=classes), dtype=np.float64)


def apply_thresholds(image: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class id per voxel: the number of thresholds at or below its value (uint8, same shape)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or np.any(np.diff(thresholds) < 0):
        raise InvalidInputError(f"thresholds must be a 1D increasing sequence, got {thresholds.tolist()}")
    # Same convention as skimage (np.digitize): a value equal to a threshold goes to the upper class.
    return np.digitize(np.asarray(image), thresholds).astype(np.uint8)


def otsu_segment(image: np.ndarray, classes: int = 3, nbins: int = DEFAULT_BINS) -> np.ndarray:
    """Multi-Otsu segmentation of a whole (in-memory) image with one global set of thresholds."""
    image = np.asarray(image)
    if image.size == 0:
        raise InvalidInputError("cannot segment an empty image")
    lo, hi = float(image.min()), float(image.max())
    counts, edges = np.histogram(image, bins=nbins, range=(lo, hi if hi > lo else lo + 1.0))
    return apply_thresholds(image, multi_otsu_thresholds(counts, edges, classes=classes))
