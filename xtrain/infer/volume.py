"""The volume to segment: a store or a TIFF stack behind one small read interface.

    vol = open_volume("scan.zarr")          # or a multi-page TIFF / folder of slices / glob
    vol.shape, vol.dtype, vol.stats         # stats: the volume's OWN percentiles (see below)
    x = vol.read(((z0, z1), (y0, y1), (x0, x1)))   # (z, y, x) float32, normalised

Normalisation.  A model was trained on data normalised with the training volume's
0.5/99.5 percentiles.  A new scan has its own intensity scale (another exposure, another
detector, phase values instead of counts), so it is normalised with *its own* percentiles:
x_norm = (x - p0.5_new) / (p99.5_new - p0.5_new).  Both volumes then put the same
material fractions at the same normalised values.  Stores carry these statistics already
(computed at ingest); a TIFF stack gets them from one streaming pass (two for float32: a
min/max pass first, as ingest does), never holding the volume in memory.

``distribution_shift`` says how far the new volume's normalised histogram is from the
training one; segment logs a warning above ``SHIFT_WARN``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data.stats import IntensityStats, normalize
from ..data.store import open_store
from ..data.tiff import TIFF_SUFFIXES, open_stack
from ..errors import InputNotFoundError, InvalidInputError, NonFiniteError
from .blocks import Box

log = logging.getLogger(__name__)

# Wasserstein-1 distance between the two normalised-intensity distributions, in units of
# the p0.5..p99.5 range: 0.1 means the new volume's intensities sit, on average, a tenth of
# the grey range away from where the training data had them.  Different phase fractions of
# the same material give ~0.01-0.05 (tested: a volume and its x2+offset copy give 0);
# a different contrast mechanism or a failed reconstruction gives > 0.1.
SHIFT_WARN = 0.1
_GRID = np.linspace(-0.5, 1.5, 513)  # common normalised-intensity bins for the comparison


@dataclass
class Volume:
    """A (Z, Y, X) volume read a box at a time; picklable (paths only) for Ray workers."""

    path: str
    kind: str  # "store" | "tiff"
    shape: tuple[int, int, int]
    dtype: str
    stats: dict[str, Any]
    voxel_size_nm: float | None = None
    _source: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_source"] = None  # reopened lazily in the worker
        return state

    @property
    def source(self) -> Any:
        if self._source is None:
            self._source = open_store(self.path).image if self.kind == "store" else open_stack(self.path)
        return self._source

    def read_raw(self, box: Box) -> np.ndarray:
        """Raw intensities of ``box``: (z, y, x) in the volume's dtype."""
        (z0, z1), (y0, y1), (x0, x1) = box
        if self.kind == "store":
            return np.asarray(self.source[z0:z1, y0:y1, x0:x1])
        # TIFF slices decode whole; a block narrower than the slice re-decodes it (documented cost)
        return self.source.read(z0, z1)[:, y0:y1, x0:x1]

    def read(self, box: Box) -> np.ndarray:
        """Normalised float32 (z, y, x) of ``box``."""
        return normalize(self.read_raw(box), self.stats)


def open_volume(spec: str | os.PathLike, stats: dict[str, Any] | None = None) -> Volume:
    """Open a store (``*.zarr`` folder) or a TIFF stack; ``stats`` skips the TIFF stats pass (resume)."""
    path = Path(spec)
    if path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").exists()):
        store = open_store(path)
        if "p0_5" not in store.info.stats:
            raise InvalidInputError(f"store '{path}' has no intensity statistics; recreate it with 'xtrain ingest'")
        return Volume(str(path.resolve()), "store", store.shape, str(store.image.dtype), dict(store.info.stats),
                      store.info.voxel_size_nm)
    if path.suffix == ".zarr" and not path.exists():
        raise InputNotFoundError(f"volume '{path}' does not exist; give a store from 'xtrain ingest' or a TIFF stack")
    if path.is_file() and path.suffix.lower() not in TIFF_SUFFIXES:
        raise InvalidInputError(f"volume '{path}' is neither a Zarr store nor a .tif/.tiff stack; ingest or convert it")
    stack = open_stack(spec)
    resolved = str(path.resolve()) if path.exists() else os.fspath(spec)  # a glob stays a glob
    volume = Volume(resolved, "tiff", stack.shape, stack.dtype.name, {}, None, stack)
    volume.stats = stats or stack_stats(volume)
    return volume


def stack_stats(volume: Volume, slab: int = 16) -> dict[str, Any]:
    """Intensity statistics of a TIFF stack in streaming passes of ``slab`` slices."""
    z, y, x = volume.shape
    dtype = np.dtype(volume.dtype)
    value_range = None
    if dtype.kind == "f":  # float needs its range before the histogram pass (see IntensityStats)
        lo, hi = np.inf, -np.inf
        for z0 in range(0, z, slab):
            data = volume.read_raw(((z0, min(z0 + slab, z)), (0, y), (0, x)))
            if not np.isfinite(data).all():
                raise NonFiniteError(f"volume '{volume.path}' holds NaN/Inf in slices {z0}..{min(z0 + slab, z) - 1}; "
                                     "replace them (e.g. with the background value) before segmenting")
            lo, hi = min(lo, float(data.min())), max(hi, float(data.max()))
        value_range = (lo, hi)
    stats = IntensityStats(dtype, value_range)
    for z0 in tqdm(range(0, z, slab), desc="statistics", unit="slab", disable=None, leave=False):
        for plane in volume.read_raw(((z0, min(z0 + slab, z)), (0, y), (0, x))):
            stats.update(plane)  # per slice: update() makes float64 temporaries
    return stats.to_dict()


def _normalised_cdf(stats: dict[str, Any]) -> np.ndarray:
    """CDF of a volume's coarse histogram on the common normalised grid ``_GRID``."""
    counts = np.asarray(stats["hist"]["counts"], dtype=np.float64)
    lo, hi = stats["hist"]["range"]
    edges = np.linspace(lo, hi, counts.size + 1)
    centres = normalize((edges[:-1] + edges[1:]) / 2, stats).astype(np.float64)
    centres = np.clip(centres, _GRID[0], _GRID[-1])  # tails count at the grid's ends
    hist, _ = np.histogram(centres, bins=_GRID, weights=counts)
    return np.cumsum(hist) / max(hist.sum(), 1.0)


def distribution_shift(train_stats: dict[str, Any], new_stats: dict[str, Any]) -> float | None:
    """Wasserstein-1 distance between the normalised intensity distributions (None: no histogram)."""
    if "hist" not in train_stats or "hist" not in new_stats:
        return None
    width = _GRID[1] - _GRID[0]
    return float(np.abs(_normalised_cdf(train_stats) - _normalised_cdf(new_stats)).sum() * width)
