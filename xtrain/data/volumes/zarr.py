"""Zarr backend of the volume layer (``open_volume``): xtrain stores, Zarr v2/v3, OME-Zarr 0.4/0.5.

    open_volume("scan.zarr")                   # xtrain store: its image (dataset="labels": its labels)
    open_volume("raw.zarr")                    # a Zarr v2 or v3 array
    open_volume("group.zarr", dataset="recon") # an array inside a plain group
    open_volume("image.ome.zarr")              # OME-Zarr 0.4 (v2) / 0.5 (v3): level 0, voxel size

Order: an xtrain store (``xtrain`` attributes) is opened through ``xtrain.data.store.open_store``;
a group with OME ``multiscales`` metadata is an OME-Zarr image, read with ome-zarr-models
(level 0 of the first multiscale; the voxel size is its ``scale`` transform, composed with
the multiscale's own, in the axes' unit); any other group needs ``dataset`` unless it holds
exactly one 3-D array.  Zarr arrays pickle, so these volumes travel to workers as they are.

Missing and damaged data (``xtrain.data.chunks``): every array is checked at open for absent,
empty and truncated shards/chunks (``check_chunks``: the file listing and the shard indices) and
a read that fails to decode names the damaged chunk (``ZarrReader``), so nothing is ever read as a
fill value silently; a foreign Zarr's absent chunks pass only with ``allow_missing``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CorruptFileError, InputNotFoundError, InvalidInputError
from ..chunks import DECODE_ERRORS, array_path, check_chunks, damaged_part
from .base import Volume, as_dask, check_dtype, make_volume, select_axes, unit_to_nm, z_chunks

log = logging.getLogger(__name__)


class ZarrReader:
    """A zarr array indexed down to (Z, Y, X) (ints for C/T and length-1 axes).

    A read whose bytes do not decode (a failed crc32c, a truncated shard) is a
    ``CorruptFileError`` naming the shard and chunk (``damaged_part``).  A (Z, Y, X) array's
    reader has the array's ``chunks`` and ``shards``, so the training sampler's chunk cache
    reads through it (``Volume.source``) in the array's own units."""

    ndim = 3

    def __init__(self, array: Any, index: tuple, zaxis: int, shape: tuple[int, int, int], where: str = ""):
        self.array, self.index, self.zaxis, self.shape = array, index, zaxis, shape
        self.dtype = np.dtype(array.dtype)
        self.where = where or f"'{array_path(array)}'"
        if index == (None, None, None):
            self.chunks, self.shards = tuple(array.chunks), array.shards

    @property
    def direct(self) -> "ZarrReader":
        """This reader (``Volume.source``): its reads name a damaged chunk instead of a traceback."""
        return self

    def __getitem__(self, key) -> np.ndarray:
        zs, ys, xs = key
        if self.index == (None, None, None):
            sel: tuple = (zs, ys, xs)
        else:
            spatial = iter((zs, ys, xs) if self.zaxis >= 0 else (ys, xs))
            sel = tuple(next(spatial) if i is None else i for i in self.index)
        try:
            data = np.asarray(self.array[sel])
        except DECODE_ERRORS as exc:
            raise damaged_part(self.array, sel, self.where, exc) from exc
        return data[np.newaxis][zs] if self.zaxis < 0 else data


def zarr_dask(array: Any, name: str):
    """A lazy dask.array (Z, Y, X) over an open zarr array of shape (Z, Y, X) or (1, Z, Y, X) (a
    segmentation's entropy), in its own dtype, read through ``ZarrReader``.

    Graphs over zarr data are built this way (``as_dask``), never with ``da.from_zarr``: a
    ``zarr.Array`` is a dataclass, and ``ray.util.dask`` rebuilds dataclass task arguments from
    their fields, which zarr's codecs refuse (TypeError: BloscCodec.__init__() got an unexpected
    keyword argument '_tunable_attrs'; Ray 2.60, zarr 3.1), so such a graph fails on Ray."""
    if array.ndim == 3:
        index, zaxis, shape = (None, None, None), 0, tuple(int(s) for s in array.shape)
    elif array.ndim == 4 and array.shape[0] == 1:
        index, zaxis, shape = (0, None, None, None), 1, tuple(int(s) for s in array.shape[1:])
    else:
        raise InvalidInputError(f"{name}: expected a (Z, Y, X) or (1, Z, Y, X) array, got shape {tuple(array.shape)}")
    reader = ZarrReader(array, index, zaxis, shape)  # type: ignore[arg-type]
    return as_dask(reader, z_chunks(shape, np.dtype(array.dtype).itemsize, _native_z(array, zaxis)), name)


def _native_z(array: Any, zaxis: int) -> int:
    shards = getattr(array, "shards", None)
    chunks = shards or array.chunks
    return int(chunks[zaxis]) if zaxis >= 0 else 1


