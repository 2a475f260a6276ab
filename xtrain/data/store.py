"""The store: how a volume lives on disk, opened and written atomically.

A store is an OME-Zarr 0.5 image (Zarr v3 group) whose layout ``xtrain.data.layout`` defines:

    STORE.zarr/
      zarr.json         attributes: "ome" (multiscales of the image pyramid), "xtrain" (``StoreInfo``)
      0/ 1/ ...         image pyramid (Z, Y, X) uint8 | uint16 | float32, level 0 at full resolution
      labels/ground_truth/0/ 1/ ...  (Z, Y, X) uint8 class ids 0..len(classes)-1 (optional),
                                     an OME label image with colours and class names

Stores are written under a temporary sibling name and renamed into place only once
complete (``write_store``), so an interrupted ingest never leaves something that looks
finished; ``open_store`` refuses a store without the completion mark.  Every chunk is written,
also all-zero ones (``write_empty_chunks=True``; attribute ``all_chunks_written``), and every inner
chunk and shard index carries a crc32c: ``open_store`` refuses a store with a lost, empty or
truncated shard (``chunks.check_chunks``: the file listing and the shard indices, no chunk data),
and a read of a chunk whose bytes changed fails naming it, instead of returning other voxels.  Stores of the
previous layout (format 1: root arrays ``image`` and ``labels``) are refused with the fix:
``upgrade`` (``xtrain upgrade STORE``) rewrites one in the OME layout, and is the only code
that reads that layout.

Chunk layout (see ``default_layout``): 2D training patches read one z-slice at a time,
so chunks are thin in z (1 x 256 x 256) and grouped into Zarr v3 shards (32 x 512 x 512)
so that the file count stays small.  ``bench/loader.py`` and ``bench/chunks.py`` measure it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import layout as ome
from .layout import DEFAULT_CHUNKS, DEFAULT_SHARD_DEPTH, DEFAULT_SHARD_EDGE, Layout, compressor, default_layout  # noqa: F401
from ..errors import CorruptFileError, InputNotFoundError, InvalidInputError, OutputExistsError
from ..io import remove_path, replace_into_place
from .chunks import check_chunks

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1: root arrays "image" and "labels"; 2: OME-Zarr 0.5 image + labels/ group (layout.py)
DEFAULT_CLASSES = ("pore", "ysz", "ni")


@dataclass
class StoreInfo:
    """The ``xtrain`` attribute block of a store."""

    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    voxel_size_nm: float | None = None
    source: dict[str, Any] = field(default_factory=dict)  # files, label map, generator preset ...
    stats: dict[str, Any] = field(default_factory=dict)  # see xtrain.data.stats.IntensityStats.to_dict
    labels: dict[str, Any] = field(default_factory=dict)  # label census (xtrain.data.labels.LabelCensus.to_dict); {}: none
    complete: bool = False
    format: int = FORMAT_VERSION
    # every chunk was written, all-zero ones too (write_empty_chunks=True): an absent one is damage.
    # False for stores written before xtrain did that (their absent chunks may be all-zero ones).
    all_chunks_written: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "complete": self.complete,
            "all_chunks_written": self.all_chunks_written,
            "classes": list(self.classes),
            "voxel_size_nm": self.voxel_size_nm,
            "source": self.source,
            "stats": self.stats,
            **({"labels": self.labels} if self.labels else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreInfo":
        return cls(
            classes=list(d.get("classes", DEFAULT_CLASSES)),
            voxel_size_nm=d.get("voxel_size_nm"),
            source=dict(d.get("source", {})),
            stats=dict(d.get("stats", {})),
            labels=dict(d.get("labels", {})),
            complete=bool(d.get("complete", False)),
            format=int(d.get("format", FORMAT_VERSION)),
            all_chunks_written=bool(d.get("all_chunks_written", False)),
        )


@dataclass
class Store:
    """An open store: level-0 zarr arrays (lazy, sliceable, picklable) plus the attribute block.

    ``image``: (Z, Y, X) level 0 of the image pyramid (``levels``: every level, finest first;
    None only for a segmentation written as a TIFF/HDF5 work group).  ``labels``: the store's label
    image, ground truth if it has one, else the prediction (``label_images``: all, by name).
    ``probabilities`` (C, Z, Y, X) and ``entropy`` (1, Z, Y, X): a segmentation's, or None.
    """

    path: Path
    image: zarr.Array | None
    labels: zarr.Array | None
    info: StoreInfo
    label_images: dict[str, zarr.Array] = field(default_factory=dict)
    probabilities: zarr.Array | None = None
    entropy: zarr.Array | None = None
    levels: list[zarr.Array] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        arr = self.image if self.image is not None else self.labels
        return tuple(arr.shape)  # type: ignore[return-value,union-attr]

    # what open_segmentation's zarr.Group answered before the OME layout: g["labels"], "entropy" in g, g.attrs
    _ROLES = ("image", "labels", "probabilities", "entropy")

    def __getitem__(self, role: str) -> zarr.Array:
        """``store["labels"]`` (also "image", "probabilities", "entropy"): the level-0 array; KeyError if absent."""
        arr = getattr(self, role) if role in self._ROLES else None
        if arr is None:
            raise KeyError(role)
        return arr

    def __contains__(self, role: str) -> bool:
        return role in self._ROLES and getattr(self, role) is not None

    @property
    def attrs(self) -> dict[str, Any]:
        """The root group's attributes ("ome", "xtrain")."""
        return dict(zarr.open_group(str(self.path), mode="r").attrs)


