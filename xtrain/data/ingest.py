"""Ingest: any volume ``open_volume`` reads (and optional labels) -> a chunked, compressed Zarr store.

Order of work, so that bad input fails fast and never leaves an output behind:

1. cheap checks, nothing read but headers: OUT (exists? --overwrite?), both volumes
   (format, shape, dtype, axes, truncation), image vs label shape or label slices matched by
   number (``xtrain.data.sparse``), label map and unlabelled value vs classes;
2. the sample statistics (``volume_stats``: a Dask graph over the image's chunks, fill
   value and NaN/Inf detected, exact percentiles), then the label census (``census``: labelled
   voxels per plane and class; a value outside the map, labels that label no voxel);
3. the write, through ``write_store``: one Dask graph whose tasks each write one shard
   layer of z (image, and labels mapped to class ids), so every shard is written once,
   whole, and source chunks are read once.  Peak memory is a few chunks per thread
   whatever the volume size.  Any error here (a label value outside the map, a slice that
   fails to decode) removes the temporary store, so OUT is never created.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..errors import InvalidInputError
from .stats import volume_stats
from .store import DEFAULT_CLASSES, check_output, default_layout, write_store
from .labels import LabelCensus, census
from .scheduler import compute
from .sparse import Labels, open_labels
from .volumes import Volume, open_volume

log = logging.getLogger(__name__)

def _describe(vol: Volume) -> Any:
    """Source entry for the attributes: the file, or the absolute slice files."""
    return vol.provenance.get("files", vol.spec)


def _census(lab: Labels, spec: str, classes: Sequence[str]) -> LabelCensus:
    """The census of the labels (one Dask graph over them, before anything is written): refuses labels that
    label no voxel, warns about a class that is never labelled, logs the summary."""
    counted = census(lab.ids, num_classes=len(classes))
    if counted.labelled == 0:
        why = f"holds the unlabelled value {lab.unlabelled}" if lab.unlabelled is not None else "is unlabelled"
        raise InvalidInputError(f"labels '{spec}' label no voxel: every voxel {why}; paint some voxels, or check "
                                "--unlabelled")
    for cls, n in enumerate(counted.per_class or []):
        if n == 0:
            log.warning("class '%s' (id %d) is never labelled in '%s': the model cannot learn it; label some of "
                        "its voxels", classes[cls], cls, spec)
    log.info("labels: %s", counted.summary())
    return counted


def _source(stack: Volume, images: Any, lab: Labels | None, labels: Any, mask: Any,
            label_map: Mapping[int, int] | None, unlabelled: int | None, started: _dt.datetime) -> dict[str, Any]:
    """The store's ``source`` attributes: the inputs, their provenance, the label map and when."""
    return {
        "kind": stack.kind,
        "images": _describe(stack),
        "labels": _describe(lab.volume) if lab is not None else None,
        "provenance": {"images": {"spec": str(images), **stack.provenance},
                       "labels": {"spec": str(labels), **lab.volume.provenance} if lab is not None else None,
                       "mask": str(mask) if mask is not None else None},
        "label_map": {str(k): int(v) for k, v in label_map.items()} if label_map else None,
        **({"unlabelled": int(unlabelled)} if unlabelled is not None else {}),
        **({"label_z": lab.z} if lab is not None and lab.z is not None else {}),
        "ingested": started.isoformat(timespec="seconds"),
        "xtrain_version": __version__,
    }


