"""Compare a predicted label volume with the true labels: overlap scores and microstructure.

    pred = open_label_volume("seg.zarr")                                  # an xtrain store's labels
    truth = open_label_volume("scan/labels", label_map={0: 0, 128: 1, 255: 2})   # a TIFF stack
    result = evaluate(pred, truth, z_range=(205, 250))
    result["overlap"]["per_class"]["ni"]["dice"], result["microstructure"]["ratio"]["tpb"]["density"]
    print(to_json(result))                                                # NaN -> null

Everything is streamed in z-slabs: one (K, K) confusion matrix (whole-volume scores) plus
one small matrix per slice (per-slice Dice, mean +- std along z, as earlier studies quote
it), then ``xtrain.microstructure.analyze`` on each volume.  No volume is ever held whole,
so volumes larger than memory work.

Inputs (``open_label_volume``): an xtrain store (its ``labels`` array), a Zarr group with
a ``labels`` array but no image (a segmentation output), or a TIFF stack / folder / glob
(``xtrain.data.tiff.open_stack``).  ``label_map`` maps raw values to class ids (e.g. 0/128/255
-> 0/1/2); any value outside the map (or, without a map, outside 0..K-1) is a
``LabelValueError`` naming where it is.  ``open_image_volume`` reads grey values the same way.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data.store import DEFAULT_CLASSES
from .errors import CorruptFileError, InputNotFoundError, InvalidInputError, LabelValueError, ShapeMismatchError
from .metrics import ConfusionMatrix, confusion_per_slice, dice_per_class, scores
from .microstructure import DEFAULT_SLAB, analyze

log = logging.getLogger(__name__)

_UNMAPPED = 255  # lookup-table value of raw labels that are not in the map


# ----------------------------------------------------------------------------- readers


class SlabVolume:
    """A (Z, Y, X) volume read in z-slabs: ``shape``, ``dtype``, ``read(z0, z1)``, ``crop(z0, z1)``.

    ``reader(z0, z1)`` returns raw slices of the full source; ``z_offset`` and ``shape``
    select a z-range of it (``crop`` makes such views without reading anything).
    """

    def __init__(self, spec: str, reader, shape: tuple[int, int, int], dtype: np.dtype, *,
                 voxel_size_nm: float | None = None, classes: Sequence[str] | None = None,
                 z_offset: int = 0, info: Mapping[str, Any] | None = None):
        self.spec, self._reader = spec, reader
        self.info = dict(info or {})  # the store's xtrain attributes (stats, source ...), {} for TIFF
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size_nm, self.classes = voxel_size_nm, list(classes) if classes else None
        self.z_offset = z_offset

    def read(self, z0: int, z1: int) -> np.ndarray:
        if not 0 <= z0 <= z1 <= self.shape[0]:
            raise IndexError(f"slices {z0}:{z1} outside a volume of {self.shape[0]} slices")
        return np.asarray(self._reader(self.z_offset + z0, self.z_offset + z1))

    def crop(self, z0: int, z1: int) -> "SlabVolume":
        """The view of slices z0 .. z1 - 1 (a ``z_range``); z indices of errors stay those of the source."""
        if not 0 <= z0 < z1 <= self.shape[0]:
            raise InvalidInputError(
                f"z range {z0},{z1} is outside '{self.spec}' (0..{self.shape[0]}); give 0 <= Z0 < Z1 <= {self.shape[0]}"
            )
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.shape = (z1 - z0, *self.shape[1:])
        out.z_offset = self.z_offset + z0
        return out


class LabelVolume(SlabVolume):
    """Class ids 0..K-1 (uint8) from raw labels through a lookup table; ``image`` if the source has one."""

    def __init__(self, spec: str, reader, shape, dtype, lut: np.ndarray, image: SlabVolume | None = None, **kw):
        super().__init__(spec, reader, shape, dtype, **kw)
        self.lut, self.image = lut, image

    def read(self, z0: int, z1: int) -> np.ndarray:
        raw = super().read(z0, z1)
        ids = self.lut[raw]
        bad = ids == _UNMAPPED
        if bad.any():
            z, y, x = (int(v[0]) for v in np.nonzero(bad))
            valid = ",".join(str(v) for v in np.flatnonzero(self.lut != _UNMAPPED))
            raise LabelValueError(
                f"label value {raw[z, y, x]} at z={self.z_offset + z0 + z} y={y} x={x} of '{self.spec}' is not a "
                f"class; valid raw values: {valid} (map raw values with --label-map RAW:CLASS,...)"
            )
        return ids

    def crop(self, z0: int, z1: int) -> "LabelVolume":
        out = super().crop(z0, z1)
        out.image = self.image.crop(z0, z1) if self.image is not None else None
        return out


def _lut(dtype: np.dtype, label_map: Mapping[int, int] | None, num_classes: int, spec: str) -> np.ndarray:
    """Raw value -> class id table (``_UNMAPPED`` for values not allowed)."""
    if dtype.kind != "u" or dtype.itemsize > 2:
        raise InvalidInputError(f"labels '{spec}' have dtype {dtype}; labels must be uint8 or uint16 class ids")
    n_raw = np.iinfo(dtype).max + 1
    lut = np.full(n_raw, _UNMAPPED, dtype=np.uint8)
    for raw, cls in (dict(label_map) if label_map else {i: i for i in range(num_classes)}).items():
        if not 0 <= cls < num_classes:
            raise InvalidInputError(f"label map sends {raw} to class {cls}; classes are 0..{num_classes - 1}")
        if not 0 <= raw < n_raw:
            raise InvalidInputError(f"label map key {raw} can never occur in {dtype} labels '{spec}'")
        lut[raw] = cls
    return lut


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").exists() or path.suffix == ".zarr")


def _zarr_arrays(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(image or None, labels or None, xtrain attributes) of an xtrain store or segmentation (either layout),
    refusing unfinished ones; "labels" is the ground truth, else the prediction (``Store.labels``)."""
    from .data.store import open_store

    store = open_store(path, require_image=False)
    return store.image, store.labels, store.info.to_dict()


