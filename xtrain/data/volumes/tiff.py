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
written.  A slice folder or glob whose file numbers have a gap (``s_0099.tif``, ``s_0102.tif``:
the one number that varies between the names, on the grid of its common step) is refused
naming the missing numbers (``MissingDataError``): a lost slice would shift every later one;
``allow_missing`` (``--allow-missing``) stacks the slices present, in order, with a warning.
ImageJ's layout for big stacks (one IFD followed by every slice's contiguous data, what
``imwrite(..., imagej=True, truncate=True)`` writes) is read through the series' memory map, its
slice count from the ImageJ metadata.  Reads decode only the pages of the requested slices; every codec comes through
imagecodecs, and a codec that cannot be loaded is a ``CodecError`` naming the package.
The readers hold paths only, never open handles, so they pickle to workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from ...errors import CorruptFileError, InputNotFoundError, InvalidInputError, MissingDataError, ShapeMismatchError
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


class TiffMemmapReader(HandleReader):
    """A contiguous, uncompressed series (ImageJ's big-stack layout: one IFD, then every slice's data)
    read through ``tifffile.memmap``, indexed down to (Z, Y, X) like ``select_axes`` says (paths only)."""

    def __init__(self, path: Path, index: tuple, zaxis: int, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.index, self.zaxis, self.shape, self.dtype = path, index, zaxis, shape, dtype
        super().__init__()

    def __getitem__(self, key) -> np.ndarray:
        zs, ys, xs = key
        data = getattr(self._local, "data", None)
        if data is None:
            try:
                data = tifffile.memmap(self.path, series=0, mode="r")
            except Exception as exc:
                raise decode_error(exc, f"'{self.path}'", "imagecodecs") from exc
            self._local.data = data
        spatial = iter((zs, ys, xs) if self.zaxis >= 0 else (ys, xs))
        out = np.asarray(data[tuple(next(spatial) if i is None else i for i in self.index)])
        return out[np.newaxis][zs] if self.zaxis < 0 else out


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
        images = int((tif.imagej_metadata or {}).get("images") or 0) if tif.is_imagej else 0
        if images > int(np.prod(outer or (1,))):  # tifffile fell back to the pages it could read (a warning)
            raise CorruptFileError(f"'{path}' is truncated: its ImageJ metadata says {images} images but "
                                   f"{int(np.prod(outer or (1,)))} can be read from its {size} bytes; copy or "
                                   "export the file again")
        truncated = bool(getattr(series, "is_truncated", False))  # ImageJ big stack: fewer IFDs than slices
        if truncated:
            end = int(series.dataoffset or 0) + int(np.prod(shape)) * source_dtype.itemsize
            if series.dataoffset is None or end > size:
                raise CorruptFileError(f"'{path}' is truncated: its {int(np.prod(outer or (1,)))} slices of contiguous "
                                       f"pixel data end at byte {end} but the file has {size} bytes; copy or export "
                                       "the file again")
    if truncated:
        reader: Reader = TiffMemmapReader(path.resolve(), index, zaxis, zyx, source_dtype)
    else:
        reader = TiffFileReader(path.resolve(), pages, zyx, source_dtype)
    return make_volume(spec, "tiff", reader, source_dtype, voxel_size_zyx_nm=voxel, provenance={
        "files": str(path.resolve()), "tiff_kind": kind, "bigtiff": bigtiff, "axes": axes, "source_shape": list(shape),
        "channel": channel, "time": time, **({"layout": "contiguous (ImageJ big stack)"} if truncated else {}),
    })


def slice_numbers(files: list[Path]) -> tuple[list[int], int] | None:
    """(each file's slice number, the step between them) of a numbered slice series, None when the names
    give no single number.

    The number is the one digit run that differs between the names (all names alike otherwise); the
    slices lie on the grid first + k * step (step: the gcd of the differences), so ``s0``, ``s2``,
    ``s4`` (every second slice exported) has no gap and ``s1``, ``s2``, ``s4`` misses 3."""
    import math

    if len(files) < 3:
        return None
    split = [re.split(r"(\d+)", f.name) for f in files]
    if len({len(p) for p in split}) != 1 or len({tuple(p[0::2]) for p in split}) != 1:
        return None  # names of different patterns: no numbering to check
    runs = [[int(x) for x in p[1::2]] for p in split]
    varying = [i for i in range(len(runs[0])) if len({r[i] for r in runs}) > 1]
    if len(varying) != 1:
        return None
    numbers = [r[varying[0]] for r in runs]
    if len(set(numbers)) != len(numbers) or numbers != sorted(numbers):
        return None
    step = 0
    for a, b in zip(numbers, numbers[1:]):
        step = math.gcd(step, b - a)
    return numbers, step


def _check_gaps(spec: str, files: list[Path], allow_missing: bool) -> list[int]:
    """Refuse a numbered slice folder/glob with a gap (``slice_numbers``); ``allow_missing``: warn instead.
    Returns the missing numbers that were let through."""
    import bisect

    found = slice_numbers(files)
    if found is None:
        return []
    numbers, step = found
    have = set(numbers)
    missing = [n for n in range(numbers[0], numbers[-1] + 1, step) if n not in have]
    if not missing:
        return []
    z = bisect.bisect_left(numbers, missing[0])  # the slice after the gap would take this z
    shown = ", ".join(map(str, missing[:8])) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
    head = (f"slice stack '{spec}' has a gap in its file numbers (step {step}): no slice numbered {shown} (after "
            f"'{files[z - 1].name}', z {z - 1})")
    if not allow_missing:
        raise MissingDataError(f"{head}; a lost slice would shift every later one: copy the missing slices, or if "
                               "the gap is intended pass --allow-missing (xtrain ingest / segment) to stack the "
                               "slices present in order")
    log.warning("%s; stacking the %d slices present in order (--allow-missing)", head, len(files))
    return missing


def _open_folder(spec: str, files: list[Path], channel: int | None, time: int | None,
                 allow_missing: bool = False, numbered: bool = False) -> Volume:
    if channel is not None or time is not None:
        raise InvalidInputError(f"'{spec}' is a stack of single-slice files; drop --channel/--time")
    gaps = [] if numbered else _check_gaps(spec, files, allow_missing)
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
        "files": [str(f.resolve()) for f in files], "tiff_kind": "slices", **({"number_gaps": gaps} if gaps else {}),
    })


def open_tiff(spec: str | os.PathLike, channel: int | None = None, time: int | None = None,
              allow_missing: bool = False, numbered: bool = False) -> Volume:
    """A TIFF volume (file, folder or glob) as a ``Volume``; headers of every slice validated, a numbered
    folder's gaps refused (``allow_missing``: stacked without them, with a warning; ``numbered``: the
    caller places the files by their numbers, gaps are not checked)."""
    spec = os.fspath(spec)
    files, single = _resolve(spec)
    if single:
        return _open_file(spec, files[0], channel, time)
    return _open_folder(spec, files, channel, time, allow_missing, numbered)
