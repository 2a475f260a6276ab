"""Sparse labels in: label slices matched to image slices by number, and the class ids they give.

    labels = open_labels("scan/labels", image, label_map={1: 0, 2: 1, 3: 2}, num_classes=3, unlabelled=0)
    labels.ids          # dask.array (Z, Y, X) uint8 class ids of the image's shape, IGNORE where unlabelled
    labels.z            # image z of each label slice (None: one label slice per image slice, in order)

Users have labels in two shapes, and both work:

* **A label volume of the image's shape** (TIFF stack, HDF5, Zarr / OME-Zarr label image, an
  xtrain store) in which one raw value means "not labelled" (``unlabelled``: napari's Labels layer
  writes 0 for unpainted voxels).  Painted planes normal to z, y or x and partial planes
  (scribbles) are all just voxels of it.
* **A label folder (or glob) holding fewer slices than the image folder**: each label file labels
  the image slice of the same *slice number*; the other image slices are unlabelled.

The slice number of a file is the **last run of digits in its name**, suffix left out, read as
an integer: ``slice__021.tif``, ``SOCprist0021.tiff``, ``scan_v2_0021.tif`` and ``21.tif`` are
all slice 21 (zero padding may differ between the folders).  Which rule pairs label files with
image slices (``match_slices``):

1. as many label files as image files, all numbered alike (every pair has the same number) or
   consistently renumbered (every pair's numbers differ by the same offset, e.g. labels counted
   from 0 and images from 1): by order, as for a dense label folder; the renumbering is logged;
2. as many label files as image files whose names hold no (or no unique) numbers: by order;
3. otherwise by number: every label file and every image file needs a number, numbers are unique
   within each folder, and each label number must be an image number.  Anything else is refused
   with one line naming the file (``InvalidInputError``).

Matching by number needs the images as slice files; a label volume of another shape than the
image is refused (``ShapeMismatchError``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDataError, InvalidInputError, ShapeMismatchError
from .labels import IGNORE
from .volumes import Volume, is_store, label_lut, open_volume

log = logging.getLogger(__name__)

RULE = ("label files are matched to image slices by the last number in their names "
        "(slice__021.tif labels SOCprist0021.tiff)")


def slice_number(path: str | os.PathLike) -> int | None:
    """The slice number of a file name: its last run of digits, the suffix left out; None without digits."""
    runs = re.findall(r"\d+", Path(path).stem)
    return int(runs[-1]) if runs else None


def _duplicate(files: Sequence[Any], numbers: Sequence[int | None]) -> tuple[Any, Any, int] | None:
    seen: dict[int, Any] = {}
    for f, n in zip(files, numbers):
        if n is not None and n in seen:
            return seen[n], f, n
        if n is not None:
            seen[n] = f
    return None


def _span(numbers: Sequence[int]) -> str:
    return f"{min(numbers)}..{max(numbers)}" if numbers else "none"


def match_slices(label_files: Sequence[Any], image_files: Sequence[Any], labels: str, images: str) -> list[int]:
    """The image z of each label file (both lists in their natural order), by the rules of the module docstring.

    Raises ``InvalidInputError`` naming the file: a name without a number, two label (or image)
    files with one number, a label number that matches no image.
    """
    lab = [slice_number(f) for f in label_files]
    img = [slice_number(f) for f in image_files]
    if len(lab) == len(img):
        if None in lab or None in img or _duplicate(label_files, lab) or _duplicate(image_files, img):
            return list(range(len(lab)))  # rule 2: names that carry no slice numbers
        offsets = {a - b for a, b in zip(lab, img)}
        if len(offsets) == 1:  # rule 1
            if offsets != {0}:
                log.warning("label files are numbered %s and image files %s: matched by order (slice %d of the "
                            "labels labels image slice %d)", _span(lab), _span(img), lab[0], img[0])
            return list(range(len(lab)))
    for what, files, numbers, spec in (("label", label_files, lab, labels), ("image", image_files, img, images)):
        for f, n in zip(files, numbers):
            if n is None:
                raise InvalidInputError(
                    f"{what} file '{f}' has no slice number in its name, and '{labels}' holds {len(lab)} slices for "
                    f"{len(img)} images: {RULE}; rename it")
        dup = _duplicate(files, numbers)
        if dup is not None:
            raise InvalidInputError(f"{what} files '{dup[0]}' and '{dup[1]}' have the same slice number {dup[2]} "
                                    f"(in '{spec}'): {RULE}; remove or rename one")
    z_of = {n: z for z, n in enumerate(img)}
    for f, n in zip(label_files, lab):
        if n not in z_of:
            raise InvalidInputError(f"label file '{f}' is slice number {n}, which matches no image of '{images}' "
                                    f"(slices {_span(img)}): {RULE}; remove it or give the images it labels")
    return [z_of[n] for n in lab]


@dataclass
class Labels:
    """The labels of an ingest: ``volume`` the label files as read (N, Y, X), ``view`` its class ids
    (``Volume.as_labels``), ``z`` the image z of each of its slices (None: N = Z, in order), and ``shape``
    the image's (Z, Y, X)."""

    volume: Volume
    view: Volume
    z: list[int] | None
    shape: tuple[int, int, int]
    unlabelled: int | None = None

    @property
    def ids(self):
        """dask.array (Z, Y, X) uint8 class ids, ``IGNORE`` where unlabelled (slices without a label
        file, voxels of the ``unlabelled`` value); a raw value that is not allowed raises
        ``LabelValueError`` naming the file when it is computed."""
        if self.z is None:
            return self.view.array
        import dask
        import dask.array as da

        depth, ny, nx = self.shape
        pieces, here = [], 0
        for i in sorted(range(len(self.z)), key=self.z.__getitem__):
            z = self.z[i]
            if z > here:
                pieces.append(da.full((z - here, ny, nx), IGNORE, dtype=np.uint8))
            plane = dask.delayed(self.view.read)(self.view.planes(i, i + 1))
            pieces.append(da.from_delayed(plane, (1, ny, nx), np.uint8))
            here = z + 1
        if here < depth:
            pieces.append(da.full((depth - here, ny, nx), IGNORE, dtype=np.uint8))
        return da.concatenate(pieces)


