"""Training from sparse labels: where the labelled voxels are, and which labelled planes validate.

    census = store_census(store.info.labels)            # LabelCensus of a store, or None when dense
    hold = hold_out(census, region, val_fraction)       # the validation rule (below), with its log line
    index = label_index(labels_volume, census, region, hold.hidden)   # (N, 3) labelled voxels to sample
    index.axis_weights(voxel)                           # labelled voxels in the z/y/x planes through it

A sparse store holds class ids where someone labelled and ``IGNORE`` everywhere else
(``xtrain.data.labels``); its census (``StoreInfo.labels``) counts labelled voxels per plane and
axis.  A store without a census, or whose census says ``dense``, is a dense store and trains
exactly as before.

The validation rule for sparse labels (printed in the training log):

* ``MIN_HOLD_OUT`` (6) or more *painted* planes (planes at least half labelled; any axis) in the
  training region: the planes ``round(val_fraction * n)`` (at least 1), evenly spread over them
  in (axis, index) order, are held out whole.  The model is validated on them (each predicted
  whole, scored on its labelled voxels) and model.pt is the best epoch; their labels never reach
  a training patch.
* fewer painted planes, or only partial labels (scribbles): no hold-out.  Training runs its
  fixed schedule without model selection and model.pt is the last epoch's weights (the EMA
  weights when ``train.ema_decay`` > 0): validating on the labels it trains on would only say
  how well it memorised them.
* an explicit ``data.val_z`` slab is used as before, and must be labelled whole.

The index of labelled voxels is built by reading the label array in z-slabs through the volume
layer, only the planes the census says hold labels: memory is the coordinates (12 bytes a
labelled voxel), never the volume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .labels import AXES, IGNORE, LabelCensus

log = logging.getLogger(__name__)

MIN_HOLD_OUT = 6  # painted planes needed before whole planes are held out for validation
SLAB = 16  # z-planes read at a time while indexing


def store_census(labels: dict[str, Any] | None) -> LabelCensus | None:
    """The label census ``StoreInfo.labels`` of a store, or None for dense labels (no census, or
    ``dense: true``): those train as they always did."""
    if not labels or labels.get("dense", False):
        return None
    return LabelCensus.from_dict(labels)


@dataclass(frozen=True)
class HoldOut:
    """The planes held out for validation (``(axis, index)``) and the log line that says so."""

    planes: tuple[tuple[str, int], ...]
    message: str
    scribbles: bool = False  # partial labels only, no painted plane (the log then suggests the pairwise loss)

    @property
    def hidden(self) -> dict[str, frozenset[int]]:
        """axis -> indices of held-out planes (their labels are hidden from training patches)."""
        return {a: frozenset(i for b, i in self.planes if b == a) for a in AXES}


def painted_planes(census: LabelCensus, region: tuple[int, int]) -> list[tuple[str, int]]:
    """Painted planes (``LabelCensus.painted``) as (axis, index); z-planes only inside ``region``."""
    out = []
    for axis in AXES:
        for i in census.painted(axis):
            if axis != "z" or region[0] <= i < region[1]:
                out.append((axis, i))
    return out


def hold_out(census: LabelCensus, region: tuple[int, int], val_fraction: float, ema: bool = True) -> HoldOut:
    """The validation rule of the module docstring for a sparse store's training ``region`` (z0, z1)."""
    painted = painted_planes(census, region)
    n = len(painted)
    weights = "the last epoch's EMA weights" if ema else "the last epoch's weights"
    if n >= MIN_HOLD_OUT:
        m = max(1, int(round(n * val_fraction)))
        picks = sorted({int((i + 0.5) * n / m) for i in range(m)})
        planes = tuple(painted[i] for i in picks)
        shown = ", ".join(f"{a} {i}" for a, i in planes)
        return HoldOut(planes, f"{n} labelled planes: validating on {len(planes)} held out whole ({shown}), "
                               f"training on the other {n - len(planes)}; model.pt is the best epoch")
    if n:
        what = f"{n} labelled plane{'s' if n > 1 else ''}"
    else:
        touched = {a: len(census.touched(a)) for a in AXES}
        axis = min(AXES, key=lambda a: touched[a] / census.shape[AXES.index(a)] if touched[a] else np.inf)
        what = f"partial labels (scribbles) on {touched[axis]} {axis}-planes"
    return HoldOut((), f"{what}: no validation hold-out (it needs {MIN_HOLD_OUT} whole labelled planes); "
                       f"training runs its fixed schedule and model.pt is {weights}", scribbles=not n)


