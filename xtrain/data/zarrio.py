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

Missing and damaged data (``check_chunks``, at open; ``ZarrReader``, at read).  Zarr reads an
absent chunk or shard as the fill value, silently (zarr-python 3.1 has no setting to refuse it;
``Array.nchunks_initialized`` counts the stored objects but neither names the absent ones nor
sees a zero-length shard, which it also reads as fill value).  So opening lists the array's
files once and compares them with its chunk grid, and reads each shard's index (its last
16 bytes per inner chunk + crc32c: the shard's header) to find truncated shards:

* an xtrain store (``all_chunks_written``: written with ``write_empty_chunks=True``, so all-zero
  chunks are stored too) with an absent shard/chunk, an empty or truncated shard, or an index entry
  marking an inner chunk as never written: ``MissingDataError`` / ``CorruptFileError`` naming
  the file and the z range it holds.  Always: that is damage.
* any other Zarr (v2, v3, OME-Zarr; stores from before ``all_chunks_written``): an absent chunk is
  either lost or was never written because it held only the fill value (zarr-python 3's default
  ``write_empty_chunks=False``); the files cannot tell which, so it is refused the same way
  unless ``allow_missing`` (``--allow-missing``), which reads it as the fill value with a
  warning.  Inner chunks a shard's index marks as empty are "never written" by the format's own
  statement and are read as the fill value.
* a chunk whose bytes fail to decode (xtrain stores carry a crc32c per inner chunk and per shard
  index, so one flipped bit fails): ``CorruptFileError`` at read time naming the shard and the
  inner chunk's z, y, x range, never changed voxels.
"""

from __future__ import annotations

import logging
import os
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InputNotFoundError, InvalidInputError, MissingDataError
from .volumes import Volume, as_dask, check_dtype, make_volume, select_axes, unit_to_nm, z_chunks

log = logging.getLogger(__name__)


DECODE_ERRORS = (ValueError, RuntimeError, IndexError, TypeError)  # what zarr's codecs raise for bad bytes


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


# ----------------------------------------------------------------------------- missing and damaged chunks


def array_path(array: Any) -> Path | str:
    """The folder of a zarr array on disk (a local store), else its store path as text."""
    root = getattr(array.store_path.store, "root", None)
    return Path(root) / array.store_path.path if root is not None else str(array.store_path)


def _storage_unit(array: Any) -> tuple[int, ...]:
    """The shape of one stored object: a shard, or a chunk when the array is not sharded."""
    return tuple(array.shards or array.chunks)


def _sharding(array: Any) -> Any:
    """The array's sharding codec (Zarr v3, sharded), else None."""
    from zarr.codecs import ShardingCodec

    codecs = getattr(array.metadata, "codecs", ()) if array.shards else ()
    return next((c for c in codecs if isinstance(c, ShardingCodec)), None)


def _z_range(coords: tuple[int, ...], unit: tuple[int, ...], shape: tuple[int, ...], zaxis: int) -> str:
    if zaxis < 0:  # a 2-D array: one slice
        return "z 0..0"
    z0 = coords[zaxis] * unit[zaxis]
    return f"z {z0}..{min(z0 + unit[zaxis], shape[zaxis]) - 1}"