def _open_group(path: Path, mode: str, what: str) -> tuple[zarr.Group, StoreInfo]:
    if not path.exists():
        raise InputNotFoundError(f"{what} '{path}' does not exist; create it with "
                                 f"{chr(39)}xtrain {'segment' if what == 'segmentation' else 'ingest'}{chr(39)}")
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as exc:  # zarr raises several types for a non-store folder
        raise CorruptFileError(
            f"'{path}' is not a Zarr v3 store ({type(exc).__name__}); create it with 'xtrain ingest'"
        ) from exc
    attrs = dict(group.attrs)
    if "xtrain" not in attrs:
        raise CorruptFileError(f"'{path}' is a Zarr group but not an xtrain store (no 'xtrain' attributes)")
    return group, StoreInfo.from_dict(attrs["xtrain"])


def _store(path: Path, group: zarr.Group, info: StoreInfo, allow_missing: bool = False) -> Store:
    if ome.previous_layout(group):
        raise CorruptFileError(f"'{path}' has the previous store layout (format 1: root arrays image/labels); "
                               f"rewrite it as OME-Zarr 0.5 with 'xtrain upgrade {path}'")
    arrays = ome.read_arrays(group)
    named = [("image", arrays.image), *((f"labels '{k}'", v) for k, v in arrays.labels.items()),
             ("probabilities", arrays.probabilities), ("entropy", arrays.entropy)]
    for what, array in named:
        if array is not None:  # MissingDataError / CorruptFileError: a lost or truncated shard
            check_chunks(array, f"'{path}' {what}", complete=info.all_chunks_written, allow_missing=allow_missing)
    return Store(path=path, image=arrays.image, labels=arrays.main_labels(), info=info, label_images=arrays.labels,
                 probabilities=arrays.probabilities, entropy=arrays.entropy, levels=arrays.levels)


def open_store(path: str | os.PathLike, mode: str = "r", require_image: bool = True,
               allow_missing: bool = False) -> Store:
    """Open a finished store or segmentation (either layout); raise a one-line error for anything else.

    Raises InputNotFoundError (no such path), CorruptFileError (not an xtrain store, an
    interrupted write, no image while ``require_image``, a truncated shard) or MissingDataError
    (a lost shard or chunk: ``chunks.check_chunks``; ``allow_missing`` lets absent chunks of a
    store from before ``all_chunks_written`` be read as zeros).
    """
    path = Path(path)
    group, info = _open_group(path, mode, "store")
    if not info.complete:
        raise CorruptFileError(f"'{path}' is incomplete (an interrupted write or run); delete it and run again, or "
                               "resume a segmentation with 'xtrain segment ... --resume'")
    store = _store(path, group, info, allow_missing)
    if store.image is None and (require_image or store.labels is None):
        raise CorruptFileError(f"store '{path}' has no image; recreate it with 'xtrain ingest'")
    return store


