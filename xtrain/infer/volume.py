"""The volume to segment: any input of ``xtrain.data.volumes.open_volume``, read normalised.

    vol = open_volume("scan.h5:/exchange/data", train_stats=ckpt["stats"])
    vol.shape, vol.stats, vol.mapping         # stats: the sample's own (fill value excluded)
    x = vol.read(((z0, z1), (y0, y1), (x0, x1)))   # (z, y, x) float32, normalised

Normalisation (``choose_mapping``).  A model was trained on x_norm = (x - p0.5) / (p99.5 - p0.5)
with the training volume's percentiles.  A new volume's own percentiles depend on what is
around the sample: a crop with almost no nickel has its p99.5 on YSZ, so YSZ would be read
as nickel.  So a new volume *on the training scale* (same dtype, and its own p0.5..p99.5
lies mostly inside the training range) is normalised with the training statistics; any
other volume (another detector, phase values instead of counts) with its own.  Measured on
the synthetic volumes of ``tests/infer/test_normalisation.py``: with training statistics a
crop without nickel keeps its classes; with its own percentiles its YSZ becomes nickel.

Voxels that are not sample never enter the statistics (``xtrain.data.stats.volume_stats``:
NaN or a detected constant fill such as the zeros outside the reconstruction circle, or a
``--mask``), and are given the normalised median of the sample at read time, so the
network sees no artificial edge at the circle.  The mapping is recorded in the output's
attributes; a choice near the threshold logs a warning.

``distribution_shift`` says how far the new volume's normalised histogram is from the
training one; segment logs a warning above ``SHIFT_WARN``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.stats import normalize, volume_stats
from ..data.volumes import Volume as SourceVolume
from ..data.volumes import open_volume as open_source
from ..errors import InvalidInputError
from .blocks import Box

log = logging.getLogger(__name__)

# Wasserstein-1 distance between the two normalised-intensity distributions, in units of
# the p0.5..p99.5 range: 0.1 means the new volume's intensities sit, on average, a tenth of
# the grey range away from where the training data had them.  Different phase fractions of
# the same material give ~0.01-0.05 (tested: a volume and its x2+offset copy give 0);
# a different contrast mechanism or a failed reconstruction gives > 0.1.
SHIFT_WARN = 0.1
_GRID = np.linspace(-0.5, 1.5, 513)  # common normalised-intensity bins for the comparison
TRAIN_SCALE_OVERLAP = 0.5  # fraction of the new p0.5..p99.5 inside the training range: "on the training scale"
UNCERTAIN = (0.35, 0.75)  # overlaps in this band log a warning: the choice could go either way
MAPPINGS = ("auto", "train", "own")


def choose_mapping(own: dict[str, Any], train: dict[str, Any] | None, mode: str = "auto") -> dict[str, Any]:
    """The normalisation of a new volume: {"mode", "lo", "hi", "fill", "fill_to", "overlap", "reason", "uncertain"}.

    ``own``: the volume's ``volume_stats``; ``train``: the model's statistics (None: own).
    ``mode``: "train", "own" or "auto" (training statistics when the dtype matches and at
    least ``TRAIN_SCALE_OVERLAP`` of the volume's p0.5..p99.5 lies in the training range).
    """
    if mode not in MAPPINGS:
        raise InvalidInputError(f"normalisation '{mode}' is not one of {', '.join(MAPPINGS)}")
    lo, hi = float(own["p0_5"]), float(own["p99_5"])
    overlap = None
    uncertain = False
    if train and "p0_5" in train and "p99_5" in train:
        tlo, thi = float(train["p0_5"]), float(train["p99_5"])
        inside = max(0.0, min(hi, thi) - max(lo, tlo))
        overlap = inside / (hi - lo) if hi > lo else float(tlo <= lo <= thi)
    if mode == "auto":
        if overlap is None:
            chosen, reason = "own", "the model has no training statistics"
        elif train.get("dtype") and train["dtype"] != own["dtype"]:
            chosen, reason = "own", f"dtype {own['dtype']} differs from the training data's {train['dtype']}"
        elif overlap >= TRAIN_SCALE_OVERLAP:
            chosen, reason = "train", f"{overlap:.0%} of the volume's grey range lies in the training range"
        else:
            chosen, reason = "own", f"only {overlap:.0%} of the volume's grey range lies in the training range"
        uncertain = overlap is not None and UNCERTAIN[0] <= overlap <= UNCERTAIN[1] and \
            train.get("dtype", own["dtype"]) == own["dtype"]
    else:
        chosen, reason = mode, "asked for"
        if mode == "train" and overlap is None:
            raise InvalidInputError("--normalisation train needs a model with training statistics; use own or auto")
    stats = train if chosen == "train" else own
    lo, hi = float(stats["p0_5"]), float(stats["p99_5"])
    median = float(stats.get("p50", own.get("p50", (lo + hi) / 2)))
    fill = own.get("fill", {}).get("value")
    return {"mode": chosen, "lo": lo, "hi": hi, "fill": fill, "fill_fraction": own.get("fill", {}).get("fraction", 0.0),
            "fill_to": float(normalize(np.float32(median), {"p0_5": lo, "p99_5": hi})), "overlap": overlap,
            "masked": bool(own.get("masked")), "reason": reason, "uncertain": bool(uncertain)}


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


@dataclass
class Volume:
    """A volume to segment: a ``data.volumes.Volume`` read a box at a time, normalised; picklable."""

    source: SourceVolume
    stats: dict[str, Any]
    mapping: dict[str, Any] = field(default_factory=dict)
    mask: SourceVolume | None = None

    @property
    def path(self) -> str:
        return self.source.spec

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.source.shape

    @property
    def dtype(self) -> str:
        return self.source.dtype.name

    @property
    def voxel_size_nm(self) -> float | None:
        return self.source.voxel_size_nm

    def read_raw(self, box: Box) -> np.ndarray:
        """Raw intensities of ``box``: (z, y, x) in the volume's dtype."""
        return self.source.read_box(box)

    def read(self, box: Box) -> np.ndarray:
        """Normalised float32 (z, y, x) of ``box`` (``mapping``; the volume's own statistics if unset)."""
        mapping = self.mapping or choose_mapping(self.stats, None, "own")
        mask = self.mask.read_box(box) if self.mask is not None else None
        return apply_mapping(self.read_raw(box), mapping, mask)


def open_volume(spec: str | os.PathLike, stats: dict[str, Any] | None = None, *, dataset: str | None = None,
                channel: int | None = None, time: int | None = None, mask: str | os.PathLike | None = None,
                train_stats: dict[str, Any] | None = None, normalisation: str = "auto") -> Volume:
    """Open any volume (``xtrain.data.volumes.open_volume``) for segmentation and choose its normalisation.

    ``stats``: the sample statistics of an earlier run (resume: no statistics pass); else
    they are computed (``volume_stats``, a Dask graph; a store's ingest statistics are
    reused when they already exclude a fill value and no mask is given).
    """
    source = open_source(spec, dataset=dataset, channel=channel, time=time)
    mask_vol = open_source(mask) if mask is not None else None
    if stats is None:
        stored = source.stats
        if stored and "fill" in stored and mask_vol is None:
            stats = stored
        else:
            stats = volume_stats(source, mask_vol)
    mapping = choose_mapping(stats, train_stats, normalisation)
    return Volume(source, stats, mapping, mask_vol)


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
