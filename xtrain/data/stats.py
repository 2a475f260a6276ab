"""Intensity statistics computed while streaming a volume, and the normalisation they define.

Training and inference normalise with the same numbers, stored in the store's attributes
and later in model.pt:  x_norm = (x - p0_5) / (p99_5 - p0_5), so the bulk of the data lies
in [0, 1] whatever the scanner's units (uint16 counts or float32 phase values).
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIST_BINS = 256  # coarse histogram kept in the attributes (drift checks, plots, multi-Otsu)
FINE_BINS = 65536  # float data: fine histogram used for the percentiles


class IntensityStats:
    """Accumulate exact moments and a histogram slab by slab.

    Integer data up to 16 bits is histogrammed exactly (one bin per value), so percentiles
    are exact.  Float data needs its value range up front (``value_range``, e.g. from a first
    min/max pass); its percentiles are then exact to 1/65536 of that range.
    """

    def __init__(self, dtype: Any, value_range: tuple[float, float] | None = None):
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.vmin = np.inf
        self.vmax = -np.inf
        if self.dtype.kind in "ui" and self.dtype.itemsize <= 2:
            info = np.iinfo(self.dtype)
            self.lo, self.hi = float(info.min), float(info.max)
            self.counts = np.zeros(int(info.max) - int(info.min) + 1, dtype=np.int64)
            self.exact = True
        else:
            if value_range is None:
                raise ValueError(f"IntensityStats for {self.dtype} needs value_range=(min, max)")
            self.lo, self.hi = float(value_range[0]), float(value_range[1])
            if self.hi <= self.lo:
                self.hi = self.lo + 1.0
            self.counts = np.zeros(FINE_BINS, dtype=np.int64)
            self.exact = False

    def update(self, data: np.ndarray) -> None:
        data = np.asarray(data)
        if data.size == 0:
            return
        flat = data.ravel()
        self.n += flat.size
        f64 = flat.astype(np.float64)
        self.total += float(f64.sum())
        self.total_sq += float(np.dot(f64, f64))
        self.vmin = min(self.vmin, float(flat.min()))
        self.vmax = max(self.vmax, float(flat.max()))
        if self.exact:
            idx = flat.astype(np.int64) - int(self.lo)
            self.counts += np.bincount(idx, minlength=self.counts.size)
        else:
            scale = (FINE_BINS - 1) / (self.hi - self.lo)
            idx = np.clip(((f64 - self.lo) * scale).astype(np.int64), 0, FINE_BINS - 1)
            self.counts += np.bincount(idx, minlength=FINE_BINS)

    def _value(self, bin_index: np.ndarray) -> np.ndarray:
        if self.exact:
            return bin_index + self.lo
        return self.lo + (bin_index + 0.5) * (self.hi - self.lo) / FINE_BINS

    def percentile(self, q: float) -> float:
        cum = np.cumsum(self.counts)
        target = q / 100.0 * (cum[-1] - 1)
        return float(self._value(np.searchsorted(cum, target, side="right")))

    def to_dict(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("no data was accumulated")
        mean = self.total / self.n
        std = float(np.sqrt(max(self.total_sq / self.n - mean * mean, 0.0)))
        # coarse histogram over the observed range: rebin the fine one
        lo, hi = self.vmin, self.vmax if self.vmax > self.vmin else self.vmin + 1.0
        centres = self._value(np.arange(self.counts.size))
        nz = self.counts > 0
        coarse, _ = np.histogram(centres[nz], bins=HIST_BINS, range=(lo, hi), weights=self.counts[nz])
        return {
            "dtype": self.dtype.name,
            "count": int(self.n),
            "min": float(self.vmin),
            "max": float(self.vmax),
            "mean": float(mean),
            "std": std,
            "p0_5": self.percentile(0.5),
            "p99_5": self.percentile(99.5),
            "hist": {"range": [float(lo), float(hi)], "counts": [int(c) for c in coarse]},
        }


def normalize(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Map raw intensities to float32 with the 0.5/99.5 percentiles at 0 and 1 (not clipped)."""
    lo, hi = float(stats["p0_5"]), float(stats["p99_5"])
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    return ((np.asarray(x, dtype=np.float32) - np.float32(lo)) * np.float32(scale)).astype(np.float32, copy=False)
