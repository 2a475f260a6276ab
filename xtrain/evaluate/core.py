"""Compare a predicted label volume with the true labels: overlap scores and microstructure.

    pred = open_label_volume("seg.zarr")                                  # an xtrain store's labels
    truth = open_label_volume("scan/labels", label_map={0: 0, 128: 1, 255: 2})   # a TIFF stack
    result = evaluate(pred, truth, z_range=(205, 250))
    result["overlap"]["per_class"]["ni"]["dice"], result["microstructure"]["ratio"]["tpb"]["density"]
    print(to_json(result))                                                # NaN -> null

Everything is streamed: one (K, K) confusion matrix (whole-volume scores) plus one small
matrix per slice (per-slice Dice, mean +- std along z, as earlier studies quote it), as a
Dask graph over z-slabs, then ``xtrain.evaluate.microstructure.analyze`` on each volume (a
Dask graph over chunks, and slab-wise percolation).  No volume is ever held whole, so
volumes larger than memory work.

Inputs (``open_label_volume``): anything ``xtrain.data.volumes.open_volume`` reads: an
xtrain store or a segmentation output (their ``labels`` array), a TIFF stack / folder /
glob, HDF5/NeXus, Zarr v2/v3, OME-Zarr.  ``label_map`` maps raw values to class ids (e.g.
0/128/255 -> 0/1/2) through the one lookup table ``xtrain.data.volumes.label_lut``; any value
outside the map (or, without a map, outside 0..K-1) is a ``LabelValueError`` naming where
it is.  ``open_image_volume`` reads grey values the same way.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.labels import IGNORE
from ..data.store import DEFAULT_CLASSES
from ..data.volumes import Volume, array_volume, is_store, label_lut, open_volume
from ..errors import ShapeMismatchError
from .metrics import ConfusionMatrix, confusion_per_slice, dice_per_class, scores
from .microstructure import DEFAULT_SLAB, analyze

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- inputs


def open_image_volume(spec: Any, *, dataset: str | None = None, channel: int | None = None,
                      time: int | None = None) -> Volume:
    """Grey values of any volume ``open_volume`` reads (a ``Volume`` passes through)."""
    return open_volume(spec, dataset=dataset, channel=channel, time=time)


def _store_roles(path: Path) -> tuple[bool, bool, bool]:
    """(has labels, has image, the labels are ground truth) of an xtrain store or segmentation; all False otherwise."""
    from ..data.layout import GROUND_TRUTH
    from ..data.store import open_store

    if not is_store(path):  # another format: open_volume says what is wrong
        return False, False, False
    store = open_store(path, require_image=False)
    return store.labels is not None, store.image is not None, GROUND_TRUTH in store.label_images


def open_label_volume(spec: Any, label_map: Mapping[int, int] | None = None,
                      num_classes: int = len(DEFAULT_CLASSES), *, dataset: str | None = None,
                      unlabelled: int | None = None) -> Volume:
    """Class ids 0..K-1 (uint8) of a store or segmentation (its ``labels``), any other volume, or a (Z, Y, X)
    array: the label view (``Volume.as_labels``) through the one lookup table ``label_lut``.

    A Zarr group with a ``labels`` array (an xtrain store, a segmentation output) gives that
    array, and its ``image`` (same shape) becomes ``.image`` for reports.  A label view is
    returned as it is.  ``unlabelled``: the raw value that means "not labelled", read as
    ``IGNORE``; a store's ground truth holds ``IGNORE`` where unlabelled (sparse labels), so there it
    is ``IGNORE`` unless given.  A prediction has no unlabelled voxels.
    """
    if isinstance(spec, Volume) and spec.lut is not None:
        return spec
    if isinstance(spec, np.ndarray):
        return array_volume(spec).as_labels(label_lut(spec.dtype, label_map, num_classes, "array", unlabelled))
    if isinstance(spec, Volume):
        return spec.as_labels(label_lut(spec.raw_dtype, label_map, num_classes, spec.spec, unlabelled))
    path = Path(spec)
    image = None
    has_labels, has_image, truth = _store_roles(path) if dataset is None else (False, False, False)
    if has_labels:
        dataset = "labels"
        if has_image:
            image = open_volume(spec, dataset="image")
        if truth and unlabelled is None and label_map is None:
            unlabelled = IGNORE
    source = open_volume(spec, dataset=dataset)
    if image is not None and image.shape != source.shape:
        image = None
    return source.as_labels(label_lut(source.raw_dtype, label_map, num_classes, str(spec), unlabelled), image)


# ----------------------------------------------------------------------------- evaluation


def _mean_std(values: np.ndarray) -> dict[str, float]:
    v = values[~np.isnan(values)]
    return {"mean": float(v.mean()) if v.size else math.nan, "std": float(v.std()) if v.size else math.nan}


def ratio(pred: Any, truth: Any) -> Any:
    """PRED / LABELS for every number of two equally nested dicts (NaN where LABELS is 0 or missing)."""
    if isinstance(pred, Mapping):
        return {k: ratio(v, truth.get(k) if isinstance(truth, Mapping) else None) for k, v in pred.items()}
    if isinstance(pred, (int, float)) and isinstance(truth, (int, float)) and not isinstance(pred, bool):
        return float(pred) / float(truth) if truth and not math.isnan(truth) else math.nan
    return math.nan


_RATIO_KEYS = ("fractions", "specific_area", "tpb", "percolation")


def evaluate(pred: Any, truth: Any, *, classes: Sequence[str] | None = None, voxel_size_nm: float | None = None,
             z_range: tuple[int, int] | None = None, slab: int = DEFAULT_SLAB,
             microstructure: bool = True, percolation: bool = True) -> dict[str, Any]:
    """Overlap scores and microstructure of ``pred`` against ``truth`` (anything ``open_label_volume`` takes).

    ``z_range`` (z0, z1): evaluate slices z0 .. z1 - 1 only.  ``voxel_size_nm`` defaults to
    that of the truth store, then of the prediction store; without one, densities are per voxel.
    Returns a dict of plain numbers (NaN where undefined; ``to_json`` writes them as null).

    Sparse truth (``IGNORE`` voxels: a store's sparse labels, ``--unlabelled``): the confusion matrix
    counts labelled voxels only, per-slice Dice is listed for the slices holding labels only, and
    the truth's microstructure (fractions, TPB, percolation) is not computed (it needs every voxel:
    ``result["sparse_labels"]["note"]`` says so); the prediction's still is.
    """
    pred, truth = open_label_volume(pred), open_label_volume(truth)
    if tuple(pred.shape) != tuple(truth.shape):
        raise ShapeMismatchError(
            f"prediction '{pred.spec}' has shape {tuple(pred.shape)} but labels '{truth.spec}' have "
            f"{tuple(truth.shape)}; evaluate a prediction of the same volume"
        )
    if z_range is not None:
        pred, truth = pred.crop(*z_range), truth.crop(*z_range)
    classes = list(classes or truth.classes or pred.classes or DEFAULT_CLASSES)
    k = len(classes)
    if voxel_size_nm is None:
        voxel_size_nm = truth.voxel_size_nm or pred.voxel_size_nm

    cm = ConfusionMatrix(k, ignore_index=IGNORE)
    per_slice = _per_slice_confusion(pred, truth, k, slab)  # list of (n, K, K), in z order
    for slices in per_slice:
        cm.merge(slices.sum(axis=0))
    slice_cm = np.concatenate(per_slice) if per_slice else np.zeros((0, k, k), np.int64)
    z_first, depth = truth.z_offset, truth.shape[0]
    result: dict[str, Any] = {
        "pred": pred.spec,
        "labels": truth.spec,
        "shape": list(truth.shape),
        "z_range": [z_first, z_first + depth],
        "classes": classes,
        "voxel_size_nm": voxel_size_nm,
        "confusion_matrix": cm.matrix.tolist(),
        "overlap": scores(cm.matrix, classes),
        "per_slice": _per_slice_scores(slice_cm, z_first, classes),
    }
    labelled = slice_cm.sum(axis=(1, 2))  # labelled voxels of each slice
    sparse = bool((labelled < truth.shape[1] * truth.shape[2]).any())
    if sparse:
        result["sparse_labels"] = _sparse_note(labelled, truth.shape)
        log.info("%s", result["sparse_labels"]["note"])
    if microstructure:
        mp = analyze(pred, voxel_size_nm, classes, slab, percolation)
        mt = None if sparse else analyze(truth, voxel_size_nm, classes, slab, percolation)
        result["microstructure"] = {
            "pred": mp,
            "labels": mt,
            "ratio": {key: ratio(mp[key], mt[key]) for key in _RATIO_KEYS if key in mp} if mt is not None else None,
        }
    log.debug("evaluated %s vs %s: mean Dice %.4f", pred.spec, truth.spec, result["overlap"]["mean_dice"])
    return result


def _per_slice_scores(slice_cm: np.ndarray, z_first: int, classes: Sequence[str]) -> dict[str, Any]:
    """Dice of every slice holding labels (all of them for dense labels): z, mean and per class, mean +- std."""
    keep = np.flatnonzero(slice_cm.sum(axis=(1, 2)) > 0)
    dice_z = dice_per_class(slice_cm[keep])  # (n, K)
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        mean_dice_z = np.nanmean(dice_z, axis=1) if len(dice_z) else np.zeros(0)  # NaN classes skipped, as scores()
    return {
        "z": [z_first + int(z) for z in keep],
        "mean_dice": mean_dice_z.tolist(),
        "dice": {name: dice_z[:, c].tolist() for c, name in enumerate(classes)},
        "summary": {"mean_dice": _mean_std(mean_dice_z),
                    **{name: _mean_std(dice_z[:, c]) for c, name in enumerate(classes)}},
    }


def _sparse_note(labelled: np.ndarray, shape: Sequence[int]) -> dict[str, Any]:
    """How much of a sparse truth is labelled, and the one line that says its microstructure is not computed."""
    total, n = int(np.prod(shape)), int(labelled.sum())
    slices = int((labelled > 0).sum())
    note = (f"sparse labels ({n} of {total} voxels, {100 * n / max(total, 1):.2g} %, on {slices} of {shape[0]} "
            "z-slices): scores count labelled voxels only; the labels' microstructure (fractions, TPB, "
            "percolation) is not computed, it needs every voxel labelled")
    return {"labelled_voxels": n, "voxels": total, "labelled_slices": slices, "note": note}


def _per_slice_confusion(pred: Volume, truth: Volume, k: int, slab: int) -> list[np.ndarray]:
    """(n, K, K) confusion matrices of every slice (``IGNORE`` truth voxels not counted), as one Dask graph over
    z-slabs of both volumes."""
    import dask

    from ..data.scheduler import compute

    depth = truth.shape[0]
    p, t = pred.array, truth.array
    parts = []
    for z0 in range(0, depth, slab):
        z1 = min(z0 + slab, depth)
        parts.append(dask.delayed(confusion_per_slice)(p[z0:z1], t[z0:z1], k, IGNORE))
    return list(compute(*parts))


class _quiet_nanmean:
    """Silence numpy's 'Mean of empty slice' warning: an all-NaN slice is simply NaN."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _clean(obj: Any) -> Any:
    """NaN/Inf -> None, numpy scalars -> Python, recursively (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(result: Mapping[str, Any], indent: int | None = 2) -> str:
    """The result as strict JSON (NaN written as null)."""
    return json.dumps(_clean(result), indent=indent, allow_nan=False)
