"""The ``Volume`` type of the volume layer and the helpers its backends share.

One type for every volume xtrain reads, whatever the format, with two views:

    vol = open_volume("scan.zarr")              # raw grey values, lazy
    vol.array                                   # dask.array (Z, Y, X) in the native dtype
    vol.read(vol.planes(2, 5))                  # numpy (3, Y, X), read directly (no Dask graph)
    vol.read(((0, 4), (10, 74), (10, 74)))      # any box ((z0, z1), (y0, y1), (x0, x1))
    seg_in = vol.normalised(mapping, mask)      # read() -> float32, as the model was trained
    ids = vol.as_labels(lut)                    # read() / array -> uint8 class ids
    vol.raw()                                   # the raw volume behind a view

A view is the same dataclass with ``mapping`` (``xtrain.data.normalise.choose_mapping``) or
``lut`` (``label_lut``) set; ``crop``, ``reopened`` and pickling keep it.  ``Volume`` pickles as
its spec and options and reopens itself (h5py and tifffile handles are never pickled), so it
travels to Dask-on-Ray and Ray workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import CorruptFileError, InvalidInputError, LabelValueError
from ...geometry import Box
from ..labels import IGNORE
from ..normalise import apply_mapping

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "int8", "int16", "int32",
                                                "float32", "float64"))
TARGET_CHUNK_BYTES = 8 * 2**20  # Dask chunks grow in z to about this size (whole shards of a store: 32x512x512 uint16 = 16 MB)
_UNIT_NM = {"angstrom": 0.1, "nanometer": 1.0, "nm": 1.0, "micrometer": 1e3, "micron": 1e3, "um": 1e3, "µm": 1e3,
            "\\u00B5m": 1e3, "millimeter": 1e6, "mm": 1e6, "centimeter": 1e7, "cm": 1e7, "meter": 1e9, "m": 1e9}


class CodecError(InvalidInputError):
    """A compressed file whose codec cannot be loaded (a missing package, not a corrupt file)."""


# ----------------------------------------------------------------------------- the volume


@dataclass
class Volume:
    """A (Z, Y, X) volume of any input format, as a lazy Dask array plus what is known about it.

    ``raw_dtype``: the dtype of the grey values (float64 sources are read as float32); ``dtype``
    is what ``read`` returns: ``raw_dtype``, float32 for a normalised view, uint8 for a label view.
    ``voxel_size_nm``: the in-plane voxel edge in nm (None when the file does not say);
    ``voxel_size_zyx_nm`` all three when known.  ``provenance``: format, file(s), dataset,
    channel/time, the source's axes and dtype, for the output's attributes.  ``info``: an
    xtrain store's attribute block ({} for other formats).

    Views: ``mapping`` + ``mask`` + ``sample_stats`` (``normalised``), or ``lut`` + ``image``
    (``as_labels``).
    """

    spec: str
    kind: str  # "store" | "tiff" | "hdf5" | "zarr" | "ome-zarr" | "array"
    shape: tuple[int, int, int]
    raw_dtype: np.dtype
    voxel_size_nm: float | None = None
    voxel_size_zyx_nm: tuple[float, float, float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # dataset/channel/time: how to reopen
    z_offset: int = 0  # a crop: slice 0 of this volume is slice z_offset of the source
    mapping: dict[str, Any] | None = None  # normalised view: raw -> float32 (xtrain.data.normalise)
    mask: "Volume | None" = None  # normalised view: voxels where the mask is 0 get the mapping's fill
    sample_stats: dict[str, Any] | None = None  # normalised view: the statistics the mapping was chosen from
    lut: np.ndarray | None = field(default=None, repr=False)  # label view: raw value -> class id (label_lut)
    image: "Volume | None" = None  # label view: the grey values of the same store (reports)
    _array: Any = field(default=None, repr=False, compare=False)
    _reader: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = state["_reader"] = None  # reopened lazily where it is unpickled
        return state

    def _copy(self, **changes: Any) -> "Volume":
        """The same volume (sharing the open source) with ``changes``."""
        out = dataclasses.replace(self, **changes)
        out._array, out._reader = self._array, self._reader
        return out

    # ------------------------------------------------------------------ views

    def normalised(self, mapping: dict[str, Any], mask: "Volume | None" = None,
                   stats: dict[str, Any] | None = None) -> "Volume":
        """The view that reads float32 normalised values (``apply_mapping``); ``stats``: the sample
        statistics the mapping was chosen from (``stats`` of the view)."""
        if mask is not None and mask.shape != self.shape:
            raise InvalidInputError(f"mask '{mask.spec}' has shape {mask.shape} but '{self.spec}' has {self.shape}; "
                                    "give a mask of the volume's shape")
        return self.raw()._copy(mapping=dict(mapping), mask=mask, sample_stats=stats)

    def as_labels(self, lut: np.ndarray, image: "Volume | None" = None) -> "Volume":
        """The view that reads uint8 class ids through ``lut`` (``label_lut``); a value the table
        does not map is a ``LabelValueError`` naming where it is.  ``image``: grey values of the same volume."""
        return self.raw()._copy(lut=lut, image=image)

    def raw(self) -> "Volume":
        """The raw grey values behind a view (the volume itself when it is raw)."""
        if self.mapping is None and self.lut is None:
            return self
        return self._copy(mapping=None, mask=None, sample_stats=None, lut=None, image=None)

    @property
    def dtype(self) -> np.dtype:
        if self.lut is not None:
            return np.dtype(np.uint8)
        if self.mapping is not None:
            return np.dtype(np.float32)
        return self.raw_dtype

    # ------------------------------------------------------------------ the data

    def _source_array(self):
        if self._array is None:
            if self.kind == "array":
                raise InvalidInputError(f"'{self.spec}' is an in-memory volume and cannot be reopened")
            from . import open_volume

            fresh = self._check_unchanged(open_volume(self.spec, **self.options))
            self._array, self._reader = fresh._array, fresh._reader
        return self._array

    @property
    def array(self):
        """The lazy ``dask.array`` (Z, Y, X) of ``dtype`` (the crop's slices only, through the view)."""
        array = self._source_array()
        if self.z_offset or array.shape[0] != self.shape[0]:
            array = array[self.z_offset:self.z_offset + self.shape[0]]
        if self.lut is not None:
            def block(raw: np.ndarray, block_info=None) -> np.ndarray:
                origin = [int(a[0]) for a in block_info[0]["array-location"]] if block_info else [0, 0, 0]
                return map_labels(raw, self.lut, self, *origin)

            return array.map_blocks(block, dtype=np.uint8)
        if self.mapping is not None:
            mapping = self.mapping
            if self.mask is None:
                return array.map_blocks(apply_mapping, mapping, dtype=np.float32)
            return array.map_blocks(lambda raw, m: apply_mapping(raw, mapping, m), self.mask.raw().array,
                                    dtype=np.float32)
        return array

    def _check_unchanged(self, fresh: "Volume") -> "Volume":
        if fresh.shape[1:] != self.shape[1:] or fresh.shape[0] < self.z_offset + self.shape[0] \
                or fresh.raw_dtype != self.raw_dtype:
            raise InvalidInputError(f"'{self.spec}' changed since it was opened ({self.shape} {self.raw_dtype} -> "
                                    f"{fresh.shape} {fresh.raw_dtype}); run again")
        return fresh

    @property
    def source(self) -> Any:
        """The source read without Dask, for many small box reads (a Dask graph per box costs more
        than the read: the training sampler's patches).  ``source[z0:z1, y0:y1, x0:x1]`` is numpy in
        the source's dtype, indexed like the uncropped source (add ``z_offset``), without the view.
        A Zarr (Z, Y, X) array (xtrain stores, plain Zarr) gives its ``ZarrReader``, which has the array's
        ``chunks`` and ``shards`` (so a chunk cache reads in its units, ``xtrain.data.chunkcache``) and
        names a chunk that fails to decode; other formats give their reader, an in-memory volume its array."""
        self._source_array()  # reopens the source after unpickling
        if self._reader is None:
            return self._array
        return getattr(self._reader, "direct", self._reader)

    def reopened(self) -> "Volume":
        """This volume opened again by the calling process (a forked DataLoader worker, a Ray
        worker: own file handles and zarr IO loop, none shared with the parent), checked to be the
        same shape, dtype and xtrain attributes (statistics, classes) as when it was first opened
        (``InvalidInputError``: it was written again meanwhile; run again).  An in-memory volume
        (``array_volume``) is returned as it is."""
        if self.kind == "array":
            return self
        from . import open_volume

        fresh = self._check_unchanged(open_volume(self.spec, **self.options))
        if json.dumps(fresh.info, sort_keys=True, default=str) != json.dumps(self.info, sort_keys=True, default=str):
            raise InvalidInputError(f"'{self.spec}' changed since it was opened (its xtrain attributes differ: "
                                    "written again?); run again")
        out = dataclasses.replace(self)
        out._array, out._reader = fresh._array, fresh._reader
        return out

    def crop(self, z0: int, z1: int) -> "Volume":
        """The view of slices z0 .. z1 - 1 (a ``z_range``; the mask and image are cropped alike); nothing is read."""
        if not 0 <= z0 < z1 <= self.shape[0]:
            raise InvalidInputError(
                f"z range {z0},{z1} is outside '{self.spec}' (0..{self.shape[0]}); give 0 <= Z0 < Z1 <= {self.shape[0]}"
            )
        self._source_array()  # opened once, shared by the views
        return self._copy(shape=(z1 - z0, *self.shape[1:]), z_offset=self.z_offset + z0,
                          mask=self.mask.crop(z0, z1) if self.mask is not None else None,
                          image=self.image.crop(z0, z1) if self.image is not None else None)

    @property
    def classes(self) -> list[str] | None:
        classes = self.info.get("classes")
        return list(classes) if classes else None

    @property
    def stats(self) -> dict[str, Any]:
        """The sample statistics: a normalised view's (what its mapping was chosen from), else a
        store's from ingest ({} for other formats: compute them with ``xtrain.data.stats.volume_stats``)."""
        if self.sample_stats is not None:
            return dict(self.sample_stats)
        return dict(self.info.get("stats") or {})

    def __len__(self) -> int:
        return self.shape[0]

    def planes(self, z0: int, z1: int) -> Box:
        """The box of whole planes z0 .. z1 - 1: ((z0, z1), (0, Y), (0, X))."""
        return ((z0, z1), (0, self.shape[1]), (0, self.shape[2]))

    def read(self, box: Box) -> np.ndarray:
        """The box ((z0, z1), (y0, y1), (x0, x1)) as numpy (z, y, x) of ``dtype``, read directly from the
        source (no Dask graph per box), through the view.  Raises ``IndexError`` outside the volume."""
        (z0, z1), (y0, y1), (x0, x1) = ((int(a), int(b)) for a, b in box)
        if not all(0 <= a <= b <= n for (a, b), n in zip(((z0, z1), (y0, y1), (x0, x1)), self.shape)):
            raise IndexError(f"box {box} outside a volume of shape {self.shape}")
        self._source_array()  # reopens the source after unpickling
        zs = slice(z0 + self.z_offset, z1 + self.z_offset)
        if self._reader is None:
            raw = np.asarray(self._array[zs, y0:y1, x0:x1].compute(scheduler="synchronous"))
        else:
            raw = np.asarray(self._reader[zs, y0:y1, x0:x1]).astype(self.raw_dtype, copy=False)
        if self.lut is not None:
            return map_labels(raw, self.lut, self, z0, y0, x0)
        if self.mapping is not None:
            mask = self.mask.read(box) if self.mask is not None else None
            return apply_mapping(raw, self.mapping, mask)
        return raw

    def where(self, z: int) -> str:
        """Where slice z (of this view) lives, for error messages (its file for a slice folder)."""
        z = z + self.z_offset
        files = self.provenance.get("files")
        if isinstance(files, list) and z < len(files):
            return f"'{files[z]}'"
        return f"'{self.spec}'"


def array_volume(array: Any, spec: str = "array", **meta: Any) -> Volume:
    """A ``Volume`` over an in-memory (Z, Y, X) numpy or dask array (tests, validation slabs, derived volumes)."""
    import dask.array as da

    if array.ndim != 3:
        raise InvalidInputError(f"a volume must be 3D (Z, Y, X), got shape {tuple(array.shape)}")
    arr = array if isinstance(array, da.Array) else da.from_array(np.asarray(array), chunks=z_chunks(
        array.shape, np.dtype(array.dtype).itemsize))
    vol = Volume(spec, "array", tuple(int(s) for s in arr.shape), np.dtype(arr.dtype), **meta)
    vol._array = arr
    return vol


# ----------------------------------------------------------------------------- class ids

UNMAPPED = 256  # lookup-table entry of a raw value that is not allowed: no uint8 class id (nor IGNORE) can equal it


def label_lut(dtype: Any, label_map: dict[int, int] | None, num_classes: int, spec: str,
              unlabelled: int | None = None) -> np.ndarray:
    """The one lookup table raw label value -> class id: uint16, indexed by the raw value.

    Entries: a class id 0..num_classes-1; ``IGNORE`` (``xtrain.data.labels``, 255) for the raw value
    ``unlabelled`` (not labelled: napari's Labels layer writes 0 for unpainted voxels); ``UNMAPPED``
    (256, outside uint8) for every other value, which ``map_labels`` refuses.  So an unlabelled voxel
    is never an error and a value that is not allowed is never taken for an unlabelled one.
    Without a map the raw values must already be class ids 0..num_classes-1.  Labels are uint8 or
    uint16 (any other dtype is refused: a float label image is a mistake).  Raises
    ``InvalidInputError`` for a class id out of range, a raw value the dtype cannot hold, or an
    ``unlabelled`` value that is also a class (a key of the map, or a class id without one).
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "u" or dtype.itemsize > 2:
        raise InvalidInputError(f"labels '{spec}' have dtype {dtype}; labels must be uint8 or uint16 integer images")
    if num_classes >= IGNORE:
        raise InvalidInputError(f"{num_classes} classes given; at most {IGNORE - 1} are supported")
    n_raw = np.iinfo(dtype).max + 1
    lut = np.full(n_raw, UNMAPPED, dtype=np.uint16)
    classes = dict(label_map) if label_map else {i: i for i in range(num_classes)}
    for raw, cls in classes.items():
        if not 0 <= cls < num_classes:
            raise InvalidInputError(f"--label-map sends {raw} to class {cls}, but there are {num_classes} classes: use "
                                    f"class ids 0..{num_classes - 1} or pass --classes")
        if not 0 <= raw < n_raw:
            raise InvalidInputError(f"--label-map key {raw} can never occur in {dtype} labels '{spec}'; use raw values "
                                    f"0..{n_raw - 1}")
        lut[raw] = cls
    if unlabelled is not None:
        if not 0 <= unlabelled < n_raw:
            raise InvalidInputError(f"--unlabelled {unlabelled} can never occur in {dtype} labels '{spec}'; give a raw "
                                    f"value 0..{n_raw - 1}")
        if unlabelled in classes:
            what = (f"also in --label-map ({unlabelled}:{classes[unlabelled]})" if label_map else
                    f"class id {unlabelled} (without --label-map the raw values 0..{num_classes - 1} are the class ids)")
            raise InvalidInputError(f"--unlabelled {unlabelled} is {what}; a value cannot mean both a class and "
                                    "'not labelled': drop it from one of them")
        lut[unlabelled] = IGNORE
    return lut


def map_labels(raw: np.ndarray, lut: np.ndarray, volume: Volume, z0: int, y0: int = 0, x0: int = 0) -> np.ndarray:
    """(z, y, x) raw labels of the box at (z0, y0, x0) of ``volume`` -> uint8 class ids (``IGNORE`` where
    unlabelled); ``LabelValueError`` naming the first value that is not allowed and where it is."""
    ids = lut[raw]
    bad = ids == UNMAPPED
    if bad.any():
        z, y, x = (int(v[0]) for v in np.nonzero(bad))
        valid = ",".join(str(v) for v in np.flatnonzero((lut != UNMAPPED) & (lut != IGNORE)))
        unlabelled = np.flatnonzero(lut == IGNORE)
        extra = f", unlabelled: {','.join(str(v) for v in unlabelled)}" if unlabelled.size else ""
        raise LabelValueError(
            f"label value {int(raw[z, y, x])} at z={volume.z_offset + z0 + z} y={y0 + y} x={x0 + x} "
            f"({volume.where(z0 + z)}) is not a class; valid raw values: {valid}{extra} "
            "(map raw values with --label-map RAW:CLASS,..., mark unpainted ones with --unlabelled V)"
        )
    return ids.astype(np.uint8)


# ----------------------------------------------------------------------------- helpers for the backends


def check_dtype(dtype: Any, where: str) -> tuple[np.dtype, np.dtype]:
    """(source dtype, dtype the volume is read as): float64 -> float32; anything unsupported refused."""
    dtype = np.dtype(dtype)
    if dtype.byteorder not in ("=", "|"):
        dtype = dtype.newbyteorder("=")
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"{where} has dtype {dtype}; supported are uint8/16/32, int8/16/32, float32 and float64: convert it"
        )
    return dtype, (np.dtype(np.float32) if dtype == np.float64 else dtype)


def select_axes(axes: str, shape: tuple[int, ...], channel: int | None, time: int | None,
                where: str) -> tuple[tuple[Any, ...], int]:
    """Index tuple that turns an array with ``axes`` into (Z, Y, X), and the position of z.

    ``axes``: one letter per dimension (tifffile / OME / NeXus style; 'Y' and 'X' last).  C
    and T with more than one entry need ``channel``/``time``; every other axis longer than
    1 is z, and there may be only one.  The returned index holds ints for the selected and
    squeezed axes and ``None`` where z (and then Y, X) go.
    """
    axes = axes.upper()
    if len(axes) != len(shape):
        raise InvalidInputError(f"{where}: axes '{axes}' do not match the shape {shape}")
    if "S" in axes and shape[axes.index("S")] > 1:
        raise InvalidInputError(f"{where} holds {shape[axes.index('S')]} samples per pixel (RGB); export "
                                "single-channel grey values")
    index: list[Any] = []
    z_axes = []
    for i, (a, n) in enumerate(zip(axes, shape)):
        if a in "YX":
            index.append(None)
        elif a in "CT":
            pick = channel if a == "C" else time
            flag = "--channel" if a == "C" else "--time"
            if pick is None:
                if n > 1:
                    raise InvalidInputError(
                        f"{where} has axes {axes} (shape {shape}) with {n} {'channels' if a == 'C' else 'time points'}"
                        f"; choose one with {flag} 0..{n - 1}"
                    )
                pick = 0
            if not 0 <= pick < n:
                raise InvalidInputError(f"{where}: {flag} {pick} is outside 0..{n - 1} (axes {axes}, shape {shape})")
            index.append(int(pick))
        elif n > 1:
            z_axes.append(i)
            index.append(None)
        else:
            index.append(0)
    if channel is not None and "C" not in axes:
        raise InvalidInputError(f"{where} has no channel axis (axes {axes}); drop --channel")
    if time is not None and "T" not in axes:
        raise InvalidInputError(f"{where} has no time axis (axes {axes}); drop --time")
    if len(z_axes) > 1:
        names = "".join(axes[i] for i in z_axes)
        raise InvalidInputError(f"{where} has axes {axes} (shape {shape}): {names} are all longer than 1, so z is "
                                "ambiguous; export one 3-D volume")
    if axes[-2:] != "YX" and not (axes[-3:-1] == "YX" and axes[-1] == "S"):
        raise InvalidInputError(f"{where} has axes {axes}; the last two must be Y and X")
    return tuple(index), (z_axes[0] if z_axes else -1)


class Reader:
    """Base of the backends' array-likes for ``dask.array.from_array``: (Z, Y, X) reads by slicing."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    ndim = 3

    def __getitem__(self, key) -> np.ndarray:  # pragma: no cover - implemented by the backends
        raise NotImplementedError


class HandleReader(Reader):
    """A ``Reader`` that keeps an open file handle per thread in ``self._local`` (Dask reads
    from several threads; h5py and tifffile handles are not shared).  Pickles without the
    handles (Ray workers, Dask-on-Ray) and opens new ones where it is unpickled."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def z_chunks(shape: tuple[int, int, int], itemsize: int, native_z: int = 1) -> tuple[int, int, int]:
    """Dask chunks: whole planes, a multiple of the source's native z chunk, about TARGET_CHUNK_BYTES."""
    plane = max(1, shape[1] * shape[2] * itemsize)
    depth = max(native_z, (TARGET_CHUNK_BYTES // plane) // max(native_z, 1) * max(native_z, 1))
    return (max(1, min(depth, shape[0])), shape[1], shape[2])


def as_dask(reader: Reader, chunks: tuple[int, ...], name: str):
    """A dask.array over ``reader`` (read concurrently: the readers are thread-safe)."""
    import dask.array as da
    from dask.base import tokenize

    return da.from_array(reader, chunks=chunks, lock=False, asarray=True, fancy=False,
                         name=f"volume-{tokenize(name, reader.shape, str(reader.dtype))}")


def make_volume(spec: str, kind: str, reader: Reader, source_dtype: np.dtype, *, chunks=None,
                voxel_size_zyx_nm=None, provenance=None, info=None) -> Volume:
    """The ``Volume`` of a backend's reader (float64 sources become float32 lazily)."""
    dtype = np.dtype(np.float32) if source_dtype == np.float64 else np.dtype(source_dtype)
    chunks = chunks or z_chunks(reader.shape, np.dtype(source_dtype).itemsize)
    array = as_dask(reader, chunks, f"{spec}-{kind}")
    if array.dtype != dtype:
        array = array.astype(dtype)
    size = None
    if voxel_size_zyx_nm is not None:
        voxel_size_zyx_nm = tuple(float(v) for v in voxel_size_zyx_nm)
        size = voxel_size_zyx_nm[2]
        if not np.allclose(voxel_size_zyx_nm, size, rtol=0.01):
            log.warning("'%s' has anisotropic voxels %s nm (z, y, x); densities use the in-plane size %.4g nm",
                        spec, ", ".join(f"{v:.4g}" for v in voxel_size_zyx_nm), size)
    prov = {"format": kind, "source_dtype": np.dtype(source_dtype).name, **(provenance or {})}
    vol = Volume(spec, kind, tuple(int(s) for s in reader.shape), dtype, size, voxel_size_zyx_nm, prov, dict(info or {}))
    vol._array, vol._reader = array, reader
    return vol


def unit_to_nm(value: float, unit: str | None) -> float | None:
    """A length in ``unit`` (OME / UDUNITS names, ImageJ 'micron') in nm; None when the unit is unknown."""
    if unit is None:
        return None
    factor = _UNIT_NM.get(str(unit).strip().lower())
    return None if factor is None else float(value) * factor


def missing_codec(exc: BaseException, package: str) -> str | None:
    """The package a decoding error asks for, or None: tifffile names 'imagecodecs' (or fails to import a
    codec module), HDF5 says a filter is not available (``package`` is the backend's codec package)."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(c).__name__}: {c}" for c in chain)
    for name in ("imagecodecs", "hdf5plugin"):
        if name in text:
            return name
    if any(isinstance(c, ImportError) for c in chain):
        return package
    if re.search(r"(requires the|not supported|not implemented|not a known COMPRESSION|filter.*(not available|"
                 r"unavailable)|can't (open|synchronously read).*filter|required filter)", text, re.IGNORECASE):
        return package
    return None


def decode_error(exc: BaseException, where: str, package: str) -> Exception:
    """A one-line error for a failed decode: a missing codec names its package, anything else is corrupt."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    name = missing_codec(exc, package)
    if name is not None:
        return CodecError(f"{where} is compressed with a codec that cannot be loaded ({type(exc).__name__}: {first}); "
                          f"install it with 'pip install {name}' (an xtrain dependency: reinstall xtrain)")
    return CorruptFileError(f"{where} cannot be decoded ({type(exc).__name__}: {first}); the file is corrupt or "
                            "truncated, export it again")
