"""Ingest: any volume ``open_volume`` reads (and optional labels) -> a chunked, compressed Zarr store.

Order of work, so that bad input fails fast and never leaves an output behind:

1. cheap checks, nothing read but headers: OUT (exists? --overwrite?), both volumes
   (format, shape, dtype, axes, truncation), image vs label shape, label map vs classes;
2. the sample statistics (``volume_stats``: a Dask graph over the image's chunks, fill
   value and NaN/Inf detected, exact percentiles);
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
from ..errors import InvalidInputError, ShapeMismatchError
from .stats import volume_stats
from .store import DEFAULT_CLASSES, check_output, default_layout, write_store
from .scheduler import compute
from .volumes import Volume, is_store, label_lut, map_labels, open_volume

log = logging.getLogger(__name__)

def _describe(vol: Volume) -> Any:
    """Source entry for the attributes: the file, or the absolute slice files."""
    return vol.provenance.get("files", vol.spec)


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
) -> Path:
    """Convert a volume (+ optional labels) into the store ``out``; returns its path.

    ``images`` / ``labels``: anything ``xtrain.data.volumes.open_volume`` reads (TIFF file,
    folder or glob, HDF5/NeXus, Zarr, OME-Zarr, a store); ``dataset``/``channel``/``time``
    pick the image volume inside it.  ``mask``: non-zero = sample, for the statistics only.
    ``label_map``: raw label value -> class id, e.g. {0: 0, 128: 1, 255: 2}.
    ``chunks``: chunk shape (Z, Y, X); default thin chunks inside shards (``default_layout``).
    """
    out = check_output(out, overwrite)  # before reading any data
    classes = list(classes) if classes else list(DEFAULT_CLASSES)
    if label_map and labels is None:
        raise InvalidInputError("--label-map was given without --labels; add --labels LABELS or drop the map")

    stack = open_volume(images, dataset=dataset, channel=channel, time=time)  # headers only
    shape = stack.shape  # (Z, Y, X)
    lab_stack: Volume | None = None
    lut = None
    mask_vol = open_volume(mask) if mask is not None else None
    if labels is not None:
        lab_stack = open_volume(labels, dataset="labels" if is_store(labels) else None)
        if lab_stack.shape != shape:
            raise ShapeMismatchError(
                f"labels '{labels}' have shape {lab_stack.shape} (Z, Y, X) but images '{images}' have {shape}; "
                "give the label stack that matches the images"
            )
        lut = label_lut(lab_stack.dtype, label_map, len(classes), str(labels))

    layout = default_layout(shape, chunks)
    stats = volume_stats(stack, mask_vol)  # Dask graph; NaN/Inf and the fill value found before any write
    image = stack.array
    lab = lab_stack.array if lab_stack is not None else None

    started = _dt.datetime.now(_dt.timezone.utc)
    with write_store(out, shape, layout, overwrite) as w:
        image_arr = w.create("image", shape, stack.raw_dtype)
        label_arr = w.create("labels", shape, np.uint8) if lab_stack is not None else None
        with tqdm(total=shape[0], desc=f"ingest {out.name}", unit="slice", disable=None) as bar:

            def write(img: np.ndarray, raw: np.ndarray | None, sl: slice) -> int:
                """One shard layer: every shard written once, whole (tasks never share a shard)."""
                image_arr[sl] = img
                if label_arr is not None:
                    label_arr[sl] = map_labels(raw, lut, lab_stack, sl.start)
                bar.update(sl.stop - sl.start)
                return sl.stop - sl.start

            # one Dask graph: source chunks are read once even when two shard layers share them
            compute(*[dask.delayed(write)(image[sl], lab[sl] if lab is not None else None, sl)
                      for sl in w.slabs(shape[0])])

        w.info.classes = classes
        w.info.voxel_size_nm = voxel_size_nm if voxel_size_nm is not None else stack.voxel_size_nm
        w.info.stats = stats
        w.info.source = {
            "kind": stack.kind,
            "images": _describe(stack),
            "labels": _describe(lab_stack) if lab_stack is not None else None,
            "provenance": {"images": {"spec": str(images), **stack.provenance},
                           "labels": {"spec": str(labels), **lab_stack.provenance} if lab_stack is not None else None,
                           "mask": str(mask) if mask is not None else None},
            "label_map": {str(k): int(v) for k, v in label_map.items()} if label_map else None,
            "ingested": started.isoformat(timespec="seconds"),
            "xtrain_version": __version__,
        }
    if stats["fill"]["value"] is not None:
        log.info("fill value %s (%.1f%% of the voxels, e.g. outside the reconstruction circle) left out of the "
                 "statistics", stats["fill"]["value"], 100 * stats["fill"]["fraction"])
    log.info("ingested %d slices of %dx%d %s into %s", shape[0], shape[1], shape[2], stack.dtype, out)
    return out