def check_dense_slab(census: LabelCensus, val: tuple[int, int]) -> None:
    """Refuse a validation slab data.val_z = [z0, z1) that is not labelled whole."""
    size = census.plane_size("z")
    partial = [z for z in range(*val) if census.per_plane["z"][z] != size]
    if partial:
        raise InvalidInputError(f"data.val_z={list(val)} holds unlabelled voxels (z {partial[0]} first); a "
                                "validation slab must be labelled whole: leave data.val_z unset to validate on "
                                "held-out labelled planes (docs/training.md, 'Few labels')")


@dataclass
class LabelIndex:
    """The labelled voxels a sparse store's training patches are drawn around."""

    coords: np.ndarray  # (N, 3) int32 (z, y, x), sorted, none in a held-out plane
    shape: tuple[int, int, int]
    hidden: dict[str, frozenset[int]] = field(default_factory=dict)  # held-out planes: labels never shown
    counts: dict[str, np.ndarray] = field(init=False)  # axis -> labelled voxels of each plane normal to it

    def __post_init__(self):
        self.counts = {a: np.bincount(self.coords[:, i], minlength=self.shape[i]) for i, a in enumerate(AXES)}

    def __len__(self) -> int:
        return len(self.coords)

    def axis_weights(self, voxel: np.ndarray) -> np.ndarray:
        """(3,) labelled voxels of the z-, y- and x-normal planes through ``voxel`` (each >= 1: itself)."""
        return np.array([self.counts[a][int(voxel[i])] for i, a in enumerate(AXES)], dtype=np.float64)


def label_index(labels: Any, census: LabelCensus, region: tuple[int, int],
                hidden: dict[str, frozenset[int]] | None = None) -> LabelIndex:
    """The labelled voxels of ``labels`` (a label ``Volume``) in z ``region``, less those in ``hidden`` planes.

    Reads only the z-planes the census says hold labels, ``SLAB`` at a time (``Volume.read``)."""
    hidden = hidden or {a: frozenset() for a in AXES}
    zs = [z for z in range(*region) if census.per_plane["z"][z] > 0 and z not in hidden.get("z", ())]
    parts = []
    for start in range(0, len(zs), SLAB):
        run = zs[start:start + SLAB]
        block = labels.read(((run[0], run[-1] + 1), (0, labels.shape[1]), (0, labels.shape[2])))
        wanted = np.isin(np.arange(run[0], run[-1] + 1), run)[:, None, None]
        z, y, x = np.nonzero((block != IGNORE) & wanted)
        parts.append(np.stack([z + run[0], y, x], axis=1).astype(np.int32))
    coords = np.concatenate(parts) if parts else np.zeros((0, 3), np.int32)
    for i, axis in enumerate(AXES[1:], start=1):
        if hidden.get(axis):
            coords = coords[~np.isin(coords[:, i], sorted(hidden[axis]))]
    if not len(coords):
        raise InvalidInputError(f"labels '{labels.spec}' hold no labelled voxel in the training region z "
                                f"{list(region)} (outside held-out planes); label some, or widen data.train_z")
    log.debug("label index: %d labelled voxels in z %s", len(coords), region)
    return LabelIndex(coords, tuple(labels.shape), hidden)