def open_segmentation(path: str | os.PathLike) -> Store:
    """Open a finished ``xtrain segment`` output (either layout); its prediction is ``.labels``.

    Raises InputNotFoundError, CorruptFileError (not a store, interrupted, no labels, a truncated
    shard) or MissingDataError (a lost shard).
    """
    path = Path(path)
    group, info = _open_group(path, "r", "segmentation")
    if not info.complete:
        raise CorruptFileError(f"segmentation '{path}' is incomplete (an interrupted run); resume it with "
                               "'xtrain segment ... --resume' or delete it")
    store = _store(path, group, info)
    if store.labels is None:
        raise CorruptFileError(f"segmentation '{path}' is incomplete (an interrupted run); resume it with "
                               "'xtrain segment ... --resume' or delete it")
    return store


class StoreWriter:
    """Arrays of a store being written (under its temporary path). Used through ``write_store``."""

    def __init__(self, group: zarr.Group, name: str, layout: Layout):
        self.group = group
        self.name = name
        self.layout = layout
        self.info = StoreInfo()

    def _create(self, path: str, shape: tuple[int, ...], dtype: Any) -> zarr.Array:
        return ome.create_level(self.group, path, shape, dtype, self.layout, codec=compressor(np.dtype(dtype)))

    def create_image(self, shape: tuple[int, int, int], dtype: Any) -> zarr.Array:
        """Level 0 of the image, (Z, Y, X); the pyramid is built from it when the store is finished."""
        return self._create(ome.level0_path("image"), shape, dtype)

    def create_labels(self, shape: tuple[int, int, int], name: str = ome.GROUND_TRUTH) -> zarr.Array:
        """Level 0 of label image ``name`` (``ground_truth`` or ``prediction``), (Z, Y, X) uint8 class ids."""
        return self._create(ome.level0_path("label", name), shape, np.uint8)

    def create(self, name: str, shape: tuple[int, int, int], dtype: Any) -> zarr.Array:
        """``create("image", ...)`` or ``create("labels", ...)`` (the ground truth): as the two above."""
        if name == "image":
            return self.create_image(shape, dtype)
        if name == "labels":
            if np.dtype(dtype) != np.uint8:
                raise ValueError(f"labels are uint8 class ids, got dtype {np.dtype(dtype)}")
            return self.create_labels(shape)
        raise ValueError(f"a store holds 'image' and 'labels', not '{name}'")

    def slabs(self, depth: int) -> Iterator[slice]:
        """z-slices of one write each, aligned to the shards (so no shard is rewritten)."""
        step = self.layout.slab
        for z0 in range(0, depth, step):
            yield slice(z0, min(z0 + step, depth))


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite`` (checked before any work starts)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output '{path}' already exists; pass --overwrite to replace it or choose another path")
    if not path.parent.exists():
        raise InputNotFoundError(f"output folder '{path.parent}' does not exist; create it first")
    return path


