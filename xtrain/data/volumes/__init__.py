"""One volume layer: every format a beamline writes -> a lazy ``dask.array`` (Z, Y, X) + metadata.

    vol = open_volume("scan.zarr")                      # xtrain store (its image)
    vol = open_volume("scan.zarr", dataset="labels")    # ... its labels
    vol = open_volume("scan/images")                    # folder of TIFF slices (natural order)
    vol = open_volume("hyper.tif", channel=1)           # ImageJ hyperstack ZCYX: channel 1
    vol = open_volume("tomo.h5:/exchange/data")         # HDF5 / NeXus (bitshuffle, LZ4, Blosc ...)
    vol = open_volume("image.ome.zarr")                 # OME-Zarr 0.4 / 0.5: level 0
    vol.array        # dask.array (Z, Y, X), native dtype (float64 -> float32), chunked in z
    vol.shape, vol.dtype, vol.voxel_size_nm, vol.provenance
    vol.read(vol.planes(z0, z1))   # numpy (z1 - z0, Y, X); any box ((z0, z1), (y0, y1), (x0, x1))

Formats (found from the path by ``formats.detect``, not from a flag), one backend each
(``BACKENDS``):

* **xtrain store** (a Zarr v3 group with ``xtrain`` attributes): opened through
  ``xtrain.data.store.open_store``; ``dataset="labels"`` picks the labels.
* **TIFF** through tifffile's *series* (never the page count): multi-page, BigTIFF,
  OME-TIFF, ImageJ stacks and hyperstacks (also ImageJ's one-IFD layout for big stacks), a folder of single-slice files in natural order
  (``s2`` before ``s10``; dot-files such as ``._s1.tif`` skipped) or a quoted glob.
  Axes other than Y and X: ``C`` and ``T`` with more than one entry need ``channel`` /
  ``time`` (a hyperstack's channels are never interleaved into z); exactly one remaining
  axis of length > 1 is z.  Every codec comes through imagecodecs; a missing codec names
  the package instead of calling the file corrupt.
* **HDF5 / NeXus** through h5py with hdf5plugin's filters: ``file.h5:/path`` names the
  dataset (or ``dataset=``).  Without one: the NeXus ``default``/``signal`` chain (the root's
  ``default`` optional with a single NXentry), then ``/exchange/data`` (TomoPy/TomocuPy), then
  the only 3-D dataset; otherwise the error lists the candidates.
* **Zarr v2 and v3** arrays and groups (a group: ``dataset=`` or its only 3-D array).
* **OME-Zarr 0.4 (Zarr v2) and 0.5 (Zarr v3)** images: level 0 of the first multiscale,
  voxel size from its ``scale`` transforms and axis units (parsed with ome-zarr-models).

Dtypes: uint8/16/32, int8/16/32, float32 and float64 (read as float32; the statistics pass
checks that no value overflows float32).  NaN/Inf are checked by the statistics pass
(``xtrain.data.stats.volume_stats``), which runs as a Dask graph over ``array``.

The backends (tiff.py, hdf5.py, zarr.py) import ``base`` and ``formats`` only; this module
imports them, so there is no import cycle.  Errors are ``XtrainError`` subclasses, one line
naming the file and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ...errors import InputNotFoundError, InvalidInputError
from .base import (UNMAPPED, CodecError, HandleReader, Reader, Volume, array_volume, as_dask, check_dtype,
                   decode_error, label_lut, make_volume, map_labels, select_axes, unit_to_nm, z_chunks)
from .formats import detect, is_store

log = logging.getLogger(__name__)

__all__ = ["UNMAPPED", "BACKENDS", "CodecError", "HandleReader", "Reader", "Volume", "array_volume", "as_dask",
           "check_dtype", "decode_error", "is_store", "label_lut", "make_volume", "map_labels", "open_volume",
           "select_axes", "unit_to_nm", "z_chunks"]


def _zarr(text, path, dataset, channel, time, allow_missing, numbered) -> Volume:
    from .zarr import open_zarr

    return open_zarr(text, path, dataset, channel, time, allow_missing)


def _hdf5(text, path, dataset, channel, time, allow_missing, numbered) -> Volume:
    from .hdf5 import open_hdf5

    return open_hdf5(text, path, dataset, channel, time, allow_missing)


def _tiff(text, path, dataset, channel, time, allow_missing, numbered) -> Volume:
    if dataset is not None:
        what = "a folder of TIFF slices" if path.is_dir() else "a TIFF file" if path.is_file() else "a TIFF glob"
        raise InvalidInputError(f"dataset={dataset} was given but '{path}' is {what}; drop it")
    from .tiff import open_tiff

    return open_tiff(text, channel, time, allow_missing, numbered)


# backend name (formats.detect) -> opener(spec text, path, dataset, channel, time, allow_missing, numbered);
# imported on use
BACKENDS: dict[str, Callable[..., Volume]] = {"zarr": _zarr, "hdf5": _hdf5, "tiff": _tiff, "tiff-folder": _tiff,
                                              "glob": _tiff}


def open_volume(spec: str | os.PathLike | Volume, *, dataset: str | None = None, channel: int | None = None,
                time: int | None = None, allow_missing: bool = False, numbered: bool = False) -> Volume:
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
    store is refused all the same.  ``numbered``: the caller places a slice folder's files by their
    numbers itself (sparse label folders, ``xtrain.data.sparse``), so gaps in the numbering are expected
    and not checked.  What is checked at open and at read: the backends' docstrings.
    """
    if isinstance(spec, Volume):
        return spec
    text = os.fspath(spec)
    options = {"dataset": dataset, "channel": channel, "time": time, "allow_missing": allow_missing or None,
               "numbered": numbered or None}
    backend, path, named = detect(text)
    if named is not None:
        if dataset is not None and dataset != named:
            raise InvalidInputError(f"'{text}' names dataset {named} but dataset={dataset} was also given; "
                                    "give one of them")
        dataset = named
    if backend == "unknown":
        raise InvalidInputError(f"'{path}' is not a TIFF, HDF5/NeXus or Zarr volume; convert it to one of them")
    if not backend:
        if path.suffix == ".zarr":
            raise InputNotFoundError(f"'{path}' does not exist; give a Zarr store or an OME-Zarr image")
        raise InputNotFoundError(f"'{text}' does not exist; give a TIFF file, slice folder or glob, an HDF5/NeXus "
                                 "file (file.h5:/path), a Zarr / OME-Zarr store or an xtrain store")
    vol = BACKENDS[backend](text, path, dataset, channel, time, allow_missing, numbered)
    vol.options = {k: v for k, v in options.items() if v is not None}
    if "dataset" in vol.options or dataset is not None:
        vol.options["dataset"] = dataset
    log.debug("opened %s: %s %s %s", vol.kind, text, vol.shape, vol.raw_dtype)
    return vol
