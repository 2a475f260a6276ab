"""TIFF backend of the volume layer (``open_volume``): tifffile series, slice folders, globs.

    open_tiff("scan/images")        # folder: files in natural order, dot-files (._s1.tif) skipped
    open_tiff("scan/*.tif")         # glob (quote it in the shell)
    open_tiff("volume.tif")         # multi-page / BigTIFF / OME-TIFF / ImageJ stack
    open_tiff("hyper.tif", channel=1)   # ImageJ hyperstack (T)ZCYX: one channel

A multi-page file is read through tifffile's first *series*, whose axes (ImageJ TZCYX, OME
XYZCT, tifffile's shaped 'Q') say which pages are z: a hyperstack's channels are never read
as extra slices, and C or T longer than 1 needs ``channel``/``time`` (``select_axes``).  A
folder or glob holds one 2-D image per file.

Opening reads headers only (no pixel data): every slice's shape and dtype, and whether its
strips lie inside the file (a truncated copy), so bad input fails before anything is
written.  Reads decode only the pages of the requested slices; every codec comes through
imagecodecs, and a codec that cannot be loaded is a ``CodecError`` naming the package.
The readers hold paths only, never open handles, so they pickle to workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from ...errors import CorruptFileError, InputNotFoundError, InvalidInputError, ShapeMismatchError
from .base import HandleReader, Reader, Volume, check_dtype, decode_error, make_volume, select_axes, unit_to_nm
from .formats import GLOB_CHARS, TIFF_SUFFIXES, glob_files, natural_key

log = logging.getLogger(__name__)

__all__ = ["open_tiff", "natural_key", "TIFF_SUFFIXES"]


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[logging.LogRecord]]:
    """Collect tifffile's own log records instead of letting them reach stderr.

    tifffile logs (rather than raises) for some broken files: an invalid offset to the first
    page, or to the next page of a truncated multi-page file (it then just returns fewer
    pages).  We turn ERROR records into our own one-line error; the CLI promises one line.
    """
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tifffile")
    handler = _Collect(level=logging.DEBUG)
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate
        for r in records:
            log.debug("tifffile: %s", r.getMessage())


def _first_line(record: logging.LogRecord) -> str:
    lines = record.getMessage().strip().splitlines()
    return lines[0] if lines else record.levelname


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_strips(page, path: Path, where: str, file_size: int) -> None:
    """A page's pixel data must lie inside the file: a truncated copy keeps its IFD but loses
    strips at the end; comparing offsets + byte counts with the file size finds it from the header."""
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    if ends and max(ends) > file_size:
        raise CorruptFileError(
            f"'{path}'{where} is truncated: its pixel data ends at byte {max(ends)} but the file has "
            f"{file_size} bytes; copy or export the file again"
        )


@contextlib.contextmanager
def _opening(path: Path) -> Iterator[list[logging.LogRecord]]:
    """Open-time errors of one file -> CorruptFileError (or the InvalidInputError raised inside)."""
    try:
        with _tifffile_log() as records:
            yield records
    except InvalidInputError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, IndexError, struct.error ...
        raise CorruptFileError(f"'{path}' is not a readable TIFF ({_one_line(exc)}); check or re-export the file") from exc


def _log_errors(records: list[logging.LogRecord], path: Path, pages: int) -> None:
    errors = [_first_line(r) for r in records if r.levelno >= logging.ERROR]
    if errors or pages == 0:
        reasons = errors or [_first_line(r) for r in records]
        why = f" ({reasons[0]})" if reasons else ""
        raise CorruptFileError(
            f"'{path}' is corrupt or truncated{why}: tifffile found {pages} readable page(s); export the file again"
        )


def _voxel_size(tif: tifffile.TiffFile, page) -> tuple[float, float, float] | None:
    """(z, y, x) nm from OME PhysicalSize* or ImageJ spacing/unit + the resolution tags; None if unknown."""
    try:
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            sizes = []
            for axis in "ZYX":
                value = pixels.get(f"PhysicalSize{axis}")
                unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
                sizes.append(unit_to_nm(float(value), unit) if value else None)
            if sizes[1] and sizes[2]:
                return (sizes[0] or sizes[2], sizes[1], sizes[2])
        meta = tif.imagej_metadata
        if meta and meta.get("unit") and page is not None:
            unit = str(meta["unit"])
            xres, yres = page.get_resolution() if hasattr(page, "get_resolution") else (None, None)
            if xres and yres:
                x, y = unit_to_nm(1.0 / xres, unit), unit_to_nm(1.0 / yres, unit)
                z = unit_to_nm(float(meta["spacing"]), unit) if meta.get("spacing") else x
                if x and y and z:
                    return (z, y, x)
    except Exception as exc:  # metadata is optional: a broken tag must not stop the read
        log.debug("no voxel size from the TIFF metadata: %s", exc)
    return None


class TiffFileReader(HandleReader):
    """Pages of one file's first series: slice z is the page at ``pages[z]`` (paths only: picklable)."""

    def __init__(self, path: Path, pages: list[int], shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.pages, self.shape, self.dtype = path, pages, shape, dtype
        super().__init__()

    def __getitem__(self, key) -> np.ndarray:
        zs, ys, xs = key
        pages = self.pages[zs]
        if not pages:
            return np.empty((0, *self.shape[1:]), self.dtype)[:, ys, xs]
        where = f"'{self.path}' pages {pages[0]}..{pages[-1]}"
        try:
            with tifffile.TiffFile(self.path) as tif:
                data = tif.asarray(key=pages, series=0, maxworkers=1)
        except Exception as exc:
            raise decode_error(exc, where, "imagecodecs") from exc
        if data.size != len(pages) * self.shape[1] * self.shape[2]:
            raise CorruptFileError(f"{where}: decoded {data.shape}, expected {len(pages)} pages of {self.shape[1:]}; "
                                   "export the stack again")
        return data.reshape(len(pages), *self.shape[1:])[:, ys, xs]


class TiffFolderReader(Reader):
    """One file per slice (paths only: picklable)."""

    def __init__(self, files: list[Path], shape: tuple[int, int, int], dtype: np.dtype):
        self.files, self.shape, self.dtype = files, shape, dtype

    def __getitem__(self, key) -> np.ndarray:
        zs, ys, xs = key
        files = self.files[zs]
        out = np.empty((len(files), *self.shape[1:]), self.dtype)[:, ys, xs]
        for i, path in enumerate(files):
            try:
                with tifffile.TiffFile(path) as tif:
                    plane = tif.asarray(key=0, maxworkers=1)
            except Exception as exc:
                raise decode_error(exc, f"'{path}'", "imagecodecs") from exc
            plane = np.squeeze(plane)
            if plane.shape != self.shape[1:]:
                raise ShapeMismatchError(f"'{path}' changed since the stack was opened: expected {self.shape[1:]}, "
                                         f"found {plane.shape}; open it again")
            out[i] = plane[ys, xs]
        return out


def _resolve(spec: str) -> tuple[list[Path], bool]:
    """The files named by ``spec`` (naturally sorted, dot-files skipped) and whether it is one file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
                 and not p.name.startswith(".")]
        if not files:
            raise InputNotFoundError(f"folder '{path}' holds no .tif/.tiff files; point to the folder with the slices")
        return sorted(files, key=natural_key), False
    if path.is_file():
        return [path], True
    if GLOB_CHARS.search(spec):
        files = glob_files(spec)
        if not files:
            raise InputNotFoundError(f"pattern '{spec}' matches no files; check the folder and the pattern")
        return files, False
    raise InputNotFoundError(f"'{spec}' does not exist; give a multi-page TIFF, a folder of TIFF slices or a glob")


def _open_file(spec: str, path: Path, channel: int | None, time: int | None) -> Volume:
    size = path.stat().st_size
    with _opening(path) as records, tifffile.TiffFile(path) as tif:
        n_pages = len(tif.pages)
        _log_errors(records, path, n_pages)
        series = tif.series[0]
        axes, shape = series.axes, tuple(int(s) for s in series.shape)
        if len(tif.series) > 1:
            log.warning("'%s' holds %d image series; reading the first (%s %s)", path, len(tif.series), axes, shape)
        if series.dtype is None:
            raise InvalidInputError(f"'{path}' has no readable pixel type; export it again")
        where = f"'{path}'"
        source_dtype, _ = check_dtype(series.dtype, where)
        keyframe = series.keyframe
        page_dims = len(keyframe.shape)  # YX or YXS
        index, zaxis = select_axes(axes, shape, channel, time, where)
        outer = shape[: len(shape) - page_dims]  # the page grid
        depth = shape[zaxis] if zaxis >= 0 else 1
        grid = [np.arange(depth) if i == zaxis else np.full(depth, index[i]) for i in range(len(outer))]
        pages = np.ravel_multi_index(grid, outer).tolist() if outer else [0] * depth
        # truncation: every page of the series whose header is in memory (virtual ImageJ stacks: the first)
        for i, page in enumerate(series.pages):
            if page is not None and hasattr(page, "dataoffsets"):
                _check_strips(page, path, f" (page {i})" if n_pages > 1 else "", size)
        yx = [n for a, n in zip(axes, shape) if a in "YX"]
        zyx = (depth, yx[0], yx[1])
        voxel = _voxel_size(tif, keyframe)
        kind = "ome-tiff" if tif.is_ome else "imagej" if tif.is_imagej else "tiff"
        bigtiff = tif.is_bigtiff
    reader = TiffFileReader(path.resolve(), pages, zyx, source_dtype)
    return make_volume(spec, "tiff", reader, source_dtype, voxel_size_zyx_nm=voxel, provenance={
        "files": str(path.resolve()), "tiff_kind": kind, "bigtiff": bigtiff, "axes": axes, "source_shape": list(shape),
        "channel": channel, "time": time,
    })


def _open_folder(spec: str, files: list[Path], channel: int | None, time: int | None) -> Volume:
    if channel is not None or time is not None:
        raise InvalidInputError(f"'{spec}' is a stack of single-slice files; drop --channel/--time")
    first_shape, first_dtype, voxel = None, None, None
    for z, path in enumerate(files):
        size = path.stat().st_size
        with _opening(path) as records, tifffile.TiffFile(path) as tif:
            n = len(tif.pages)
            _log_errors(records, path, n)
            if n > 1:
                raise InvalidInputError(f"'{path}' holds {n} pages but a folder or glob stack needs one slice per "
                                        "file; pass the file itself to read it as a multi-page stack")
            page = tif.pages[0]
            _check_strips(page, path, "", size)
            shape = tuple(int(s) for s in page.shape)
            if len(shape) == 3 and shape[-1] == 1:
                shape = shape[:2]
            if len(shape) != 2:
                raise InvalidInputError(f"'{path}' holds images of shape {shape}, not 2D grey-value slices; export "
                                        "single-channel slices")
            dtype = np.dtype(page.dtype) if page.dtype is not None else None
            if z == 0:
                first_shape, first_dtype = shape, dtype
                check_dtype(dtype if dtype is not None else "V", f"'{path}'")
                voxel = _voxel_size(tif, page)
            elif shape != first_shape:
                raise ShapeMismatchError(f"'{path}' has shape {shape} but the stack's first slice '{files[0]}' has "
                                         f"{first_shape}; all slices must have the same size")
            elif dtype != first_dtype:
                raise InvalidInputError(f"'{path}' has dtype {dtype} but the stack's first slice '{files[0]}' has "
                                        f"{first_dtype}; all slices must have the same dtype")
    source_dtype, _ = check_dtype(first_dtype, f"'{files[0]}'")
    reader = TiffFolderReader([f.resolve() for f in files], (len(files), *first_shape), source_dtype)
    return make_volume(spec, "tiff", reader, source_dtype, voxel_size_zyx_nm=voxel, provenance={
        "files": [str(f.resolve()) for f in files], "tiff_kind": "slices",
    })


def open_tiff(spec: str | os.PathLike, channel: int | None = None, time: int | None = None) -> Volume:
    """A TIFF volume (file, folder or glob) as a ``Volume``; headers of every slice validated."""
    spec = os.fspath(spec)
    files, single = _resolve(spec)
    if single:
        return _open_file(spec, files[0], channel, time)
    return _open_folder(spec, files, channel, time)
