"""Which voxels are labelled: the ignore value and the census of labelled voxels per plane and axis.

    IGNORE                                  # 255: the class id of an unlabelled voxel (stores, samplers, losses)
    c = census(labels)                      # labels: (Z, Y, X) uint8 class ids, IGNORE where unlabelled
    c.dense, c.labelled, c.fraction         # every voxel labelled?  how many?  which share?
    c.per_plane["z"][k]                     # labelled voxels in the plane normal to z at index k
    c.painted("z")                          # indices of z-planes labelled (mostly) whole
    census(labels, num_classes=3).per_class # labelled voxels of each class id (ingest warns about a 0)
    c.summary()                             # "labels on 5 of 250 z-planes, 2.0 % of voxels; no labels on y/x planes"
    StoreInfo.labels = c.to_dict()          # recorded in the store's ``xtrain`` attributes

Sparse labels are stored as class ids with ``IGNORE`` for every unlabelled voxel, so a
sampler, a loss (``ignore_index``) or an evaluation never takes an unlabelled voxel for a
class.  Dense labels (every voxel a class id) have no ``IGNORE`` voxel at all.  The census is
one Dask graph over the label array (three sums of ``labels != IGNORE``), so it never holds the
volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IGNORE = 255  # unlabelled: the losses' ignore_index (xtrain.train.losses.IGNORE_INDEX is the same value)
AXES = ("z", "y", "x")
PAINTED = 0.5  # a plane whose labelled share is at least this was painted (whole or nearly), not scribbled on


@dataclass(frozen=True)
class LabelCensus:
    """Labelled voxels per plane along each axis of a (Z, Y, X) label volume."""

    shape: tuple[int, int, int]
    per_plane: dict[str, list[int]]  # axis -> labelled voxels of each plane normal to it (len Z, Y or X)
    per_class: list[int] | None = None  # labelled voxels of each class id 0..K-1 (census(..., num_classes=K))

    @property
    def labelled(self) -> int:
        return int(sum(self.per_plane["z"]))

    @property
    def total(self) -> int:
        return int(np.prod(self.shape))

    @property
    def fraction(self) -> float:
        return self.labelled / max(self.total, 1)

    @property
    def dense(self) -> bool:
        """Every voxel is labelled (the classic store: no ``IGNORE`` voxel)."""
        return self.labelled == self.total

    def plane_size(self, axis: str) -> int:
        z, y, x = self.shape
        return {"z": y * x, "y": z * x, "x": z * y}[axis]

    def painted(self, axis: str, min_fraction: float = PAINTED) -> list[int]:
        """Indices of the planes normal to ``axis`` of which at least ``min_fraction`` is labelled."""
        size = self.plane_size(axis)
        return [i for i, n in enumerate(self.per_plane[axis]) if n and n >= min_fraction * size]

    def touched(self, axis: str) -> list[int]:
        """Indices of the planes normal to ``axis`` holding any labelled voxel."""
        return [i for i, n in enumerate(self.per_plane[axis]) if n]

    def summary(self) -> str:
        """One line for people: where the labels are and how many, e.g. for ingest's log."""
        if self.dense:
            return f"dense labels: all {self.total} voxels labelled"
        share = f"{100 * self.fraction:.2g} % of voxels"
        painted = {a: self.painted(a) for a in AXES}
        parts = [f"{len(p)} of {self.shape[AXES.index(a)]} {a}-planes" for a, p in painted.items() if p]
        if parts:
            others = [a for a in AXES if not painted[a]]
            tail = f"; no labels on {'/'.join(others)} planes" if others else ""
            return f"labels on {', '.join(parts)}, {share}{tail}"
        # scribbles: report the axis whose planes hold them most tightly
        axis = min(AXES, key=lambda a: len(self.touched(a)) / self.shape[AXES.index(a)])
        n = len(self.touched(axis))
        return f"partial labels (scribbles) on {n} of {self.shape[AXES.index(axis)]} {axis}-planes, {share}"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "labelled": self.labelled, "dense": self.dense,
                "per_plane": {a: list(map(int, v)) for a, v in self.per_plane.items()},
                **({"per_class": list(map(int, self.per_class))} if self.per_class is not None else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelCensus":
        per_class = d.get("per_class")
        return cls(tuple(int(n) for n in d["shape"]), {a: [int(n) for n in d["per_plane"][a]] for a in AXES},
                   [int(n) for n in per_class] if per_class is not None else None)


def census(labels: Any, num_classes: int | None = None) -> LabelCensus:
    """The census of a (Z, Y, X) label volume (numpy, dask or zarr array of class ids, ``IGNORE`` = unlabelled),
    as one Dask graph run by ``xtrain.data.scheduler.compute``; with ``num_classes`` K also the labelled
    voxels of each class id 0..K-1 (``per_class``), in the same pass."""
    import dask.array as da

    from .scheduler import compute

    arr = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks=getattr(labels, "chunks", "auto"))
    if arr.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {tuple(arr.shape)}")
    known = arr != IGNORE  # summed as int64 without an int64 copy of the volume
    classes = [(arr == c).sum(dtype=np.int64) for c in range(num_classes or 0)]
    z, y, x, *per_class = compute(*(known.sum(axis=a, dtype=np.int64) for a in ((1, 2), (0, 2), (0, 1))), *classes)
    return LabelCensus(tuple(int(n) for n in arr.shape), {"z": z.tolist(), "y": y.tolist(), "x": x.tolist()},
                       [int(n) for n in per_class] if num_classes is not None else None)