def _volume(spec: str, kind: str, array: Any, axes: str, channel, time, where: str, *, voxel=None,
            provenance: dict[str, Any] | None = None, info=None, allow_missing: bool = False,
            checked: bool = False) -> Volume:
    """The ``Volume`` of one zarr array, checked for missing and truncated shards/chunks first
    (``check_chunks``; ``checked``: ``open_store`` has done it)."""
    source_dtype, _ = check_dtype(array.dtype, where)
    index, zaxis = select_axes(axes, tuple(array.shape), channel, time, where)
    absent = [] if checked else check_chunks(array, where, complete=bool((info or {}).get("all_chunks_written")),
                                             allow_missing=allow_missing, zaxis=zaxis)
    if absent:
        provenance = {**(provenance or {}), "absent_chunks_read_as_fill": len(absent)}
    yx = [n for a, n in zip(axes, array.shape) if a in "YX"]
    shape = (int(array.shape[zaxis]) if zaxis >= 0 else 1, int(yx[0]), int(yx[1]))
    reader = ZarrReader(array, index, zaxis, shape, where)
    native = _native_z(array, zaxis)
    chunks = z_chunks(shape, source_dtype.itemsize, native)
    if axes == "ZYX":  # keep the source's in-plane chunking: a box read touches its own chunks only
        src = getattr(array, "shards", None) or array.chunks
        plane = shape[1] * shape[2] * source_dtype.itemsize
        if plane > (32 << 20):
            chunks = (native, int(src[1]), int(src[2]))
    return make_volume(spec, kind, reader, source_dtype, chunks=chunks, voxel_size_zyx_nm=voxel, info=info,
                       provenance={"axes": axes, "source_shape": [int(s) for s in array.shape],
                                   "zarr_format": int(getattr(array.metadata, "zarr_format", 0) or 0),
                                   "channel": channel, "time": time, **(provenance or {})})


def _default_axes(ndim: int, where: str) -> str:
    if ndim == 3:
        return "ZYX"
    if ndim == 2:
        return "YX"
    raise InvalidInputError(f"{where} is {ndim}-D without axis names; give a 3-D (Z, Y, X) array or an OME-Zarr image")


