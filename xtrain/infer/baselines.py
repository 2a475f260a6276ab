"""The threshold baselines as predictors: fitted in ``xtrain.evaluate.baselines``, segmented here
through the same plan, runner and writer as a model.

    b = fit_baseline("median-otsu", "soc.zarr", z_range=(0, 200))    # xtrain.evaluate.baselines
    segment_baseline(b, "scan.zarr", "scan-otsu.zarr", clean=True)   # OME-Zarr / ImageJ TIFF / NeXus

``ThresholdPredictor`` has the model ``Predictor``'s contract: ``predict(volume, core)`` -> (K, z,
y, x) float32, here one-hot (a hard segmentation), reading ``input_box(core)``: the core grown by
the baseline's filter reach (1 voxel for the 3x3x3 median, clipped to the volume, where the
median's 'nearest' padding takes over, as for a whole-volume filter), so every voxel equals the
baseline applied to the whole volume, for any block.  ``--clean`` is the same 3x3x3 majority vote
(``postprocess.clean_block``, ties keeping the centre's class).  The output is the segmentation
output of ``write.py``: the input image and a ``prediction`` label image (``.zarr``), with the
baseline (name, thresholds, centres, fit region) and the input in ``xtrain.source``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.layout import default_layout
from ..data.stats import volume_stats
from ..data.store import DEFAULT_CLASSES, check_output
from ..data.volumes import Volume, open_volume
from ..evaluate.baselines import Baseline
from ..geometry import Box, grow
from ..io import writing
from ..stop import never
from .options import SegmentOptions, Settings
from .plan import PredictorInfo, plan
from .postprocess import one_hot
from .predict import PredictionStopped
from .runner import local_resources
from .segmentation import Inputs, execute
from .write import previous_run


class ThresholdPredictor:
    """A fitted ``Baseline`` with the ``Predictor`` contract: one-hot (K, z, y, x) float32 of a core."""

    hard = True  # one-hot: --clean votes on the labels (postprocess.clean_block)

    def __init__(self, baseline: Baseline, num_classes: int):
        self.baseline, self.num_classes = baseline, num_classes

    def input_box(self, core: Box, shape: tuple[int, int, int]) -> Box:
        """The core grown by the filter's reach (``Baseline.halo``), clipped to the volume."""
        return grow(core, self.baseline.halo, shape)

    def predict(self, volume: Volume, core: Box, should_stop: Callable[[], bool] = never) -> np.ndarray:
        """(K, z, y, x) one-hot class probabilities of ``core`` from ``volume``'s raw grey values."""
        if should_stop():
            raise PredictionStopped("stopped before the block's thresholds")
        box = self.input_box(core, volume.shape)
        labels = self.baseline.predict(volume.read(box))  # (box) uint8, the median (if any) inside the box
        inner = labels[tuple(slice(c0 - b0, c1 - b0) for (c0, c1), (b0, _) in zip(core, box))]
        return one_hot(inner, self.num_classes)


@dataclass(frozen=True)
class BaselineSource:
    """What builds a ``ThresholdPredictor`` in a worker (``runner.Job.predictor``)."""

    baseline: Baseline
    num_classes: int

    def build(self, settings: Settings, device: str = "cpu") -> ThresholdPredictor:
        return ThresholdPredictor(self.baseline, self.num_classes)


def baseline_inputs(baseline: Baseline, vol: Volume, clean: bool) -> Inputs:
    """The plan's and the run's view of ``baseline`` on ``vol`` (raw grey values: thresholds are in
    their units); the output's statistics are a store's own when they leave out a fill value, else
    computed (``volume_stats``)."""
    num_classes = len(baseline.thresholds) + 1
    params = json.dumps(baseline.to_dict(), sort_keys=True, default=str).encode()
    info = PredictorInfo("threshold", baseline.name, num_classes, tuple(vol.classes or DEFAULT_CLASSES),
                         hashlib.sha256(params).hexdigest(), baseline.halo)
    provenance = {"kind": "baseline", "baseline": baseline.to_dict(), "volume": os.fspath(vol.spec),
                  "volume_provenance": vol.provenance, "clean": clean}
    stored = vol.stats
    stats = stored if "fill" in stored else volume_stats(vol)
    return Inputs(BaselineSource(baseline, num_classes), info, vol, provenance, stats)


def segment_baseline(baseline: Baseline, volume: Any, out: str | os.PathLike, slab: int | None = None,
                     overwrite: bool = False, clean: bool = False) -> Path:
    """Segment ``volume`` (store, TIFF stack, any input ``open_volume`` reads, or a ``Volume``) with a
    fitted ``baseline`` into ``out``, block by block (blocks of ``slab`` z-slices, default the output's
    shard depth, rounded up to whole shards).

    ``out``: ``.zarr`` (OME-Zarr: the input image + the ``prediction`` label image, so 'xtrain
    evaluate', napari and the report can use it alone), ``.tif``/``.tiff`` (ImageJ hyperstack) or
    ``.h5``/``.hdf5``/``.nxs`` (NeXus HDF5).  ``clean``: the 3x3x3 majority filter
    (``postprocess.majority_labels``), exact across blocks.  An interrupted run into ``out`` is
    continued (the baseline is deterministic); ``overwrite`` starts over.
    Raises InvalidInputError for another suffix, OutputExistsError for an existing ``out``.
    """
    out = Path(out)
    SegmentOptions().validate(out)
    vol = open_volume(volume)
    check_output(out, overwrite)  # before any work
    depth = slab or default_layout(vol.shape).slab
    options = SegmentOptions(block=(depth, *vol.shape[1:]), axes="z", clean=clean, overwrite=overwrite,
                             resume=not overwrite)
    with writing(out, "the baseline segmentation"):
        previous = previous_run(out, options.resume, options.overwrite)
        inputs = baseline_inputs(baseline, vol, clean)
        return execute(plan(inputs.volume, inputs.info, options, previous, local_resources()), inputs, out)
