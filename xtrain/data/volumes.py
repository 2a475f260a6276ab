"""One volume layer: every format a beamline writes -> a lazy ``dask.array`` (Z, Y, X) + metadata.

    vol = open_volume("scan.zarr")                      # xtrain store (its image)
    vol = open_volume("scan.zarr", dataset="labels")    # ... its labels
    vol = open_volume("scan/images")                    # folder of TIFF slices (natural order)
    vol = open_volume("hyper.tif", channel=1)           # ImageJ hyperstack ZCYX: channel 1
    vol = open_volume("tomo.h5:/exchange/data")         # HDF5 / NeXus (bitshuffle, LZ4, Blosc ...)
    vol = open_volume("image.ome.zarr")                 # OME-Zarr 0.4 / 0.5: level 0
    vol.array        # dask.array (Z, Y, X), native dtype (float64 -> float32), chunked in z
    vol.shape, vol.dtype, vol.voxel_size_nm, vol.provenance
    vol.read(z0, z1) # numpy (z1 - z0, Y, X)

Formats (found from the path, not from a flag):

* **xtrain store** (a Zarr v3 group with ``xtrain`` attributes): opened through
  ``xtrain.data.store.open_store``; ``dataset="labels"`` picks the labels.
* **TIFF** through tifffile's *series* (never the page count): multi-page, BigTIFF,
  OME-TIFF, ImageJ stacks and hyperstacks, a folder of single-slice files in natural order
  (``s2`` before ``s10``; dot-files such as ``._s1.tif`` skipped) or a quoted glob.
  Axes other than Y and X: ``C`` and ``T`` with more than one entry need ``channel`` /
  ``time`` (a hyperstack's channels are never interleaved into z); exactly one remaining
  axis of length > 1 is z.  Every codec comes through imagecodecs; a missing codec names
  the package instead of calling the file corrupt.
* **HDF5 / NeXus** through h5py with hdf5plugin's filters: ``file.h5:/path`` names the
  dataset (or ``dataset=``).  Without one: the NeXus ``default``/``signal`` attributes,
  then ``/exchange/data`` (TomoPy/TomocuPy), then the only 3-D dataset; otherwise the
  error lists the candidates.
* **Zarr v2 and v3** arrays and groups (a group: ``dataset=`` or its only 3-D array).
* **OME-Zarr 0.4 (Zarr v2) and 0.5 (Zarr v3)** images: level 0 of the first multiscale,
  voxel size from its ``scale`` transforms and axis units (parsed with ome-zarr-models).

Dtypes: uint8/16/32, int8/16/32, float32 and float64 (read as float32; the statistics pass
checks that no value overflows float32).  NaN/Inf are checked by the statistics pass
(``xtrain.data.stats.volume_stats``), which runs as a Dask graph over ``array``.

``Volume`` pickles as its spec and options and reopens itself (h5py and tifffile handles are
never pickled), so it can travel to Ray workers.  Errors are ``XtrainError`` subclasses, one
line naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InputNotFoundError, InvalidInputError, MissingDataError  # noqa: F401

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "int8", "int16", "int32",
                                                "float32", "float64"))
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx", ".nx5", ".cxi", ".he5")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_GLOB_CHARS = re.compile(r"[*?\[]")
_HDF5_SPEC = re.compile(r"^(?P<file>.*?\.(?:h5|hdf5|hdf|nxs|nx|nx5|cxi|he5)):(?P<path>/.*)$", re.IGNORECASE)
TARGET_CHUNK_BYTES = 8 * 2**20  # Dask chunks grow in z to about this size (whole shards of a store: 32x512x512 uint16 = 16 MB)
_UNIT_NM = {"angstrom": 0.1, "nanometer": 1.0, "nm": 1.0, "micrometer": 1e3, "micron": 1e3, "um": 1e3, "µm": 1e3,
            "\\u00B5m": 1e3, "millimeter": 1e6, "mm": 1e6, "centimeter": 1e7, "cm": 1e7, "meter": 1e9, "m": 1e9}


class CodecError(InvalidInputError):
    """A compressed file whose codec cannot be loaded (a missing package, not a corrupt file)."""


# ----------------------------------------------------------------------------- the volume


@dataclass
class Volume:
    """A (Z, Y, X) volume of any input format, as a lazy Dask array plus what is known about it.

    ``shape``/``dtype`` are those of ``array`` (float64 sources are read as float32).
    ``voxel_size_nm``: the in-plane voxel edge in nm (None when the file does not say);
    ``voxel_size_zyx_nm`` all three when known.  ``provenance``: format, file(s), dataset,
    channel/time, the source's axes and dtype, for the output's attributes.  ``info``: an
    xtrain store's attribute block ({} for other formats).
    """

    spec: str
    kind: str  # "store" | "tiff" | "hdf5" | "zarr" | "ome-zarr"
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size_nm: float | None = None
    voxel_size_zyx_nm: tuple[float, float, float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # dataset/channel/time: how to reopen
    z_offset: int = 0  # a crop: slice 0 of this volume is slice z_offset of the source
    _array: Any = field(default=None, repr=False, compare=False)
    _reader: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = state["_reader"] = None  # reopened lazily where it is unpickled
        return state

    @property
    def array(self):
        """The lazy ``dask.array`` (Z, Y, X) of ``dtype`` (the crop's slices only)."""
        if self._array is None:
            if self._reader is not None:  # an in-memory volume (``array_volume``)
                raise InvalidInputError(f"'{self.spec}' is an in-memory volume and cannot be reopened")
            fresh = self._check_unchanged(open_volume(self.spec, **self.options))
            self._array, self._reader = fresh._array, fresh._reader
        if self.z_offset or self._array.shape[0] != self.shape[0]:
            return self._array[self.z_offset:self.z_offset + self.shape[0]]
        return self._array

    def _check_unchanged(self, fresh: "Volume") -> "Volume":
        if fresh.shape[1:] != self.shape[1:] or fresh.shape[0] < self.z_offset + self.shape[0] \
                or fresh.dtype != self.dtype:
            raise InvalidInputError(f"'{self.spec}' changed since it was opened ({self.shape} {self.dtype} -> "
                                    f"{fresh.shape} {fresh.dtype}); run again")
        return fresh

    @property
    def source(self) -> Any:
        """The source read without Dask, for many small box reads (a Dask graph per box costs more
        than the read: the training sampler's patches).  ``source[z0:z1, y0:y1, x0:x1]`` is numpy in
        the source's dtype, indexed like the uncropped source (add ``z_offset``).  A Zarr (Z, Y, X)
        array (xtrain stores, plain Zarr) is returned itself, so a chunk cache sees its ``chunks``
        and ``shards`` (``xtrain.data.chunkcache``); other formats give their reader, an in-memory
        volume its array."""
        self.array  # noqa: B018  (reopens the source after unpickling)
        if self._reader is None:
            return self._array
        return getattr(self._reader, "direct", self._reader)

    def reopened(self) -> "Volume":
        """This volume opened again by the calling process (a forked DataLoader worker, a Ray
        worker: own file handles and zarr IO loop, none shared with the parent), checked to be the
        same shape, dtype and xtrain attributes (statistics, classes) as when it was first opened
        (``InvalidInputError``: it was written again meanwhile; run again).  An in-memory volume (``array_volume``) is returned as it is."""
        if self.kind == "array":
            return self
        fresh = self._check_unchanged(open_volume(self.spec, **self.options))
        if json.dumps(fresh.info, sort_keys=True, default=str) != json.dumps(self.info, sort_keys=True, default=str):
            raise InvalidInputError(f"'{self.spec}' changed since it was opened (its xtrain attributes differ: "
                                    "written again?); run again")
        out = Volume(**{k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_")})
        out._array, out._reader = fresh._array, fresh._reader
        return out

    def crop(self, z0: int, z1: int) -> "Volume":
        """The view of slices z0 .. z1 - 1 (a ``z_range``); nothing is read."""
        if not 0 <= z0 < z1 <= self.shape[0]:
            raise InvalidInputError(
                f"z range {z0},{z1} is outside '{self.spec}' (0..{self.shape[0]}); give 0 <= Z0 < Z1 <= {self.shape[0]}"
            )
        self.array  # noqa: B018  (opened once, shared by the views)
        out = Volume(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        out.shape = (z1 - z0, *self.shape[1:])
        out.z_offset = self.z_offset + z0
        return out

    @property
    def classes(self) -> list[str] | None:
        classes = self.info.get("classes")
        return list(classes) if classes else None

    @property
    def stats(self) -> dict[str, Any]:
        """A store's intensity statistics from ingest ({} for other formats: compute them)."""
        return dict(self.info.get("stats") or {})

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices z0 .. z1 - 1 as numpy (z1 - z0, Y, X) of ``dtype`` (computed from ``array``)."""
        if not 0 <= z0 <= z1 <= self.shape[0]:
            raise IndexError(f"slices {z0}:{z1} outside a volume of {self.shape[0]} slices")
        return self.read_box(((z0, z1), (0, self.shape[1]), (0, self.shape[2])))

    def read_box(self, box) -> np.ndarray:
        """The box ((z0, z1), (y0, y1), (x0, x1)) as numpy, read directly (no Dask graph per box)."""
        (z0, z1), (y0, y1), (x0, x1) = box
        self.array  # noqa: B018  (reopens the source after unpickling)
        z0, z1 = z0 + self.z_offset, z1 + self.z_offset
        if self._reader is None:
            return np.asarray(self._array[z0:z1, y0:y1, x0:x1].compute(scheduler="synchronous"))
        return np.asarray(self._reader[z0:z1, y0:y1, x0:x1]).astype(self.dtype, copy=False)

    def where(self, z: int) -> str:
        """Where slice z (of this view) lives, for error messages (its file for a slice folder)."""
        z = z + self.z_offset
        files = self.provenance.get("files")
        if isinstance(files, list) and z < len(files):
            return f"'{files[z]}'"
        return f"'{self.spec}'"


def open_volume(spec: str | os.PathLike | Volume, *, dataset: str | None = None, channel: int | None = None,
                time: int | None = None, allow_missing: bool = False) -> Volume:
    """Open any supported volume lazily (headers only); see the module docstring for the formats.

    ``dataset``: the HDF5 dataset / Zarr array path inside the file (also ``file.h5:/path``),
    or ``"labels"`` for an xtrain store's labels.  ``channel``/``time``: index along a C/T
    axis of a TIFF hyperstack or a 4-D/5-D array (required when that axis has more than one
    entry).  Raises ``InputNotFoundError``, ``InvalidInputError`` (shape, dtype, axes),
    ``CorruptFileError`` or ``CodecError``: one line naming the file and the fix.

    Missing data is refused, never filled in (``MissingDataError``, naming the part and its z
    range): absent or truncated Zarr shards/chunks, HDF5 virtual-dataset sources and external
    links whose files are not there, gaps in a numbered slice folder.  ``allow_missing``
    (``--allow-missing``) accepts what may be meant: a foreign Zarr's absent chunks (never written:
    read as the fill value), a virtual dataset's absent sources (HDF5's fill value), a slice
    folder's number gaps (the slices present, in order), each with a warning; damage to an xtrain
    store is refused all the same.  What is checked at open and at read: the backends' docstrings.
    """
    if isinstance(spec, Volume):
        return spec
    text = os.fspath(spec)
    path = Path(text).expanduser()
    options = {"dataset": dataset, "channel": channel, "time": time, "allow_missing": allow_missing or None}
    m = _HDF5_SPEC.match(text)
    if m and not path.exists():
        if dataset is not None and dataset != m["path"]:
            raise InvalidInputError(f"'{text}' names dataset {m['path']} but dataset={dataset} was also given; "
                                    "give one of them")
        path, dataset = Path(m["file"]).expanduser(), m["path"]
    if path.is_dir():
        if _is_zarr_dir(path):
            from .zarrio import open_zarr

            vol = open_zarr(text, path, dataset, channel, time, allow_missing)
        elif dataset is not None:
            raise InvalidInputError(f"dataset={dataset} was given but '{path}' is a folder of TIFF slices")
        else:
            from .tiff import open_tiff

            vol = open_tiff(text, channel, time, allow_missing)
    elif path.is_file():
        if _is_hdf5(path):
            from .hdf5 import open_hdf5

            vol = open_hdf5(text, path, dataset, channel, time, allow_missing)
        elif path.suffix.lower() in TIFF_SUFFIXES or _is_tiff(path):
            if dataset is not None:
                raise InvalidInputError(f"dataset={dataset} was given but '{path}' is a TIFF file; drop it")
            from .tiff import open_tiff

            vol = open_tiff(text, channel, time)
        else:
            raise InvalidInputError(f"'{path}' is not a TIFF, HDF5/NeXus or Zarr volume; convert it to one of them")
    elif _GLOB_CHARS.search(text):
        from .tiff import open_tiff

        vol = open_tiff(text, channel, time, allow_missing)
    elif path.suffix == ".zarr":
        raise InputNotFoundError(f"'{path}' does not exist; give a Zarr store or an OME-Zarr image")
    else:
        raise InputNotFoundError(f"'{text}' does not exist; give a TIFF file, slice folder or glob, an HDF5/NeXus "
                                 "file (file.h5:/path), a Zarr / OME-Zarr store or an xtrain store")
    vol.options = {k: v for k, v in options.items() if v is not None}
    if "dataset" in vol.options or dataset is not None:
        vol.options["dataset"] = dataset
    log.debug("opened %s: %s %s %s", vol.kind, text, vol.shape, vol.dtype)
    return vol


def array_volume(array: Any, spec: str = "array", **meta: Any) -> Volume:
    """A ``Volume`` over an in-memory (Z, Y, X) numpy or dask array (tests, derived volumes)."""
    import dask.array as da

    if array.ndim != 3:
        raise InvalidInputError(f"a volume must be 3D (Z, Y, X), got shape {tuple(array.shape)}")
    arr = array if isinstance(array, da.Array) else da.from_array(np.asarray(array), chunks=z_chunks(
        array.shape, np.dtype(array.dtype).itemsize))
    vol = Volume(spec, "array", tuple(int(s) for s in arr.shape), np.dtype(arr.dtype), **meta)
    vol._array = arr
    return vol


# ----------------------------------------------------------------------------- class ids

UNMAPPED = 255  # lookup-table entry for raw label values that are not in the map


def label_lut(dtype: Any, label_map: dict[int, int] | None, num_classes: int, spec: str) -> np.ndarray:
    """The one lookup table raw label value -> class id (``UNMAPPED`` where the value is not allowed).

    Without a map the raw values must already be class ids 0..num_classes-1.  Labels are
    uint8 or uint16 (any other dtype is refused: a float label image is a mistake).
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "u" or dtype.itemsize > 2:
        raise InvalidInputError(f"labels '{spec}' have dtype {dtype}; labels must be uint8 or uint16 integer images")
    if num_classes >= UNMAPPED:
        raise InvalidInputError(f"{num_classes} classes given; at most {UNMAPPED - 1} are supported")
    n_raw = np.iinfo(dtype).max + 1
    lut = np.full(n_raw, UNMAPPED, dtype=np.uint8)
    for raw, cls in (dict(label_map) if label_map else {i: i for i in range(num_classes)}).items():
        if not 0 <= cls < num_classes:
            raise InvalidInputError(f"--label-map sends {raw} to class {cls}, but there are {num_classes} classes: use "
                                    f"class ids 0..{num_classes - 1} or pass --classes")
        if not 0 <= raw < n_raw:
            raise InvalidInputError(f"--label-map key {raw} can never occur in {dtype} labels '{spec}'; use raw values "
                                    f"0..{n_raw - 1}")
        lut[raw] = cls
    return lut


def map_labels(raw: np.ndarray, lut: np.ndarray, volume: Volume, z0: int) -> np.ndarray:
    """(n, Y, X) raw labels (slices z0.. of ``volume``) -> uint8 class ids; LabelValueError at the first bad value."""
    from ..errors import LabelValueError

    ids = lut[raw]
    bad = ids == UNMAPPED
    if bad.any():
        z, y, x = (int(v[0]) for v in np.nonzero(bad))
        valid = ",".join(str(v) for v in np.flatnonzero(lut != UNMAPPED))
        raise LabelValueError(
            f"label value {int(raw[z, y, x])} at z={volume.z_offset + z0 + z} y={y} x={x} "
            f"({volume.where(z0 + z)}) is not a class; valid raw values: {valid} "
            "(map raw values with --label-map RAW:CLASS,...)"
        )
    return ids


# ----------------------------------------------------------------------------- helpers for the backends


def _is_zarr_dir(path: Path) -> bool:
    return any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup", ".zattrs"))


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89HDF\r\n\x1a\n" or path.suffix.lower() in HDF5_SUFFIXES


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


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


def natural_key(path: str | os.PathLike) -> list:
    """Sort key that orders 'slice_2' before 'slice_10' (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", Path(path).name)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts]


def glob_files(pattern: str) -> list[Path]:
    """Files matching a glob, naturally sorted, dot-files skipped."""
    files = [Path(p) for p in globlib.glob(os.path.expanduser(pattern)) if Path(p).is_file()]
    return sorted((f for f in files if not f.name.startswith(".")), key=natural_key)


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


# ----------------------------------------------------------------------------- running the graphs


_schedulers: list[Any] = []  # pushed and popped by use_scheduler only (the edges decide)


@contextlib.contextmanager
def use_scheduler(sched: Any) -> Iterator[Any]:
    """Run the volume-wide graphs of ``compute`` with the Dask scheduler ``sched`` while the block runs.

    For the edges (``xtrain.runtime.volume_scheduler``: the CLI and ``jobs/``), not for library
    code.  Only ``compute`` reads it: other Dask calls (``da.store`` of a pyramid) keep Dask's
    own default, so a zarr array, which ``ray.util.dask`` cannot rebuild as a task argument, is
    never handed to Ray.  Nested blocks restore the outer choice."""
    _schedulers.append(sched)
    try:
        yield sched
    finally:
        _schedulers.pop()


def scheduler() -> Any:
    """The Dask scheduler volume-wide graphs run with: the innermost ``use_scheduler``'s, else
    ``"threads"`` (Dask's threaded scheduler).  Library code joins no cluster and sets nothing:
    the CLI sets Ray's ``ray.util.dask.ray_dask_get`` inside a Ray cluster, once at start."""
    return _schedulers[-1] if _schedulers else "threads"


_configured_scheduler = scheduler  # compute's ``scheduler`` argument shadows the name


def compute(*graphs: Any, scheduler: Any = None) -> tuple[Any, ...]:
    """``dask.compute`` of ``graphs`` with ``scheduler`` (default: the configured one, ``scheduler()``).

    On threads, the pool is this call's own and is joined before returning or raising: when
    one task fails, Dask raises at once while its siblings still run, and a caller that then
    removes a partial output (``write_store``) must not see them write into it afterwards.
    """
    import dask

    sched = _configured_scheduler() if scheduler is None else scheduler
    if sched not in ("threads", "threading"):
        return dask.compute(*graphs, scheduler=sched)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # exit = shutdown(wait=True)
        return dask.compute(*graphs, scheduler="threads", pool=pool)
