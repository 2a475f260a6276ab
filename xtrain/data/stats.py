"""Intensity statistics of a volume: exact percentiles, the fill value, histogram peaks.

They are stored in the store's attributes and later in model.pt; ``xtrain.data.normalise``
turns them into the normalisation x_norm = (x - p0_5) / (p99_5 - p0_5), so the bulk of the
data lies in [0, 1] whatever the scanner's units (uint16 counts or float32 phase values).
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


# ----------------------------------------------------------------------------- whole volumes (Dask graphs)

FILL_SHARE = 0.01  # a single value holding >= 1 % of the voxels, far above its neighbours, is a fill value
FILL_SPIKE = 20.0  # ... "far above": >= 20x the largest count of the 3 values on either side (integer data)
PERCENTILES = (0.5, 50.0, 99.5)


def _sortable(x: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the values' order (float32: IEEE bits with the sign folded; int32: offset)."""
    if x.dtype == np.float32:
        bits = x.view(np.uint32)
        return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    if x.dtype.kind == "i":
        return (x.astype(np.int64) + 2**31).astype(np.uint32)
    return x.astype(np.uint32)


def _from_key(key: int, dtype: np.dtype) -> float:
    k = np.uint32(key)
    if dtype == np.float32:
        bits = k & np.uint32(0x7FFFFFFF) if k & np.uint32(0x80000000) else ~k
        return float(np.array([bits], np.uint32).view(np.float32)[0])
    if dtype.kind == "i":
        return float(int(k) - 2**31)
    return float(k)


def _exact(dtype: np.dtype) -> bool:
    return dtype.kind in "ui" and dtype.itemsize <= 2