def _planes(vol: Volume, image: Volume, labels: str, images: str) -> list[int] | None:
    """The image z of each label slice, or None when the labels are one slice per image slice, in order."""
    lab_files, img_files = vol.provenance.get("files"), image.provenance.get("files")
    folders = isinstance(lab_files, list) and isinstance(img_files, list)
    if vol.shape == image.shape and not folders:
        return None
    if vol.shape[1:] != image.shape[1:] or not isinstance(lab_files, list):
        raise ShapeMismatchError(f"labels '{labels}' have shape {vol.shape} (Z, Y, X) but images '{images}' have "
                                 f"{image.shape}; give the label stack that matches the images")
    if not isinstance(img_files, list):
        raise ShapeMismatchError(
            f"labels '{labels}' hold {vol.shape[0]} slices but images '{images}' are one volume of {image.shape[0]}: "
            "matching label files to image slices by number needs the images as a folder (or glob) of slices; "
            "give those, or a label volume of the image's shape with --unlabelled V for the unlabelled voxels")
    z = match_slices(lab_files, img_files, labels, images)
    return None if z == list(range(image.shape[0])) else z


def open_labels(labels: str | os.PathLike, image: Volume, label_map: Mapping[int, int] | None, num_classes: int,
                unlabelled: int | None = None, allow_missing: bool = False) -> Labels:
    """The labels of ``image`` (headers only, nothing read): a volume of its shape, or label slices matched
    by number (module docstring).  ``label_map``: raw value -> class id; ``unlabelled``: the raw value that
    means "not labelled" (an xtrain store's labels: ``IGNORE``, their own unlabelled id).

    Raises ``InvalidInputError`` (``label_lut``'s refusals; names without numbers, duplicate or unmatched
    numbers) or ``ShapeMismatchError`` (a label volume of another shape).  A label folder's number gaps are
    expected (its files are placed by number: ``open_volume(numbered=True)``); ``allow_missing``: as
    ``open_volume`` for the rest (a label Zarr's absent chunks).
    """
    spec = os.fspath(labels)
    store = is_store(spec)
    try:
        vol = open_volume(spec, dataset="labels" if store else None, allow_missing=allow_missing, numbered=True)
    except MissingDataError as exc:
        # a painted label image (napari, zarr-python) leaves chunks holding only the fill value unwritten; when
        # that value is the unlabelled one, an absent chunk is an unpainted region, not lost data
        fill = getattr(exc, "fill_value", None)
        if fill is None or unlabelled is None or fill != unlabelled:
            raise
        log.info("'%s': absent chunks hold only the fill value %s, which is --unlabelled: read as unlabelled",
                 spec, fill)
        vol = open_volume(spec, dataset="labels" if store else None, allow_missing=True, numbered=True)
    if store and unlabelled is None and label_map is None:
        unlabelled = IGNORE  # a store's ground truth: class ids, IGNORE where unlabelled
    lut = label_lut(vol.raw_dtype, dict(label_map) if label_map else None, num_classes, spec, unlabelled)
    z = _planes(vol, image, spec, image.spec)
    if z is not None:
        log.info("%d label slices of '%s' matched by slice number to image slices z %s", len(z), spec,
                 ", ".join(map(str, z)) if len(z) <= 12 else f"{', '.join(map(str, z[:12]))}, ...")
    return Labels(vol, vol.as_labels(lut), z, tuple(image.shape), unlabelled)
