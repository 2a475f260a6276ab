"""Normalisation: raw grey values -> the float32 a model was trained on, decided per sample.

    x = normalize(raw, stats)                                   # (x - p0.5) / (p99.5 - p0.5), float32
    vol = normalised_volume(open_volume("scan.h5"), train_stats=ckpt["stats"])   # segment's input
    vol.stats, vol.mapping                                      # the sample's own statistics, the choice
    x = vol.read(((z0, z1), (y0, y1), (x0, x1)))                # (z, y, x) float32, normalised

Normalisation (``choose_mapping``).  A model was trained on x_norm = (x - p0.5) / (p99.5 - p0.5)
with the training volume's percentiles.  A new volume's own percentiles depend on what is
in it: a crop with almost no nickel has its p99.5 on YSZ, so YSZ drifts towards nickel.  The
training statistics are wrong for the same material on another grey scale (another
detector or flux).  The phase peaks of the histogram tell the two apart: where they lie on
the training peaks, the volume is on the training scale (train); where three of them lie on
a line with the training peaks, it is the same material on another scale (peaks: that line
maps them back); otherwise the choice is uncertain and says so.  Measured on the real
volume's held-out slab (``bench/normalisation_choice.py``, docs/measurements.md).

Voxels that are not sample never enter the statistics (``xtrain.data.stats.volume_stats``:
NaN or a detected constant fill such as the zeros outside the reconstruction circle, or a
``--mask``), and are given the normalised median of the sample at read time, so the
network sees no artificial edge at the circle.  The mapping is recorded in the output's
attributes; an uncertain choice logs a warning.

``distribution_shift`` says how far the new volume's normalised histogram is from the
training one; segment logs a warning above ``SHIFT_WARN``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .stats import histogram_peaks, volume_stats

log = logging.getLogger(__name__)

# Wasserstein-1 distance between the two normalised-intensity distributions, in units of
# the p0.5..p99.5 range: 0.1 means the new volume's intensities sit, on average, a tenth of
# the grey range away from where the training data had them.  Different phase fractions of
# the same material give ~0.01-0.05 (tested: a volume and its x2+offset copy give 0);
# a different contrast mechanism or a failed reconstruction gives > 0.1.
SHIFT_WARN = 0.1
_GRID = np.linspace(-0.5, 1.5, 513)  # common normalised-intensity bins for the comparison
TRAIN_SCALE_OVERLAP = 0.5  # fraction of the new p0.5..p99.5 inside the training range: "on the training scale"
UNCERTAIN = (0.35, 0.75)  # without phase peaks, overlaps in this band log a warning: the choice could go either way
# Phase peaks (xtrain.data.stats.histogram_peaks), distances in units of the training p0.5..p99.5 range:
PEAK_MATCH = 0.05  # a peak this close to a training peak lies where it lay in training: half the default
#                    training augmentation's intensity shift (data.intensity_shift = 0.1), so the model has
#                    seen such shifts; a quarter of the closest phase peaks' distance on the real volume
PEAK_FIT = 0.05  # the least-squares line through 3 peak pairs misses one by more: the peaks are not the same phases
MAPPINGS = ("auto", "train", "own", "peaks")


def peak_fit(own: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Match a volume's phase peaks to the training ones: a linear grey map and how well it fits.

    Returns {"peaks", "train_peaks"} (raw grey values), "offsets" (each peak's distance to the
    nearest training peak, in units of the training p0.5..p99.5 range), and when both show
    three peaks "gain", "offset" (the least-squares line ``train_peak = gain * peak + offset``),
    "residual" (its largest miss, same units); "why" is "" or the reason no map was fitted.
    """
    peaks, why = histogram_peaks(own)
    tpeaks, twhy = histogram_peaks(train)
    span = float(train["p99_5"]) - float(train["p0_5"]) or 1.0
    out: dict[str, Any] = {"peaks": peaks, "train_peaks": tpeaks, "why": ""}
    out["offsets"] = [min(abs(p - t) for t in tpeaks) / span for p in peaks] if tpeaks else []
    if len(tpeaks) < 3:
        out["why"] = f"the training data's {twhy or 'histogram shows no phase peaks'}"
    elif len(peaks) < 3:
        out["why"] = f"the volume's {why}"
    else:
        gain, offset = np.polyfit(np.asarray(peaks), np.asarray(tpeaks), 1)
        residual = float(np.max(np.abs(gain * np.asarray(peaks) + offset - np.asarray(tpeaks)))) / span
        out.update(gain=float(gain), offset=float(offset), residual=residual)
        if not gain > 0 or residual > PEAK_FIT:
            out["why"] = (f"its peaks {', '.join(f'{p:.6g}' for p in peaks)} do not map linearly onto the training "
                          f"ones {', '.join(f'{t:.6g}' for t in tpeaks)} (largest miss {residual:.3f} of the "
                          f"training range, at most {PEAK_FIT})")
    return out


