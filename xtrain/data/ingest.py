"""Ingest: a raw TIFF stack (and optional label stack) -> a chunked, compressed Zarr store.

Order of work, so that bad input fails fast and never leaves an output behind:

1. cheap checks, nothing read but headers: OUT (exists? --overwrite?), both stacks
   (paths, per-slice shape/dtype, truncation), image vs label shape, label map vs classes;
2. float32 images only: one min/max pass over the data, which also finds NaN/Inf, because
   the streaming histogram needs the value range before the first slab;
3. the write, slab by slab (one shard layer of z at a time), through ``write_store``:
   image slabs as they are, label slabs mapped to class ids, intensity statistics
   accumulated on the way.  Peak memory is one slab whatever the volume size.  Any error
   here (a label value outside the map, a slice that fails to decode) removes the
   temporary store, so OUT is never created.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..errors import InvalidInputError, LabelValueError, NonFiniteError, ShapeMismatchError
from .stats import IntensityStats
from .store import DEFAULT_CLASSES, check_output, default_layout, write_store
from .tiff import TiffStack, open_stack

log = logging.getLogger(__name__)

_UNMAPPED = 255  # lookup-table entry for raw label values that are not in the map


def _label_lut(label_map: Mapping[int, int] | None, classes: Sequence[str], stack: TiffStack) -> np.ndarray:
    """Lookup table raw label value -> class id (``_UNMAPPED`` where the value is not allowed).

    Without a map the raw values must already be class ids 0..len(classes)-1.
    """
    if stack.dtype.kind != "u":
        raise InvalidInputError(
            f"label stack '{stack.spec}' has dtype {stack.dtype}; labels must be uint8 or uint16 integer images"
        )
    if len(classes) >= _UNMAPPED:
        raise InvalidInputError(f"{len(classes)} classes given; at most {_UNMAPPED - 1} are supported")
    n_raw = np.iinfo(stack.dtype).max + 1
    lut = np.full(n_raw, _UNMAPPED, dtype=np.uint8)
    mapping = dict(label_map) if label_map else {i: i for i in range(len(classes))}
    for raw, cls in mapping.items():
        if not 0 <= cls < len(classes):
            raise InvalidInputError(
                f"--label-map sends {raw} to class {cls}, but there are {len(classes)} classes "
                f"({','.join(classes)}): use class ids 0..{len(classes) - 1} or pass --classes"
            )
        if not 0 <= raw < n_raw:
            raise InvalidInputError(
                f"--label-map key {raw} can never occur in {stack.dtype} labels '{stack.spec}'; "
                f"use raw values 0..{n_raw - 1}"
            )
        lut[raw] = cls
    return lut


def _map_labels(raw: np.ndarray, lut: np.ndarray, stack: TiffStack, z0: int) -> np.ndarray:
    """(n, Y, X) raw label slab -> (n, Y, X) uint8 class ids; LabelValueError at the first bad value."""
    ids = lut[raw]
    bad = ids == _UNMAPPED
    if bad.any():
        z, y, x = (int(v[0]) for v in np.nonzero(bad))
        value = int(raw[z, y, x])
        valid = ",".join(str(v) for v in np.flatnonzero(lut != _UNMAPPED))
        raise LabelValueError(
            f"label value {value} at {stack.where(z0 + z)} y={y} x={x} is not a declared label; "
            f"valid values: {valid} (set them with --label-map RAW:CLASS,...)"
        )
    return ids


def _value_range(stack: TiffStack, slab: int) -> tuple[float, float]:
    """Min/max of a float stack, and the check for NaN/Inf, in one pass before any write."""
    lo, hi = np.inf, -np.inf
    for z0 in tqdm(range(0, len(stack), slab), desc="range", unit="slab", disable=None, leave=False):
        block = stack.read(z0, min(z0 + slab, len(stack)))  # (n, Y, X)
        finite = np.isfinite(block)
        if not finite.all():
            z, y, x = (int(v[0]) for v in np.nonzero(~finite))
            raise NonFiniteError(
                f"{stack.where(z0 + z)} holds {block[z, y, x]} at y={y} x={x}; "
                "replace NaN/Inf (e.g. with the background value) before ingesting"
            )
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


def _describe(stack: TiffStack) -> str | list[str]:
    """Source entry for the attributes: the multi-page file, or the absolute slice files."""
    if stack.multipage:
        return str(stack.files[0].resolve())
    return [str(f.resolve()) for f in stack.files]


def ingest(
    images: str | os.PathLike,
    out: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    label_map: Mapping[int, int] | None = None,
    chunks: tuple[int, int, int] | None = None,
    voxel_size_nm: float | None = None,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a TIFF stack (+ optional labels) into the store ``out``; returns its path.

    ``images`` / ``labels``: a multi-page TIFF, a folder of slices or a glob (see ``open_stack``).
    ``label_map``: raw label value -> class id, e.g. {0: 0, 128: 1, 255: 2}.
    ``chunks``: chunk shape (Z, Y, X); default thin chunks inside shards (``default_layout``).
    """
    out = check_output(out, overwrite)  # before reading any data
    classes = list(classes) if classes else list(DEFAULT_CLASSES)
    if label_map and labels is None:
        raise InvalidInputError("--label-map was given without --labels; add --labels LABELS or drop the map")

    stack = open_stack(images)  # headers only
    shape = stack.shape  # (Z, Y, X)
    lab_stack: TiffStack | None = None
    lut = None
    if labels is not None:
        lab_stack = open_stack(labels)
        if lab_stack.shape != shape:
            raise ShapeMismatchError(
                f"labels '{labels}' have shape {lab_stack.shape} (Z, Y, X) but images '{images}' have {shape}; "
                "give the label stack that matches the images"
            )
        lut = _label_lut(label_map, classes, lab_stack)

    layout = default_layout(shape, chunks)
    value_range = _value_range(stack, layout.slab) if stack.dtype.kind == "f" else None
    stats = IntensityStats(stack.dtype, value_range)

    started = _dt.datetime.now(_dt.timezone.utc)
    with write_store(out, shape, layout, overwrite) as w:
        image_arr = w.create("image", shape, stack.dtype)
        label_arr = w.create("labels", shape, np.uint8) if lab_stack is not None else None
        with tqdm(total=shape[0], desc=f"ingest {out.name}", unit="slice", disable=None) as bar:
            for sl in w.slabs(shape[0]):
                block = stack.read(sl.start, sl.stop)  # (n, Y, X), n <= layout.slab
                image_arr[sl] = block
                # per z-slice so the float64 temporaries inside update() stay one slice big
                for plane in block:
                    stats.update(plane)
                if label_arr is not None:
                    label_arr[sl] = _map_labels(lab_stack.read(sl.start, sl.stop), lut, lab_stack, sl.start)
                bar.update(sl.stop - sl.start)

        w.info.classes = classes
        w.info.voxel_size_nm = voxel_size_nm
        w.info.stats = stats.to_dict()
        w.info.source = {
            "kind": "tiff",
            "images": _describe(stack),
            "labels": _describe(lab_stack) if lab_stack is not None else None,
            "label_map": {str(k): int(v) for k, v in label_map.items()} if label_map else None,
            "ingested": started.isoformat(timespec="seconds"),
            "xtrain_version": __version__,
        }
    log.info("ingested %d slices of %dx%d %s into %s", shape[0], shape[1], shape[2], stack.dtype, out)
    return out
