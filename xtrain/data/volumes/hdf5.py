"""HDF5 / NeXus backend of the volume layer (``open_volume``), through h5py and hdf5plugin.

    open_volume("scan.h5:/entry/data/data")   # a named dataset
    open_volume("scan.nxs")                    # NeXus: default -> NXdata -> signal
    open_volume("tomo.h5")                     # TomoPy / TomocuPy: /exchange/data

Importing hdf5plugin registers the filters beamlines compress with (bitshuffle, LZ4, Blosc,
Zstd ...); a dataset whose filter still cannot be loaded is a ``CodecError`` naming the package.
Without a dataset path the volume is found, in this order, from the NeXus ``default`` and
``signal`` attributes, then ``/exchange/data``, then the only 3-D dataset in the file;
otherwise the error lists the candidates.  4-D and 5-D datasets take ``channel``/``time``
from a NeXus ``axes`` attribute or the Data Exchange convention (theta, z, y, x is not a
volume: a 4-D dataset without axes names is refused with its shape).

The reader reopens the file in every process (h5py handles do not pickle) and holds one
handle per thread: h5py serialises calls internally, so concurrent Dask reads are safe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CorruptFileError, InputNotFoundError, InvalidInputError
from .base import HandleReader, Volume, check_dtype, decode_error, make_volume, select_axes, z_chunks

log = logging.getLogger(__name__)

EXCHANGE = "/exchange/data"


def _h5py():
    import h5py

    try:
        import hdf5plugin  # noqa: F401  (registers the filters on import)
    except ImportError:  # pragma: no cover - a dependency; a filtered dataset then names the package
        log.warning("hdf5plugin is not installed: bitshuffle/LZ4/Blosc compressed datasets cannot be read "
                    "(pip install hdf5plugin)")
    return h5py


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.size == 1:
        return _decode(value.reshape(-1)[0])
    return str(value)


def _datasets(f) -> list[tuple[str, tuple[int, ...]]]:
    found: list[tuple[str, tuple[int, ...]]] = []
    h5py = _h5py()

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
            found.append(("/" + name, tuple(obj.shape)))

    f.visititems(visit)
    return found


def _nexus_signal(f) -> str | None:
    """Path of the NeXus default plottable signal (NXroot@default -> NXentry@default -> NXdata@signal)."""
    node, path = f, ""
    for _ in range(4):  # root -> entry -> (subentry) -> data
        signal = node.attrs.get("signal")
        if signal is not None:
            name = _decode(signal)
            return f"{path}/{name}" if name in node else None
        default = node.attrs.get("default")
        if default is None or _decode(default) not in node:
            return None
        path = f"{path}/{_decode(default)}"
        node = node[_decode(default)]
    return None


def _find(f, path: Path) -> tuple[str, str]:
    """(dataset path, how it was found) when none was named."""
    signal = _nexus_signal(f)
    if signal is not None:
        return signal, "NeXus default/signal"
    if EXCHANGE in f:
        return EXCHANGE, "Data Exchange /exchange/data"
    candidates = _datasets(f)
    three_d = [name for name, shape in candidates if len(shape) == 3]
    if len(three_d) == 1:
        return three_d[0], "the only 3-D dataset"
    higher = [name for name, shape in candidates if len(shape) in (4, 5)]
    if not three_d and len(higher) == 1:
        return higher[0], "the only 3-D to 5-D dataset"
    listed = ", ".join(f"{n} {s}" for n, s in candidates) or "none"
    raise InvalidInputError(f"'{path}' has {len(three_d)} 3-D datasets, so the volume is ambiguous (datasets: "
                            f"{listed}); name one as '{path}:/PATH'")


def _axes(dset, ndim: int, where: str) -> str:
    """Axis letters of a dataset: 3-D is ZYX; 4-D/5-D need NeXus ``axes`` names on its NXdata group."""
    if ndim == 3:
        return "ZYX"
    names = dset.parent.attrs.get("axes")
    if names is not None:
        names = [_decode(n).lower() for n in np.atleast_1d(names)]
        letters = {"z": "Z", "y": "Y", "x": "X", "c": "C", "channel": "C", "channels": "C", "t": "T", "time": "T"}
        if len(names) == ndim and all(n in letters for n in names):
            return "".join(letters[n] for n in names)
    if ndim == 2:
        return "YX"
    raise InvalidInputError(f"{where} is {ndim}-D {tuple(dset.shape)} without NeXus axes names (z, y, x, channel, "
                            "time); write one 3-D (Z, Y, X) dataset, or name its axes")


class Hdf5Reader(HandleReader):
    """One dataset of one file, (Z, Y, X) after ``index``; picklable (path + names only)."""

    def __init__(self, path: Path, name: str, index: tuple, zaxis: int, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.name, self.index, self.zaxis, self.shape, self.dtype = path, name, index, zaxis, shape, dtype
        super().__init__()

    def _dataset(self):
        dset = getattr(self._local, "dset", None)
        if dset is None:
            f = _h5py().File(self.path, "r")
            self._local.file, dset = f, f[self.name]
            self._local.dset = dset
        return dset

    def __getitem__(self, key) -> np.ndarray:
        zs, ys, xs = key
        full: list[Any] = []
        spatial = iter((zs, ys, xs) if self.zaxis >= 0 else (ys, xs))
        for i in self.index:
            full.append(next(spatial) if i is None else i)
        try:
            data = np.asarray(self._dataset()[tuple(full)])
        except Exception as exc:
            raise decode_error(exc, f"'{self.path}:{self.name}'", "hdf5plugin") from exc
        if self.zaxis < 0:
            data = data[np.newaxis][zs]
        return data


def open_hdf5(spec: str, path: Path, dataset: str | None, channel: int | None, time: int | None) -> Volume:
    """The named (or discovered) dataset of an HDF5 / NeXus file as a ``Volume``."""
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptFileError(f"'{path}' is not a readable HDF5 file ({exc}); check or copy it again") from exc
    with f:
        how = "named"
        if dataset is None:
            dataset, how = _find(f, path)
        name = dataset if dataset.startswith("/") else "/" + dataset
        if name not in f or not isinstance(f[name], h5py.Dataset):
            three_d = [n for n, s in _datasets(f) if len(s) == 3]
            raise InputNotFoundError(f"'{path}' has no dataset '{name}'; its 3-D datasets: "
                                     f"{', '.join(three_d) or 'none'} (give '{path}:/PATH')")
        dset = f[name]
        where = f"'{path}:{name}'"
        source_dtype, _ = check_dtype(dset.dtype, where)
        axes = _axes(dset, dset.ndim, where)
        index, zaxis = select_axes(axes, tuple(dset.shape), channel, time, where)
        yx = [n for a, n in zip(axes, dset.shape) if a in "YX"]
        shape = (int(dset.shape[zaxis]) if zaxis >= 0 else 1, int(yx[0]), int(yx[1]))
        native_z = int(dset.chunks[zaxis]) if dset.chunks and zaxis >= 0 else 1
        source_shape = [int(s) for s in dset.shape]
        filters = [str(k) for k in (dset.compression, *(["shuffle"] if dset.shuffle else []))] if dset.compression \
            else []
        voxel = None
        for key in ("voxel_size_nm", "pixel_size_nm"):
            if key in dset.attrs:
                v = np.atleast_1d(dset.attrs[key]).astype(float)
                voxel = tuple(v) if v.size == 3 else (float(v[0]),) * 3
    reader = Hdf5Reader(path.resolve(), name, index, zaxis, shape, source_dtype)
    return make_volume(spec, "hdf5", reader, source_dtype, chunks=z_chunks(shape, source_dtype.itemsize, native_z),
                       voxel_size_zyx_nm=voxel, provenance={
                           "files": str(path.resolve()), "dataset": name, "found_by": how, "axes": axes,
                           "source_shape": source_shape, "filters": filters,
                           "channel": channel, "time": time})