def choose_mapping(own: dict[str, Any], train: dict[str, Any] | None, mode: str = "auto") -> dict[str, Any]:
    """The normalisation of a new volume: {"mode", "lo", "hi", "fill", "fill_to", "overlap", "peaks", "reason", "uncertain"}.

    ``own``: the volume's ``volume_stats``; ``train``: the model's statistics (None: own).
    ``mode``: "train" (the training p0.5/p99.5), "own" (the volume's), "peaks" (the volume's
    three phase peaks mapped by least squares onto the training peaks, ``peak_fit``; raises
    ``InvalidInputError`` when they cannot be found or fitted), or "auto", set from the
    measurements on the real volume (docs/measurements.md "Normalisation on the real volume",
    ``bench/normalisation_choice.py``):

    * no training statistics, or another dtype: own;
    * three peaks, each within ``PEAK_MATCH`` of a training peak: train (the training scale;
      a mask, hot pixels or a slab of other slices change nothing);
    * three peaks that a line maps onto the training ones (``PEAK_FIT``): peaks (the same
      material on another grey scale: another detector, flux or beamtime);
    * fewer peaks (another phase composition, e.g. a crop without nickel), each on a training
      peak: train (``uncertain`` with a single peak);
    * peaks off the training ones that cannot be mapped: own, ``uncertain`` (not the training
      scale, and the volume's own percentiles move with its phase composition);
    * no histogram peaks to go by (statistics without ``hist``): train when at least
      ``TRAIN_SCALE_OVERLAP`` of the volume's p0.5..p99.5 lies in the training range, else own;
      ``uncertain`` for an overlap in ``UNCERTAIN``.
    """
    if mode not in MAPPINGS:
        raise InvalidInputError(f"normalisation '{mode}' is not one of {', '.join(MAPPINGS)}")
    lo, hi = float(own["p0_5"]), float(own["p99_5"])
    overlap = None
    uncertain = False
    fit = None
    has_train = bool(train and "p0_5" in train and "p99_5" in train)
    if has_train:
        tlo, thi = float(train["p0_5"]), float(train["p99_5"])
        inside = max(0.0, min(hi, thi) - max(lo, tlo))
        overlap = inside / (hi - lo) if hi > lo else float(tlo <= lo <= thi)
        if mode in ("auto", "peaks"):
            fit = peak_fit(own, train)
    if mode == "auto":
        if not has_train:
            chosen, reason = "own", "the model has no training statistics"
        elif train.get("dtype") and train["dtype"] != own["dtype"]:
            chosen, reason = "own", f"dtype {own['dtype']} differs from the training data's {train['dtype']}"
        elif len(fit["train_peaks"]) < 3 or not fit["peaks"]:  # no peaks to go by: the grey-range overlap
            chosen = "train" if overlap >= TRAIN_SCALE_OVERLAP else "own"
            reason = f"{fit['why']}; {overlap:.0%} of the volume's grey range lies in the training range"
            uncertain = UNCERTAIN[0] <= overlap <= UNCERTAIN[1]
        elif not fit["why"] and max(fit["offsets"]) <= PEAK_MATCH:
            chosen, reason = "train", (f"its 3 phase peaks lie on the training ones (largest offset "
                                       f"{max(fit['offsets']):.3f} of the training range)")
        elif not fit["why"]:
            chosen, reason = "peaks", (f"its 3 phase peaks are the training ones on another grey scale (gain "
                                       f"{fit['gain']:.3f}, offset {fit['offset']:.6g})")
        elif len(fit["peaks"]) < 3 and max(fit["offsets"]) <= PEAK_MATCH:
            chosen, reason = "train", (f"{fit['why']}, each on a training peak (largest offset "
                                       f"{max(fit['offsets']):.3f}): another phase composition on the training scale")
            uncertain = len(fit["peaks"]) < 2  # one peak: which phase is it?
        else:
            chosen, reason = "own", (f"the phase peaks cannot tell the grey scale ({fit['why']}; largest offset "
                                     f"from a training peak {max(fit['offsets']):.3f}): not the training scale, and "
                                     "its own percentiles depend on its phase composition")
            uncertain = True
    else:
        chosen, reason = mode, "asked for"
        if mode in ("train", "peaks") and not has_train:
            raise InvalidInputError(f"--normalisation {mode} needs a model with training statistics; use own or auto")
        if mode == "peaks" and fit["why"]:
            raise InvalidInputError(f"--normalisation peaks: {fit['why']}; use --normalisation train or own")
    if chosen == "peaks":  # x_norm = (gain x + offset - tlo) / (thi - tlo) = (x - lo) / (hi - lo)
        gain, offset = fit["gain"], fit["offset"]
        lo, hi = (float(train["p0_5"]) - offset) / gain, (float(train["p99_5"]) - offset) / gain
        median = float(own.get("p50", (lo + hi) / 2))
    else:
        stats = train if chosen == "train" else own
        lo, hi = float(stats["p0_5"]), float(stats["p99_5"])
        median = float(stats.get("p50", own.get("p50", (lo + hi) / 2)))
    fill = own.get("fill", {}).get("value")
    return {"mode": chosen, "lo": lo, "hi": hi, "fill": fill, "fill_fraction": own.get("fill", {}).get("fraction", 0.0),
            "fill_to": float(normalize(np.float32(median), {"p0_5": lo, "p99_5": hi})), "overlap": overlap,
            "peaks": fit, "masked": bool(own.get("masked")), "reason": reason, "uncertain": bool(uncertain)}