def _pass_a(block: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    """Per-chunk summary: counts of NaN/Inf/zero, finite min/max, moments, and a histogram
    (exact per value for <= 16-bit integers, else of the top 16 bits of the sortable key)."""
    flat = block.ravel()
    if mask is not None:
        flat = flat[mask.ravel() != 0]
    out: dict[str, Any] = {"n": flat.size}
    if block.dtype.kind == "f":
        finite = np.isfinite(flat)
        out["nan"] = int(np.count_nonzero(np.isnan(flat)))
        out["inf"] = int(flat.size - out["nan"] - np.count_nonzero(finite))
        flat = flat[finite]
    else:
        out["nan"] = out["inf"] = 0
    out["zeros"] = int(np.count_nonzero(flat == 0))
    out["min"] = float(flat.min()) if flat.size else np.inf
    out["max"] = float(flat.max()) if flat.size else -np.inf
    if _exact(block.dtype):
        lo = np.iinfo(block.dtype).min
        out["counts"] = np.bincount((flat.astype(np.int64) - lo), minlength=2 ** (8 * block.dtype.itemsize))
    else:
        nonzero = flat[flat != 0]
        out["counts"] = np.bincount(_sortable(nonzero) >> np.uint32(16), minlength=65536)
        out["sum"] = float(nonzero.sum(dtype=np.float64))
        out["sumsq"] = float(np.dot(nonzero.astype(np.float64), nonzero.astype(np.float64)))
    return out


def _pass_b(block: np.ndarray, mask: np.ndarray | None, prefixes: np.ndarray, fill_zero: bool,
            edges: np.ndarray) -> dict[str, Any]:
    """Second pass for wide dtypes: low 16 bits of keys whose top 16 bits are in ``prefixes``, and a coarse histogram."""
    flat = block.ravel()
    if mask is not None:
        flat = flat[mask.ravel() != 0]
    if block.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if fill_zero:
        flat = flat[flat != 0]
    keys = _sortable(flat)
    high = keys >> np.uint32(16)
    low = {int(p): np.bincount((keys[high == p] & np.uint32(0xFFFF)), minlength=65536) for p in prefixes}
    coarse = np.histogram(np.clip(flat, edges[0], edges[-1]), bins=edges)[0]
    return {"low": low, "coarse": coarse}


def _blocks(volume, mask):
    """Delayed (image block, mask block or None) pairs over the Dask chunks of ``volume.array``."""
    arr = volume.array
    blocks = arr.to_delayed().ravel()
    if mask is None:
        return [(b, None) for b in blocks]
    m = mask.array.rechunk(arr.chunks)
    return list(zip(blocks, m.to_delayed().ravel()))


def _fill_value(counts: np.ndarray, values: np.ndarray, n: int, candidates: list[int]) -> int | None:
    """Index into ``counts`` of a fill value (a spike >= FILL_SHARE and >= FILL_SPIKE x its neighbours)."""
    for i in candidates:
        if i < 0 or i >= counts.size or counts[i] < FILL_SHARE * n:
            continue
        near = np.concatenate([counts[max(i - 3, 0):i], counts[i + 1:i + 4]])
        if counts[i] >= FILL_SPIKE * max(int(near.max()) if near.size else 0, 1):
            return i
    return None


def _first(volume, predicate) -> str:
    """Where the first voxel with ``predicate`` lies: '<file> (slice z) at y=.. x=..' (an error path: one more pass)."""
    import dask.array as da

    from .scheduler import compute

    flat = int(compute(da.argmax(predicate(volume.array).ravel()))[0])
    z, y, x = np.unravel_index(flat, volume.shape)
    return f"{volume.where(int(z))} at y={y} x={x}"


def _no_sample(volume) -> Exception:
    from ..errors import NonFiniteError

    return NonFiniteError(f"'{volume.spec}' holds no sample voxels (all fill or outside the mask); check the "
                          "volume and the mask")


def _exact_percentiles(volume, counts, dtype, vmin, sample_n, n, fill, fill_info, wanted) -> dict[str, Any]:
    """Percentiles, moments and coarse histogram of integer data up to 16 bits, from its full histogram ``counts``
    (one bin per value); a detected fill value's bin is dropped first."""
    lo = np.iinfo(dtype).min
    values = np.arange(counts.size) + lo
    if fill and fill_info["value"] is None and sample_n:
        i = _fill_value(counts, values, sample_n, sorted({0 - lo, int(vmin) - lo}))
        if i is not None:
            fill_info = {"value": int(values[i]), "fraction": float(counts[i]) / n}
            counts = counts.copy()
            counts[i] = 0
    total = int(counts.sum())
    if total == 0:
        raise _no_sample(volume)
    cum = np.cumsum(counts)
    pct = {q: float(values[np.searchsorted(cum, q / 100.0 * (total - 1), side="right")]) for q in wanted}
    f64 = values.astype(np.float64)
    mean = float((counts * f64).sum() / total)
    std = float(np.sqrt(max((counts * f64 * f64).sum() / total - mean * mean, 0.0)))
    nz = np.flatnonzero(counts)
    smin, smax = float(values[nz[0]]), float(values[nz[-1]])
    edges = np.linspace(smin, smax if smax > smin else smin + 1.0, HIST_BINS + 1)
    coarse = np.histogram(f64[nz], bins=edges, weights=counts[nz])[0]
    return {"total": total, "pct": pct, "mean": mean, "std": std, "min": smin, "max": smax, "edges": edges,
            "coarse": coarse, "fill": fill_info}


def _radix_percentiles(volume, parts, pairs, counts, dtype, vmin, vmax, zeros, sample_n, n, fill, fill_info,
                       wanted) -> dict[str, Any]:
    """Exact percentiles of wider integers and floats by two-pass radix selection: the top 16 bits of the
    sortable keys from the first pass (``counts``), then a second pass over the blocks for the low 16 bits inside
    the selected bins."""
    import dask

    from .scheduler import compute

    zero_is_fill = bool(fill and fill_info["value"] is None and zeros >= FILL_SHARE * sample_n and sample_n)
    if zero_is_fill:
        fill_info = {"value": 0, "fraction": zeros / n}
    total = int(counts.sum()) + (0 if zero_is_fill else zeros)
    if total == 0:
        raise _no_sample(volume)
    if zeros and not zero_is_fill:  # zeros were kept out of the top-16 histogram: put them back
        counts = counts.copy()
        counts[int(_sortable(np.zeros(1, dtype if dtype.kind == "f" else dtype))[0]) >> 16] += zeros
    cum = np.cumsum(counts)
    targets = {q: int(np.floor(q / 100.0 * (total - 1))) for q in wanted}  # 0-based rank
    prefix = {q: int(np.searchsorted(cum, r, side="right")) for q, r in targets.items()}
    below = {q: int(cum[prefix[q] - 1]) if prefix[q] else 0 for q in wanted}
    approx_lo, approx_hi = _from_key(prefix[0.5] << 16, dtype), _from_key((prefix[99.5] << 16) | 0xFFFF, dtype)
    width = max(approx_hi - approx_lo, 1e-30)
    edges = np.linspace(max(vmin, approx_lo - 0.25 * width), min(vmax, approx_hi + 0.25 * width), HIST_BINS + 1)
    if not edges[-1] > edges[0]:
        edges = np.linspace(edges[0], edges[0] + 1.0, HIST_BINS + 1)
    prefixes = np.unique(list(prefix.values()))
    parts_b = compute(*[dask.delayed(_pass_b)(b, m, prefixes, zero_is_fill, edges) for b, m in pairs])
    pct = {}
    for q in wanted:
        low = np.sum([p["low"][prefix[q]] for p in parts_b], axis=0)
        j = int(np.searchsorted(np.cumsum(low), targets[q] - below[q], side="right"))
        pct[q] = _from_key((prefix[q] << 16) | j, dtype)
    s1, s2 = sum(p["sum"] for p in parts), sum(p["sumsq"] for p in parts)
    mean = s1 / total
    return {"total": total, "pct": pct, "mean": mean, "std": float(np.sqrt(max(s2 / total - mean * mean, 0.0))),
            "min": vmin, "max": vmax, "edges": edges, "coarse": np.sum([p["coarse"] for p in parts_b], axis=0),
            "fill": fill_info}


def volume_stats(volume, mask=None, fill: bool = True, percentiles: tuple[float, ...] = ()) -> dict[str, Any]:
    """Intensity statistics of the *sample* in a ``Volume``, as Dask graphs over its chunks.

    Voxels that are not sample are left out: NaN and a detected fill value (``fill``: a
    constant such as the zeros outside TomoPy's reconstruction circle, holding >= 1 % of
    the voxels and >= 20x its neighbouring values), and with ``mask`` (a ``Volume`` of the
    same shape, non-zero = sample) everything outside it.  Percentiles are exact: integer
    data up to 16 bits from a histogram of every value, wider integers and float32 by a
    two-pass radix selection on the values' sortable 32-bit keys (top 16 bits, then the low
    16 bits inside the selected bins), so one extreme voxel changes nothing but min/max.
    Returns the ``IntensityStats.to_dict`` keys plus ``p50``, ``fill`` {value, fraction},
    ``masked`` and ``q`` {q: value} for the extra ``percentiles``.  Raises ``NonFiniteError`` for Inf, or for NaN that is not a fill.
    """
    from ..errors import NonFiniteError, ShapeMismatchError
    from .scheduler import compute

    import dask

    if mask is not None and tuple(mask.shape) != tuple(volume.shape):
        raise ShapeMismatchError(f"mask '{mask.spec}' has shape {tuple(mask.shape)} but volume '{volume.spec}' has "
                                 f"{tuple(volume.shape)} (Z, Y, X); give the mask of this volume")
    dtype = np.dtype(volume.dtype)
    wanted = tuple(sorted({*PERCENTILES, *percentiles}))
    pairs = _blocks(volume, mask)
    parts = compute(*[dask.delayed(_pass_a)(b, m) for b, m in pairs])
    n = sum(p["n"] for p in parts)
    nan, inf = sum(p["nan"] for p in parts), sum(p["inf"] for p in parts)
    zeros = sum(p["zeros"] for p in parts)
    vmin, vmax = min(p["min"] for p in parts), max(p["max"] for p in parts)
    counts = np.sum([p["counts"] for p in parts], axis=0)
    if inf:
        extra = " (float64 values beyond the float32 range)" if volume.provenance.get("source_dtype") == "float64" else ""
        raise NonFiniteError(f"{_first(volume, np.isinf)} holds {inf} infinite values{extra}; replace them (e.g. with "
                             "the background value) or rescale before using it")
    fill_info: dict[str, Any] = {"value": None, "fraction": 0.0}
    if nan:
        if not fill or nan < FILL_SHARE * n:
            raise NonFiniteError(f"{_first(volume, np.isnan)} holds {nan} nan values ({nan / max(n, 1):.2%} of the "
                                 "voxels, too few to be a masked field of view); replace them (e.g. with the "
                                 "background value)")
        fill_info = {"value": "nan", "fraction": nan / n}
    if _exact(dtype):
        r = _exact_percentiles(volume, counts, dtype, vmin, n - nan, n, fill, fill_info, wanted)
    else:
        r = _radix_percentiles(volume, parts, pairs, counts, dtype, vmin, vmax, zeros, n - nan, n, fill, fill_info,
                               wanted)
    pct, edges = r["pct"], r["edges"]
    return {
        "dtype": dtype.name,
        "count": int(r["total"]),
        "min": float(r["min"]),
        "max": float(r["max"]),
        "mean": float(r["mean"]),
        "std": float(r["std"]),
        "p0_5": pct[0.5],
        "p50": pct[50.0],
        "p99_5": pct[99.5],
        "hist": {"range": [float(edges[0]), float(edges[-1])], "counts": [int(c) for c in r["coarse"]]},
        "fill": r["fill"],
        "masked": mask is not None,
        "percentiles": "exact",
        **({"q": {q: pct[q] for q in percentiles}} if percentiles else {}),
    }


# ----------------------------------------------------------------------------- phase peaks

PEAK_SMOOTH = 0.02  # Gaussian sigma of the histogram smoothing: 2 % of the p0.5..p99.5 range
PEAK_PROMINENCE = 0.05  # a phase peak rises >= 5 % of the highest smoothed count above its surroundings
PEAK_MIN_BINS = 32  # fewer histogram bins inside p0.5..p99.5 cannot resolve three peaks


def histogram_peaks(stats: dict[str, Any], n: int = 3) -> tuple[list[float], str]:
    """Grey values of up to ``n`` phase peaks of a volume's histogram (raw units, ascending), and why fewer.

    ``stats``: a ``volume_stats`` / ``IntensityStats.to_dict`` dict (its 256-bin ``hist``,
    ``p0_5``, ``p99_5``).  The histogram is restricted to p0.5 - 10 % .. p99.5 + 10 % of that
    range (outliers do not count), smoothed with a Gaussian of ``PEAK_SMOOTH`` of the range,
    and its local maxima with a prominence of at least ``PEAK_PROMINENCE`` of the highest
    count are kept (``scipy.signal.find_peaks``), the ``n`` most prominent.  A volume whose
    phases do not show as separate peaks (a crop without nickel, poor contrast) gives
    fewer; the second value then says why ("histogram shows 2 phase peak(s), not 3"; ""
    when ``n`` were found).
    """
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    hist = stats.get("hist")
    if not hist:
        return [], "no intensity histogram"
    counts = np.asarray(hist["counts"], dtype=np.float64)
    edges = np.linspace(float(hist["range"][0]), float(hist["range"][1]), counts.size + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    lo, hi = float(stats["p0_5"]), float(stats["p99_5"])
    width = hi - lo
    keep = (centres >= lo - 0.1 * width) & (centres <= hi + 0.1 * width)
    if width <= 0 or np.count_nonzero(keep) < PEAK_MIN_BINS:
        return [], (f"histogram has only {np.count_nonzero(keep)} bins in p0.5..p99.5 (at least {PEAK_MIN_BINS} "
                    "are needed to resolve the phases)")
    smooth = gaussian_filter1d(counts[keep], sigma=max(PEAK_SMOOTH * width / (edges[1] - edges[0]), 1.0),
                               mode="constant")
    idx, props = find_peaks(smooth, prominence=PEAK_PROMINENCE * smooth.max())
    best = idx[np.argsort(props["prominences"])[::-1][:n]]
    peaks = sorted(float(v) for v in centres[keep][best])
    why = "" if len(peaks) >= n else f"histogram shows {len(peaks)} phase peak(s), not {n}"
    return peaks, why