def _listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative POSIX path -> size in bytes): one directory walk."""
    sizes: dict[str, int] = {}
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                sizes[Path(entry.path).relative_to(folder).as_posix()] = entry.stat().st_size
    return sizes


def _index_problem(path: Path, size: int, codec: Any, n_inner: int, inside: np.ndarray | None
                   ) -> tuple[str, int] | None:
    """What is wrong with a shard file's index (its header), or None: (reason, first empty inner chunk or -1).

    The index is ``n_inner`` (offset, nbytes) uint64 pairs, followed by a crc32c when the codec has
    one (zarr v3 sharding spec; zarr's default), at the end or the start of the file.  A shard cut
    short loses its index (at the end) or the data the index points to (at the start).
    ``inside``: which inner chunks lie inside the array (an edge shard reaches past it); given for
    a store that writes every chunk, where one of them marked empty is a lost chunk."""
    import google_crc32c
    from zarr.codecs import BytesCodec, Crc32cCodec

    kinds = [type(c) for c in codec.index_codecs]
    if not kinds or kinds[0] is not BytesCodec or any(k not in (BytesCodec, Crc32cCodec) for k in kinds):
        return None  # an index codec chain this check does not know: zarr checks it at read time
    crc = Crc32cCodec in kinds
    endian = getattr(getattr(codec.index_codecs[0], "endian", None), "value", "little") or "little"
    nbytes = 16 * n_inner + (4 if crc else 0)
    if size < nbytes:
        return f"is truncated: {size} bytes, shorter than its index of {nbytes} bytes", -1
    at_end = getattr(codec.index_location, "value", codec.index_location) == "end"
    with open(path, "rb") as f:
        f.seek(size - nbytes if at_end else 0)
        raw = f.read(nbytes)
    if crc and np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
        return "is truncated or damaged: its index fails its crc32c checksum", -1
    entries = np.frombuffer(raw[:16 * n_inner], dtype="<u8" if endian == "little" else ">u8").reshape(n_inner, 2)
    empty = (entries == np.iinfo(np.uint64).max).all(axis=1)
    if (~empty).any():
        ends = entries[~empty, 0] + entries[~empty, 1]
        limit = size - nbytes if at_end else size
        if int(ends.max()) > limit or int(entries[~empty, 0].min()) < (0 if at_end else nbytes):
            return f"is truncated: its index points to byte {int(ends.max())} of a {size}-byte file", -1
    if inside is not None and (empty & inside).any():
        return "has inner chunks that were never written", int(np.flatnonzero(empty & inside)[0])
    return None


def check_chunks(array: Any, where: str, *, complete: bool, allow_missing: bool = False, zaxis: int | None = None) -> list[str]:
    """Refuse an array with a lost, empty or truncated shard (or chunk): checked from the file listing
    and the shard indices only, no chunk data is read.  Returns the absent keys ``allow_missing`` let through.

    ``complete``: the array was written with every chunk (an xtrain store), so anything absent is
    damage and ``allow_missing`` does not apply.  ``zaxis``: the z axis (default: the third from last)
    for the z range each message names.  Raises ``MissingDataError`` (absent or empty files, inner chunks
    an xtrain store's index marks as never written) or ``CorruptFileError`` (a truncated shard).
    Arrays outside a local folder are not checked (xtrain opens folders only)."""
    folder = array_path(array)
    if not isinstance(folder, Path) or not array.size:
        return []
    zaxis = array.ndim - 3 if zaxis is None else zaxis
    unit = _storage_unit(array)
    shape = tuple(int(n) for n in array.shape)
    grid = [-(-n // u) for n, u in zip(shape, unit)]
    sizes = _listing(folder)
    kind = "shard" if array.shards else "chunk"
    missing: list[tuple[str, tuple[int, ...]]] = []
    present: list[tuple[str, tuple[int, ...]]] = []
    for coords in product(*(range(n) for n in grid)):
        key = array.metadata.encode_chunk_key(coords)
        (present if sizes.get(key, 0) > 0 else missing).append((key, coords))
    if missing:
        key, coords = missing[0]
        what = "is empty (0 bytes)" if key in sizes else "is missing"
        more = f" (and {len(missing) - 1} more of its {len(present) + len(missing)} {kind}s)" if len(missing) > 1 else ""
        head = f"{where}: {kind} '{folder / key}' ({_z_range(coords, unit, shape, zaxis)}) {what}{more}"
        if complete:
            raise MissingDataError(f"{head}; xtrain writes every chunk, so it was lost (an interrupted or partial "
                                   "copy): copy the store again from its source")
        if not allow_missing:
            raise MissingDataError(f"{head}: lost in a copy, or never written because it held only the fill value "
                                   f"{array.fill_value} (zarr's write_empty_chunks=False); copy it again, or if it is "
                                   "meant to be empty pass --allow-missing to read absent chunks as the fill value")
        log.warning("%s; read as the fill value %s (--allow-missing)", head, array.fill_value)
    codec = _sharding(array)
    if codec is not None:
        inner = tuple(int(c) for c in codec.chunk_shape)
        per = [u // c for u, c in zip(unit, inner)]
        n_inner = int(np.prod(per))
        starts = np.stack(np.unravel_index(np.arange(n_inner), per), axis=1) * np.asarray(inner)  # within a shard
        for key, coords in present:
            inside = ((starts + np.asarray(coords) * np.asarray(unit)) < np.asarray(shape)).all(axis=1) \
                if complete else None
            problem = _index_problem(folder / key, sizes[key], codec, n_inner, inside)
            if problem is None:
                continue
            reason, empty = problem
            head = f"{where}: shard '{folder / key}' ({_z_range(coords, unit, shape, zaxis)}) {reason}"
            if empty < 0:
                raise CorruptFileError(f"{head}; copy the store again from its source")
            start = [k * u + i * c for k, u, i, c in zip(coords, unit, np.unravel_index(empty, per), inner)]
            raise MissingDataError(f"{head}, e.g. the one at z {start[zaxis]}..{start[zaxis] + inner[zaxis] - 1}; "
                                   "xtrain writes every chunk, so it was lost: copy the store again from its source")
    return [k for k, _ in missing]


def _box(sel: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, stop) per axis of a basic selection (ints and slices with step 1)."""
    box = []
    for s, n in zip(sel, shape):
        if isinstance(s, slice):
            start, stop, _ = s.indices(n)
            box.append((start, max(start, stop)))
        else:
            i = int(s) % n if n else 0
            box.append((i, i + 1))
    return box


def _bad_blocks(array: Any, box: list[tuple[int, int]], unit: tuple[int, ...],
                first_only: bool) -> list[tuple[tuple[int, ...], BaseException]]:
    """The blocks of ``unit`` (grid coordinates) inside ``box`` that fail to read, with their errors."""
    ranges = [range(a // u, (b - 1) // u + 1) if b > a else range(0) for (a, b), u in zip(box, unit)]
    bad = []
    for coords in product(*ranges):
        region = tuple(slice(c * u, min((c + 1) * u, n)) for c, u, n in zip(coords, unit, array.shape))
        try:
            array[region]
        except DECODE_ERRORS as exc:
            bad.append((coords, exc))
            if first_only:
                break
    return bad


def damaged_part(array: Any, sel: tuple, where: str, exc: BaseException) -> CorruptFileError:
    """The error for a read of ``sel`` that failed to decode.  Reads the shards it touches one at a
    time, then the inner chunks of the bad shard, to name the damaged part: "chunk z 40..40, y
    0..255, x 0..255 of shard '.../0/c/1/0/0' (z 32..63) fails to decode (ValueError: Stored and
    computed checksum do not match ...)"; the shard alone when all its chunks fail (a broken index)."""
    folder = array_path(array)
    unit = _storage_unit(array)
    shape = tuple(int(n) for n in array.shape)
    zaxis = array.ndim - 3
    found = _bad_blocks(array, _box(sel, shape), unit, first_only=True)
    coords, error = found[0] if found else (tuple(a // u for (a, _), u in zip(_box(sel, shape), unit)), exc)
    key = array.metadata.encode_chunk_key(coords)
    part = f"{'shard' if array.shards else 'chunk'} '{folder}/{key}' ({_z_range(coords, unit, shape, zaxis)})"
    if array.shards and found:
        region = [(c * u, min((c + 1) * u, n)) for c, u, n in zip(coords, unit, shape)]
        chunks = tuple(int(c) for c in array.chunks)
        inner = _bad_blocks(array, region, chunks, first_only=False)
        total = int(np.prod([-(-(b - a) // c) for (a, b), c in zip(region, chunks)]))
        if inner and len(inner) < total:  # some chunks decode: name the bad one
            bad, error = inner[0]
            span = ", ".join(f"{ax} {i * c}..{min((i + 1) * c, n) - 1}"
                             for ax, i, c, n in zip("zyx", bad[-3:], chunks[-3:], shape[-3:]))
            more = f" (and {len(inner) - 1} more of its {total} chunks)" if len(inner) > 1 else ""
            part = f"chunk {span}{more} of {part}"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return CorruptFileError(f"{where}: {part} fails to decode ({type(error).__name__}: {first}); the file is damaged "
                            "or truncated: copy the store again from its source")
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
    from .store import open_store

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