@contextlib.contextmanager
def write_store(path: str | os.PathLike, shape: tuple[int, int, int], layout: Layout | None = None,
                overwrite: bool = False, pyramid_edge: int = ome.PYRAMID_EDGE) -> Iterator[StoreWriter]:
    """Create a store atomically.

        with write_store(out, shape) as w:
            img = w.create_image(shape, np.uint16)          # level 0
            lab = w.create_labels(shape)                     # labels/ground_truth level 0
            for sl in w.slabs(shape[0]): img[sl] = ...
            w.info.classes = [...]; w.info.stats = ...

    Everything is written to ``.NAME.partial-XXXX`` beside ``path``; on success the
    pyramids and OME attributes are written (``layout.finish_group``), the
    attributes get ``complete: true`` and the folder is renamed into place (replacing an
    old store only now, when ``overwrite``).  On any exception the partial folder is removed
    and ``path`` is untouched.  ``pyramid_edge``: the pyramid stops once y and x are <= it.
    """
    path = check_output(path, overwrite)
    layout = layout or default_layout(shape)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        writer = StoreWriter(group, path.stem, layout)
        yield writer
        ome.finish_group(group, path.stem, writer.info.voxel_size_nm, writer.info.classes, layout, pyramid_edge)
        writer.info.complete = True
        writer.info.all_chunks_written = True  # create_level: write_empty_chunks=True
        group.attrs.update({"xtrain": writer.info.to_dict()})
        replace_into_place(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    log.debug("wrote store %s", path)


def _previous_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The root arrays of a store of the previous layout (format 1), by the name the OME layout gives them:
    image, the label image (ground truth, or a segmentation's prediction), probabilities, entropy."""
    kind = dict(group.attrs).get("xtrain", {}).get("source", {}).get("kind")
    label_name = ome.PREDICTION if kind in ("segmentation", "baseline") else ome.GROUND_TRUTH
    names = {"image": "image", ome.LABELS: label_name, ome.PROBABILITIES: ome.PROBABILITIES, ome.ENTROPY: ome.ENTROPY}
    return {new: group[old] for old, new in names.items() if old in group and isinstance(group[old], zarr.Array)}


def upgrade(path: str | os.PathLike) -> bool:
    """Rewrite a store of the previous layout (format 1: root arrays ``image``, ``labels``, ``probabilities``,
    ``entropy`` (Z, Y, X)) in the OME-Zarr 0.5 layout, in place; the only reader of that layout.

    The new store is written beside it and renamed over it only when complete (an
    interruption leaves the old store as it was).  Returns False (nothing to do) for a store
    that already has the OME layout.  Raises InvalidInputError for a previous-layout
    segmentation without an image (rerun 'xtrain segment' for the new layout), and
    InputNotFoundError / CorruptFileError for anything that is not a finished xtrain store.
    """
    path = Path(path)
    group, info = _open_group(path, "r", "store")
    if not ome.previous_layout(group):
        open_store(path, require_image=False)  # refuses an unfinished or broken store
        return False
    if not info.complete:
        raise CorruptFileError(f"'{path}' is incomplete (an interrupted write); delete it and write it again")
    old = _previous_arrays(group)
    src = old.get("image")
    if src is None:
        raise InvalidInputError(f"'{path}' is a segmentation of the previous layout without an image; rerun "
                                "'xtrain segment' to get an OME-Zarr image with a label image")
    shape = tuple(src.shape)
    lay = Layout(tuple(src.chunks), tuple(src.shards) if src.shards else None)  # type: ignore[arg-type]
    with write_store(path, shape, lay, overwrite=True) as w:
        new = {"image": w.create_image(shape, src.dtype)}
        for name in (ome.GROUND_TRUTH, ome.PREDICTION):
            if name in old:
                new[name] = w.create_labels(shape, name)
        for name, channels in ((ome.PROBABILITIES, old.get(ome.PROBABILITIES)), (ome.ENTROPY, old.get(ome.ENTROPY))):
            if channels is not None:  # entropy was (Z, Y, X): the OME layout gives it a channel axis
                lead = channels.shape[:-3] if name == ome.PROBABILITIES else (1,)
                new[name] = ome.create_level(w.group, ome.level0_path(name), (*lead, *shape), channels.dtype, lay)
        for sl in w.slabs(shape[0]):
            for name, arr in new.items():
                if name == ome.PROBABILITIES:
                    arr[:, sl] = old[name][:, sl]
                elif name == ome.ENTROPY:
                    arr[0, sl] = old[name][sl]
                else:
                    arr[sl] = old[name][sl]
        w.info = StoreInfo.from_dict({**info.to_dict(), "format": FORMAT_VERSION})
    log.info("upgraded %s to the OME-Zarr 0.5 layout (format %d)", path, FORMAT_VERSION)
    return True