def ingest(
    images: str | os.PathLike,
    out: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    label_map: Mapping[int, int] | None = None,
    chunks: tuple[int, int, int] | None = None,
    voxel_size_nm: float | None = None,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
    dataset: str | None = None,
    channel: int | None = None,
    time: int | None = None,
    mask: str | os.PathLike | None = None,
    unlabelled: int | None = None,
    allow_missing: bool = False,
) -> Path:
    """Convert a volume (+ optional labels) into the store ``out``; returns its path.

    ``images`` / ``labels``: anything ``xtrain.data.volumes.open_volume`` reads (TIFF file,
    folder or glob, HDF5/NeXus, Zarr, OME-Zarr, a store); ``dataset``/``channel``/``time``
    pick the image volume inside it.  ``mask``: non-zero = sample, for the statistics only.
    ``label_map``: raw label value -> class id, e.g. {0: 0, 128: 1, 255: 2}.  ``unlabelled``: the raw
    label value that means "not labelled" (napari's Labels layer: 0), stored as ``IGNORE``.  A label
    folder may hold fewer slices than the image folder: matched by slice number
    (``xtrain.data.sparse``), the other slices unlabelled.  The store records the label census
    (``StoreInfo.labels``) and ingest logs its summary; a class no voxel is labelled with is a warning.
    ``chunks``: chunk shape (Z, Y, X); default thin chunks inside shards (``default_layout``).
    ``allow_missing``: as ``open_volume`` (a foreign Zarr's absent chunks become its fill value in the
    store, a slice folder's number gaps are stacked over; recorded in the store's provenance).
    Missing or damaged input is refused (``MissingDataError`` / ``CorruptFileError``) before
    anything is written.
    """
    out = check_output(out, overwrite)  # before reading any data
    classes = list(classes) if classes else list(DEFAULT_CLASSES)
    if label_map and labels is None:
        raise InvalidInputError("--label-map was given without --labels; add --labels LABELS or drop the map")
    if unlabelled is not None and labels is None:
        raise InvalidInputError(f"--unlabelled {unlabelled} was given without --labels; add --labels LABELS or drop it")

    stack = open_volume(images, dataset=dataset, channel=channel, time=time, allow_missing=allow_missing)  # headers
    shape = stack.shape  # (Z, Y, X)
    mask_vol = open_volume(mask) if mask is not None else None
    lab = open_labels(labels, stack, label_map, len(classes), unlabelled, allow_missing) if labels is not None else None

    layout = default_layout(shape, chunks)
    stats = volume_stats(stack, mask_vol)  # Dask graph; NaN/Inf and the fill value found before any write
    counted = _census(lab, str(labels), classes) if lab is not None else None  # bad label values: before any write
    image = stack.array
    ids = lab.ids if lab is not None else None

    started = _dt.datetime.now(_dt.timezone.utc)
    with write_store(out, shape, layout, overwrite) as w:
        image_arr = w.create("image", shape, stack.raw_dtype)
        label_arr = w.create("labels", shape, np.uint8) if lab is not None else None
        with tqdm(total=shape[0], desc=f"ingest {out.name}", unit="slice", disable=None) as bar:

            def write(img: np.ndarray, class_ids: np.ndarray | None, sl: slice) -> int:
                """One shard layer: every shard written once, whole (tasks never share a shard)."""
                image_arr[sl] = img
                if label_arr is not None:
                    label_arr[sl] = class_ids
                bar.update(sl.stop - sl.start)
                return sl.stop - sl.start

            # one Dask graph: source chunks are read once even when two shard layers share them
            compute(*[dask.delayed(write)(image[sl], ids[sl] if ids is not None else None, sl)
                      for sl in w.slabs(shape[0])])

        w.info.classes = classes
        w.info.voxel_size_nm = voxel_size_nm if voxel_size_nm is not None else stack.voxel_size_nm
        w.info.stats = stats
        w.info.labels = counted.to_dict() if counted is not None else {}
        w.info.source = _source(stack, images, lab, labels, mask, label_map, unlabelled, started)
    if stats["fill"]["value"] is not None:
        log.info("fill value %s (%.1f%% of the voxels, e.g. outside the reconstruction circle) left out of the "
                 "statistics", stats["fill"]["value"], 100 * stats["fill"]["fraction"])
    log.info("ingested %d slices of %dx%d %s into %s", shape[0], shape[1], shape[2], stack.dtype, out)
    return out