def _zarr_reader(array):
    return lambda z0, z1: array[z0:z1]


def open_image_volume(spec: Any) -> SlabVolume:
    """Grey values of an xtrain store (its ``image``) or a TIFF stack, read lazily (a ``SlabVolume`` passes through)."""
    if isinstance(spec, SlabVolume):
        return spec
    path = Path(spec)
    if not path.exists() and not any(c in str(spec) for c in "*?["):
        raise InputNotFoundError(f"'{spec}' does not exist; give an xtrain store (.zarr) or a TIFF stack/folder")
    if _is_zarr(path):
        image, _, info = _zarr_arrays(path)
        if image is None:
            raise InvalidInputError(f"store '{path}' has no 'image' array; give a store made by 'xtrain ingest'")
        return SlabVolume(str(spec), _zarr_reader(image), image.shape, image.dtype,
                          voxel_size_nm=info.get("voxel_size_nm"), classes=info.get("classes"), info=info)
    from .data.tiff import open_stack

    stack = open_stack(spec)
    return SlabVolume(str(spec), stack.read, stack.shape, stack.dtype)


def open_label_volume(spec: Any, label_map: Mapping[int, int] | None = None,
                      num_classes: int = len(DEFAULT_CLASSES)) -> LabelVolume:
    """Class-id volume (``shape``, ``read(z0, z1)`` -> uint8 (n, Y, X)) from a store, a TIFF stack or an array.

    ``spec``: a ``LabelVolume`` (returned as it is), a (Z, Y, X) integer array, a Zarr store
    with a ``labels`` array, or a TIFF stack (file, folder or glob).  A store's ``image``
    (same shape) becomes ``.image`` for reports.
    """
    if isinstance(spec, LabelVolume):
        return spec
    if isinstance(spec, np.ndarray):
        if spec.ndim != 3:
            raise InvalidInputError(f"a label volume must be 3D (Z, Y, X), got shape {spec.shape}")
        lut = _lut(spec.dtype, label_map, num_classes, "array")
        return LabelVolume("array", _zarr_reader(spec), spec.shape, spec.dtype, lut)
    path = Path(spec)
    if _is_zarr(path):
        image, labels, info = _zarr_arrays(path)
        if labels is None:
            raise InvalidInputError(f"store '{path}' has no 'labels' array; give a store with labels or a segmentation")
        img = None
        if image is not None and tuple(image.shape) == tuple(labels.shape):
            img = SlabVolume(str(spec), _zarr_reader(image), image.shape, image.dtype)
        return LabelVolume(str(spec), _zarr_reader(labels), labels.shape, labels.dtype,
                           _lut(np.dtype(labels.dtype), label_map, num_classes, str(spec)), img,
                           voxel_size_nm=info.get("voxel_size_nm"), classes=info.get("classes"))
    if not path.exists() and not any(c in str(spec) for c in "*?["):
        raise InputNotFoundError(f"'{spec}' does not exist; give an xtrain store (.zarr) or a TIFF stack/folder")
    from .data.tiff import open_stack

    stack = open_stack(spec)
    return LabelVolume(str(spec), stack.read, stack.shape, stack.dtype,
                       _lut(stack.dtype, label_map, num_classes, str(spec)))


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

    cm = ConfusionMatrix(k)
    per_slice = []  # (n, K, K) per slab
    depth = truth.shape[0]
    for z0 in range(0, depth, slab):
        z1 = min(z0 + slab, depth)
        slices = confusion_per_slice(pred.read(z0, z1), truth.read(z0, z1), k)  # (n, K, K)
        cm.merge(slices.sum(axis=0))
        per_slice.append(slices)
    slice_cm = np.concatenate(per_slice) if per_slice else np.zeros((0, k, k), np.int64)
    dice_z = dice_per_class(slice_cm)  # (Z, K)
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        mean_dice_z = np.nanmean(dice_z, axis=1) if len(dice_z) else np.zeros(0)  # NaN classes skipped, as scores()

    z_first = truth.z_offset
    result: dict[str, Any] = {
        "pred": pred.spec,
        "labels": truth.spec,
        "shape": list(truth.shape),
        "z_range": [z_first, z_first + depth],
        "classes": classes,
        "voxel_size_nm": voxel_size_nm,
        "confusion_matrix": cm.matrix.tolist(),
        "overlap": scores(cm.matrix, classes),
        "per_slice": {
            "z": list(range(z_first, z_first + depth)),
            "mean_dice": mean_dice_z.tolist(),
            "dice": {name: dice_z[:, c].tolist() for c, name in enumerate(classes)},
            "summary": {"mean_dice": _mean_std(mean_dice_z),
                        **{name: _mean_std(dice_z[:, c]) for c, name in enumerate(classes)}},
        },
    }
    if microstructure:
        mp = analyze(pred, voxel_size_nm, classes, slab, percolation)
        mt = analyze(truth, voxel_size_nm, classes, slab, percolation)
        result["microstructure"] = {
            "pred": mp,
            "labels": mt,
            "ratio": {key: ratio(mp[key], mt[key]) for key in _RATIO_KEYS if key in mp},
        }
    log.debug("evaluated %s vs %s: mean Dice %.4f", pred.spec, truth.spec, result["overlap"]["mean_dice"])
    return result


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
