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

Fitted baselines (``xtrain baseline``) are fitted on the training region of a store here and
applied to any volume by ``xtrain.infer.baselines.segment_baseline``, block by block through
segment's plan, runner and writer (a ``ThresholdPredictor``):

    b = fit_baseline("median-otsu", "soc.zarr", z_range=(0, 200))
    labels = b.predict(image_block)                     # (Z, Y, X) -> uint8 class ids
    segment_baseline(b, "scan.zarr", "scan-seg.zarr")   # xtrain.infer.baselines: image + labels

* ``otsu``: multi-Otsu on a fine histogram of the training region (exact per-value counts
  for integer data, streamed), cut to its 0.01..99.99 % range (a few hot pixels would
  otherwise squeeze the data into a handful of bins) and rebinned to ``FIT_BINS``.
* ``kmeans``: 1D k-means (Lloyd) on a seeded random subsample of the training region,
  started at the 1/6, 1/2, 5/6 quantiles (deterministic); centres sorted so class 0 is the
  darkest.  Nearest centre = thresholds half-way between neighbouring centres.
* ``median-otsu``: 3x3x3 median filter, then ``otsu`` fitted on the filtered training
  region.  The median is a Dask graph (``dask.array.map_overlap`` with a one-voxel
  overlap), so the result does not depend on the chunking (volume edges: 'nearest'
  padding, as a whole-volume filter does).

Every volume-wide pass of the fit (the median, the fitting histogram) is a Dask graph over the
input's ``xtrain.data.volumes.Volume``, run by ``xtrain.data.scheduler.compute``.

All three reduce to thresholds (+ the median), stored in the output's attributes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from ..errors import InvalidInputError, UnknownNameError

log = logging.getLogger(__name__)

DEFAULT_BINS = 256
BASELINES = ("otsu", "kmeans", "median-otsu")
FIT_BINS = 1024  # multi-Otsu bins for fitting: skimage's 3-class search is O(bins^2) in memory and time
FIT_TRIM = (0.01, 99.99)  # percentiles that bound the fitting histogram
KMEANS_SAMPLE = 200_000


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


# ----------------------------------------------------------------------------- fitted baselines


@dataclass
class Baseline:
    """A fitted classical segmenter: optional 3x3x3 median, then thresholds (class = thresholds below)."""

    name: str
    thresholds: list[float]
    median: bool = False
    centres: list[float] | None = None  # k-means cluster centres (sorted), for the record
    fit: dict[str, Any] = field(default_factory=dict)  # where and how it was fitted

    @property
    def halo(self) -> int:
        """Slices of context each side that ``predict`` needs for an exact result inside a slab."""
        return 1 if self.median else 0

    def filter(self, block: np.ndarray) -> np.ndarray:
        """(Z, Y, X) -> (Z, Y, X): the median if this baseline uses one (edges padded with 'nearest')."""
        return ndimage.median_filter(block, size=3, mode="nearest") if self.median else block

    def predict(self, image_block: np.ndarray) -> np.ndarray:
        """(Z, Y, X) grey values -> (Z, Y, X) uint8 class ids (pass ``halo`` extra slices each side)."""
        block = np.asarray(image_block)
        if block.ndim != 3:
            raise InvalidInputError(f"predict needs a (Z, Y, X) block, got shape {block.shape}")
        return apply_thresholds(self.filter(block), self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "thresholds": list(self.thresholds), "median": self.median,
                "centres": self.centres, "fit": self.fit}


def _median3(block: np.ndarray) -> np.ndarray:
    return ndimage.median_filter(block, size=3, mode="nearest")


def filtered(volume, baseline: "Baseline"):
    """The (Z, Y, X) dask array ``baseline`` thresholds: the volume, or its 3x3x3 median.

    The median overlaps neighbouring chunks by one voxel; at the volume's faces there is no
    overlap and ``median_filter``'s 'nearest' mode pads, so every voxel equals a median of
    the whole volume.
    """
    arr = volume.array
    if not baseline.median:
        return arr
    return arr.map_overlap(_median3, depth=1, boundary="none", dtype=arr.dtype)


def _check_z_range(z_range: tuple[int, int] | None, depth: int, spec: str) -> tuple[int, int]:
    z0, z1 = z_range if z_range is not None else (0, depth)
    if not 0 <= z0 < z1 <= depth:
        raise InvalidInputError(f"fit z range {z0},{z1} is outside '{spec}' (0..{depth}); give 0 <= Z0 < Z1 <= {depth}")
    return int(z0), int(z1)


