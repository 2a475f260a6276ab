"""Labels painted in a viewer -> a store of sparse labels that ``xtrain train`` reads.

    ids = painted_ids(layer_values, num_classes=3)          # napari values (class id + 1, 0 unpainted) -> ids
    report = save_painted("scan-labels.zarr", layer_values, image=open_volume("scan.zarr"), classes=[...])
    report.summary()  # "saved 5 200 painted voxels (2 z-planes) into scan-labels.zarr, merged with 11 000 earlier ..."

napari's Labels layer writes 0 for an unpainted voxel, so a layer holds class id + 1 where painted
(``to_layer_values`` gives the same convention for showing a store's labels).  A store holds class
ids with ``IGNORE`` (255) where unlabelled (``xtrain.data.labels``).

Saving never loses labels: into an existing store the painted voxels are *merged* with its ground
truth (painted voxels win; every other labelled voxel stays), the report says how many earlier
labels were kept and how many the painting changed, and the new store replaces the old one only
once it is complete (``write_store``: an interruption leaves the old one as it was).  A new store
gets the image (copied, with its statistics), the classes and the voxel size, so it is a training
store on its own.  Its ``info.labels`` is the census of the merged labels.  The painting is held in
memory (it is a napari layer already); the image is copied slab by slab.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidInputError, LabelValueError, ShapeMismatchError
from .labels import AXES, IGNORE, LabelCensus, census
from .store import open_store, write_store
from .volumes import Volume

log = logging.getLogger(__name__)


def painted_ids(values: Any, num_classes: int) -> np.ndarray:
    """(Z, Y, X) layer values (0 unpainted, class id + 1 painted) -> uint8 class ids, ``IGNORE`` where unpainted.

    Raises ``LabelValueError`` for a value above ``num_classes`` (no such class) or below 0."""
    v = np.asarray(values)
    if v.ndim != 3:
        raise InvalidInputError(f"painted labels must be (Z, Y, X), got shape {v.shape}")
    hi, lo = (int(v.max()), int(v.min())) if v.size else (0, 0)
    if hi > num_classes or lo < 0:
        bad = hi if hi > num_classes else lo
        where = tuple(int(i[0]) for i in np.nonzero(v == bad))
        raise LabelValueError(f"painted value {bad} at (z, y, x) {where} is not a class: paint 1..{num_classes} "
                              f"(class id + 1) or 0 (unlabelled)")
    return np.where(v > 0, v - 1, IGNORE).astype(np.uint8)


def to_layer_values(ids: np.ndarray) -> np.ndarray:
    """uint8 class ids (``IGNORE`` = unlabelled) -> napari layer values: class id + 1, 0 where unlabelled."""
    ids = np.asarray(ids)
    return np.where(ids == IGNORE, 0, ids.astype(np.uint16) + 1).astype(np.uint8)


@dataclass(frozen=True)
class SaveReport:
    """What ``save_painted`` did."""

    out: Path
    painted: int  # voxels painted now
    earlier: int  # labelled voxels the store had before (0: a new store)
    replaced: int  # earlier labels the painting changed to another class
    census: LabelCensus

    def summary(self) -> str:
        planes = ", ".join(f"{len(self.census.painted(a))} {a}" for a in AXES if self.census.painted(a)) or "no whole"
        merged = (f"merged with {self.earlier} earlier labelled voxels ({self.replaced} of them repainted: painted "
                  "voxels win)" if self.earlier else "a new store")
        return (f"saved {self.painted} painted voxels into {self.out} ({merged}); it now holds "
                f"{self.census.labelled} labelled voxels, {planes} planes")


def _check_existing(out: Path, shape: tuple[int, int, int], classes: Sequence[str]):
    old = open_store(out)
    if tuple(old.shape) != tuple(shape):
        raise ShapeMismatchError(f"labels store '{out}' has shape {tuple(old.shape)} but the painted labels have "
                                 f"{tuple(shape)}; save into another store")
    if list(old.info.classes) != list(classes):
        raise InvalidInputError(f"labels store '{out}' has classes {old.info.classes}, the painted labels "
                                f"{list(classes)}; save into another store")
    return old


def save_painted(out: str | os.PathLike, values: Any, *, classes: Sequence[str], image: Volume | None = None,
                 source: dict[str, Any] | None = None) -> SaveReport:
    """Write painted layer values (``painted_ids``' convention) as sparse labels into the store ``out``.

    ``out`` exists: its ground truth is merged with the painting (painted voxels win) and its image kept;
    ``image`` (raw grey values of the same shape) is then not read.  ``out`` new: ``image`` is copied in, with
    its store statistics or ``volume_stats``, and its voxel size.  ``classes``: the class names (the model's).
    ``source``: recorded under ``info.source`` (e.g. the image and model it was painted on).

    Raises ``InvalidInputError`` (nothing painted, other classes), ``LabelValueError``,
    ``ShapeMismatchError``; nothing is written then.
    """
    out = Path(out)
    ids = painted_ids(values, len(classes))
    shape = tuple(int(n) for n in ids.shape)
    painted = ids != IGNORE
    n_painted = int(painted.sum())
    if not n_painted:
        raise InvalidInputError(f"nothing is painted (every voxel is 0); paint labels 1..{len(classes)} first")
    old = _check_existing(out, shape, classes) if out.exists() else None
    if old is None and image is None:
        raise InvalidInputError(f"'{out}' does not exist and no image was given to create it with")
    if old is None and tuple(image.shape) != shape:
        raise ShapeMismatchError(f"image '{image.spec}' has shape {tuple(image.shape)} but the painted labels have "
                                 f"{shape}; paint on this image's grid")
    earlier = replaced = 0
    merged = ids
    if old is not None and old.labels is not None:
        before = old.labels[:]
        known = before != IGNORE
        earlier = int(known.sum())
        replaced = int((known & painted & (before != ids)).sum())
        merged = np.where(painted, ids, before).astype(np.uint8)
    counts = census(merged)
    src = image.raw() if old is None else None
    with write_store(out, shape, overwrite=old is not None) as w:
        img = w.create("image", shape, old.image.dtype if old is not None else src.raw_dtype)
        lab = w.create("labels", shape, np.uint8)
        for sl in w.slabs(shape[0]):
            img[sl] = old.image[sl] if old is not None else src.read(src.planes(sl.start, sl.stop))
            lab[sl] = merged[sl]
        if old is not None:
            w.info.stats, w.info.voxel_size_nm = old.info.stats, old.info.voxel_size_nm
            w.info.source = {**old.info.source, **(source or {}), "kind": "painted"}
        else:
            from .stats import volume_stats

            w.info.stats = src.stats if "p0_5" in src.stats else volume_stats(src)
            w.info.voxel_size_nm = src.voxel_size_nm
            w.info.source = {"kind": "painted", "image": src.spec, **(source or {})}
        w.info.classes = list(classes)
        w.info.labels = counts.to_dict()
    report = SaveReport(out, n_painted, earlier, replaced, counts)
    log.info("%s", report.summary())
    if replaced:
        log.warning("%d earlier labels of '%s' were repainted with another class (the painting wins)", replaced, out)
    return report