def apply_mapping(raw: np.ndarray, mapping: dict[str, Any], mask: np.ndarray | None = None) -> np.ndarray:
    """Raw (z, y, x) -> normalised float32; fill voxels (and voxels outside ``mask``) -> ``fill_to``."""
    x = normalize(raw, {"p0_5": mapping["lo"], "p99_5": mapping["hi"]})
    fill = mapping.get("fill")
    off = None
    if fill == "nan":
        off = np.isnan(raw)
    elif fill is not None:
        off = raw == fill
    if mask is not None:
        off = (mask == 0) if off is None else (off | (mask == 0))
    if off is not None and off.any():
        x[off] = np.float32(mapping["fill_to"])
    return x



def normalize(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Map raw intensities to float32 with the 0.5/99.5 percentiles at 0 and 1 (not clipped)."""
    lo, hi = float(stats["p0_5"]), float(stats["p99_5"])
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    return ((np.asarray(x, dtype=np.float32) - np.float32(lo)) * np.float32(scale)).astype(np.float32, copy=False)


def normalised_volume(volume: Any, *, train_stats: dict[str, Any] | None = None, mode: str = "auto",
                      mask: Any = None, stats: dict[str, Any] | None = None):
    """The normalised view (``Volume.normalised``) of ``volume`` that a model with ``train_stats`` reads.

    ``stats``: the sample statistics of an earlier run (resume: no statistics pass); else they
    are computed (``volume_stats``, a Dask graph; a store's ingest statistics are reused when
    they already exclude a fill value and no ``mask`` is given).  ``mask``: a raw ``Volume`` of
    the same shape, non-zero = sample.  ``mode``: see ``choose_mapping``.
    """
    if stats is None:
        stored = volume.stats
        stats = stored if stored and "fill" in stored and mask is None else volume_stats(volume, mask)
    return volume.normalised(choose_mapping(stats, train_stats, mode), mask, stats)


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