def _array_axes(array: Any, where: str) -> str:
    """Axis letters from Zarr v3 dimension_names or xarray's _ARRAY_DIMENSIONS, else 3-D = ZYX."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    if names and all(names):
        letters = {"z": "Z", "y": "Y", "x": "X", "c": "C", "channel": "C", "t": "T", "time": "T"}
        mapped = [letters.get(str(n).lower()) for n in names]
        if all(mapped):
            return "".join(mapped)  # type: ignore[arg-type]
    return _default_axes(array.ndim, where)


def _ome(group: Any, path: Path, channel, time, spec: str, allow_missing: bool = False) -> Volume:
    """Level 0 of the first multiscale of an OME-Zarr 0.4 / 0.5 image."""
    attrs = dict(group.attrs)
    version = "0.5" if "ome" in attrs else str(attrs.get("multiscales", [{}])[0].get("version", "0.4"))
    try:
        if version == "0.5":
            from ome_zarr_models.v05.image import ImageAttrs
            ms = ImageAttrs.model_validate(attrs["ome"]).multiscales[0]
        else:
            from ome_zarr_models.v04.image import ImageAttrs
            ms = ImageAttrs.model_validate(attrs).multiscales[0]
    except Exception as exc:  # pydantic ValidationError: a malformed multiscales block
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CorruptFileError(f"'{path}' has OME-Zarr {version} metadata that does not validate ({first}); "
                               "write it again with an OME-Zarr writer") from exc
    level0 = ms.datasets[0]
    axes = "".join({"space": "", "channel": "C", "time": "T"}.get(a.type or "", "") or a.name.upper()[0]
                   for a in ms.axes)
    scale = np.ones(len(ms.axes))
    for transforms in (level0.coordinateTransformations, ms.coordinateTransformations or ()):
        for t in transforms:
            if getattr(t, "type", None) == "scale" and getattr(t, "scale", None) is not None:
                scale = scale * np.asarray(t.scale, dtype=float)
    voxel = None
    sizes = {}
    for a, s in zip(ms.axes, scale):
        if a.type == "space":
            sizes[a.name.lower()] = unit_to_nm(s, a.unit)
    if all(sizes.get(k) for k in "zyx"):
        voxel = (sizes["z"], sizes["y"], sizes["x"])
    elif all(sizes.get(k) for k in "yx"):
        voxel = (sizes["x"], sizes["y"], sizes["x"])
    if level0.path not in group:
        raise CorruptFileError(f"'{path}' names level '{level0.path}' but has no such array; write it again")
    array = group[level0.path]
    where = f"'{path}/{level0.path}'"
    return _volume(spec, "ome-zarr", array, axes, channel, time, where, voxel=voxel, allow_missing=allow_missing,
                   provenance={"files": str(path.resolve()), "dataset": level0.path, "ome_version": version,
                               "scale": scale.tolist()})


def _arrays_3d(group: Any) -> list[tuple[str, tuple[int, ...]]]:
    import zarr

    found = []
    for name, member in group.members(max_depth=None):
        if isinstance(member, zarr.Array) and member.ndim >= 2:
            found.append((name, tuple(member.shape)))
    return found


def open_zarr(spec: str, path: Path, dataset: str | None, channel, time, allow_missing: bool = False) -> Volume:
    """A Zarr folder as a ``Volume``: xtrain store, OME-Zarr image, plain group or array; missing or
    truncated shards/chunks refused (``check_chunks``; ``allow_missing``: see the module docstring)."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a broken folder
        raise CorruptFileError(f"'{path}' is not a readable Zarr v2/v3 store ({type(exc).__name__}: {exc}); "
                               "check or copy it again") from exc
    if isinstance(node, zarr.Array):
        if dataset is not None:
            raise InvalidInputError(f"'{path}' is a single Zarr array; drop dataset={dataset}")
        where = f"'{path}'"
        return _volume(spec, "zarr", node, _array_axes(node, where), channel, time, where,
                       allow_missing=allow_missing, provenance={"files": str(path.resolve())})
    attrs = dict(node.attrs)
    info = attrs.get("xtrain")
    if info is not None and info.get("complete", False) and (dataset or "image").strip("/") in ("image", "labels"):
        return _store(spec, path, dataset, channel, time, allow_missing)  # either layout (xtrain.data.layout), image or labels
    if info is not None and not info.get("complete", False):  # a segmentation output still being written
        raise CorruptFileError(f"'{path}' is incomplete (an interrupted write); finish it with --resume or delete it")
    name = dataset.strip("/") if dataset else None
    if name is None and ("multiscales" in attrs or "multiscales" in attrs.get("ome", {})):
        return _ome(node, path, channel, time, spec, allow_missing)
    if name is None:
        arrays = _arrays_3d(node)
        three_d = [n for n, s in arrays if len(s) == 3]
        if len(three_d) != 1:
            listed = ", ".join(f"{n} {s}" for n, s in arrays) or "none"
            raise InvalidInputError(f"Zarr group '{path}' has {len(three_d)} 3-D arrays, so the volume is ambiguous "
                                    f"(arrays: {listed}); name one with --dataset")
        name = three_d[0]
    if name not in node:
        listed = ", ".join(n for n, _ in _arrays_3d(node)) or "none"
        raise InputNotFoundError(f"Zarr group '{path}' has no array '{name}'; its arrays: {listed}")
    member = node[name]
    if not isinstance(member, zarr.Array):
        if "multiscales" in dict(member.attrs) or "multiscales" in dict(member.attrs).get("ome", {}):
            return _ome(member, path / name, channel, time, spec, allow_missing)
        raise InvalidInputError(f"'{path}/{name}' is a group, not an array; name an array with --dataset")
    where = f"'{path}/{name}'"
    vs = (info or {}).get("voxel_size_nm")  # a segmentation output (xtrain attributes, no image)
    return _volume(spec, "zarr", member, _array_axes(member, where), channel, time, where,
                   voxel=(vs, vs, vs) if vs else None, info=info, allow_missing=allow_missing,
                   provenance={"files": str(path.resolve()), "dataset": name})


def _store(spec: str, path: Path, dataset: str | None, channel, time, allow_missing: bool = False) -> Volume:
    """An xtrain store through ``open_store`` (which checks its chunks): its image, or (dataset='labels') its labels."""
    from ..store import open_store

    store = open_store(path, require_image=False, allow_missing=allow_missing)
    which = (dataset or "image").strip("/")
    if which == "image":
        if store.image is None:
            raise InvalidInputError(f"'{path}' has no image (a segmentation output written without one); "
                                    "give the scan it was made from, or dataset='labels'")
        array = store.image
    elif which == "labels":
        if store.labels is None:
            raise InvalidInputError(f"store '{path}' has no labels; give a store made with 'xtrain ingest --labels'")
        array = store.labels
    else:
        raise InvalidInputError(f"store '{path}': dataset must be 'image' or 'labels', not '{dataset}'")
    info = store.info.to_dict()
    vs = store.info.voxel_size_nm
    where = f"'{path}' {which}"
    vol = _volume(spec, "store", array, "ZYX", channel, time, where, voxel=(vs, vs, vs) if vs else None,
                  info=info, checked=True, provenance={"files": str(path.resolve()), "dataset": which})
    return vol