def _fit_histogram(volume, z_range: tuple[int, int], baseline: Baseline):
    """(counts, edges) of FIT_BINS bins over the FIT_TRIM range of the (filtered) training region."""
    import dask
    import dask.array as da

    from ..data.stats import volume_stats
    from ..data.scheduler import compute
    from ..data.volumes import array_volume

    region = filtered(volume, baseline)[z_range[0]:z_range[1]]
    dtype = np.dtype(volume.dtype)
    if dtype.kind in "ui" and dtype.itemsize <= 2:  # exact per-value counts in one pass
        offset = int(np.iinfo(dtype).min)
        size = 2 ** (8 * dtype.itemsize)
        parts = compute(*[dask.delayed(lambda b: np.bincount(b.ravel().astype(np.int64) - offset, minlength=size))(b)
                          for b in region.to_delayed().ravel()])
        counts = np.sum(parts, axis=0)
        values = np.arange(size, dtype=np.float64) + offset
        cum = np.cumsum(counts)
        lo, hi = (values[np.searchsorted(cum, q / 100.0 * (cum[-1] - 1), side="right")] for q in FIT_TRIM)
        keep = counts > 0
        return np.histogram(values[keep], bins=FIT_BINS, range=(lo, hi if hi > lo else lo + 1.0),
                            weights=counts[keep])
    stats = volume_stats(array_volume(region, spec=f"{volume.spec} (fit region)"), fill=False, percentiles=FIT_TRIM)
    lo, hi = stats["q"][FIT_TRIM[0]], stats["q"][FIT_TRIM[1]]
    counts, edges = da.histogram(region, bins=FIT_BINS, range=(lo, hi if hi > lo else lo + 1.0))
    return compute(counts)[0], np.asarray(edges)


def kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 100) -> np.ndarray:
    """Sorted centres of 1D k-means (Lloyd), started at the (2i+1)/(2k) quantiles: deterministic."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if np.unique(v).size < k:
        raise InvalidInputError(f"k-means needs at least {k} distinct values in the training region")
    centres = np.quantile(v, (2 * np.arange(k) + 1) / (2 * k))
    for _ in range(iterations):
        # in 1D nearest-centre assignment = cuts half-way between sorted centres
        cuts = np.searchsorted(v, 0.5 * (centres[:-1] + centres[1:]))
        groups = np.split(v, cuts)
        new = np.array([g.mean() if g.size else c for g, c in zip(groups, centres)])
        new.sort()
        if np.allclose(new, centres, rtol=0, atol=1e-9 * max(1.0, abs(v[-1]))):
            break
        centres = new
    return new


def _sample(volume, z_range: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """``n`` voxels drawn with a seeded RNG from (at most 16) evenly spaced slices of the region."""
    rng = np.random.default_rng(seed)
    z0, z1 = z_range
    zs = np.unique(np.linspace(z0, z1 - 1, min(16, z1 - z0)).round().astype(int))
    values = np.concatenate([volume.read(volume.planes(int(z), int(z) + 1)).ravel() for z in zs])  # whole slices: cheap reads
    return values if values.size <= n else rng.choice(values, size=n, replace=False)


def fit_baseline(name: str, store: Any, z_range: tuple[int, int] | None = None, seed: int = 0,
                 classes: int = 3) -> Baseline:
    """Fit ``name`` (one of ``BASELINES``) on slices z_range[0] .. z_range[1] - 1 of ``store``'s image.

    ``store``: any volume ``xtrain.data.volumes.open_volume`` reads, or an open ``Volume``.
    """
    from ..data.volumes import open_volume as open_image_volume

    if name not in BASELINES:
        raise UnknownNameError("baseline", name, BASELINES)
    volume = open_image_volume(store)
    z_range = _check_z_range(z_range, volume.shape[0], volume.spec)
    fit = {"source": os.fspath(volume.spec), "z_range": list(z_range)}
    if name == "kmeans":
        sample = _sample(volume, z_range, KMEANS_SAMPLE, seed)
        centres = kmeans_1d(sample, classes)
        thresholds = 0.5 * (centres[:-1] + centres[1:])
        fit.update(sample=int(sample.size), seed=seed)
        b = Baseline(name, [float(t) for t in thresholds], centres=[float(c) for c in centres], fit=fit)
    else:
        b = Baseline(name, [], median=name == "median-otsu", fit=fit)
        counts, edges = _fit_histogram(volume, z_range, b)
        b.thresholds = [float(t) for t in multi_otsu_thresholds(counts, edges, classes)]
        fit.update(bins=FIT_BINS, range=[float(edges[0]), float(edges[-1])])
    log.info("fitted %s on %s z %d..%d: thresholds %s", name, volume.spec, z_range[0], z_range[1] - 1,
             ", ".join(f"{t:.1f}" for t in b.thresholds))
    return b
