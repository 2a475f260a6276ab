"""Lazy reader for TIFF stacks: a multi-page TIFF, a folder of single-slice TIFFs, or a glob.

    stack = open_stack("scan/images")        # folder: files ordered by the number in their name
    stack = open_stack("scan/*.tif")         # glob (quote it in the shell)
    stack = open_stack("scan/volume.tif")    # one multi-page TIFF, one page per z-slice
    stack.shape, stack.dtype                 # (Z, Y, X), from the headers only
    block = stack.read(32, 64)               # (32, Y, X): decodes only those slices

Opening reads the TIFF headers of every slice (no pixel data), so a stack whose slices
disagree in shape or dtype, or a file that is corrupt or truncated, is reported before
anything is written.  ``TiffStack`` holds paths only, never open file handles, so it can
be pickled to worker processes.

Supported dtypes are uint8, uint16 and float32, kept as they are.  Anything else (int16,
float64, RGB ...) is refused with a message saying what to convert to: a silent cast could
lose precision or change the intensity scale the statistics are computed on.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..errors import CorruptFileError, InputNotFoundError, InvalidInputError, ShapeMismatchError

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
TIFF_SUFFIXES = (".tif", ".tiff")
_GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(path: str | os.PathLike) -> list:
    """Sort key that orders 'slice_2' before 'slice_10' (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", Path(path).name)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts]


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


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype


def _page_header(page, path: Path, where: str, file_size: int) -> _Header:
    """Shape and dtype of one page, and a check that its pixel data lies inside the file.

    A truncated single-page file often keeps its IFD but loses strips at the end; comparing
    strip offsets + byte counts with the file size finds that from the header alone,
    without decoding.
    """
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    if ends and max(ends) > file_size:
        raise CorruptFileError(
            f"'{path}'{where} is truncated: its pixel data ends at byte {max(ends)} but the file has "
            f"{file_size} bytes; copy or export the file again"
        )
    return _Header(tuple(int(s) for s in page.shape), np.dtype(page.dtype) if page.dtype is not None else None)


def _read_headers(path: Path, all_pages: bool) -> list[_Header]:
    """Headers of the first page (or of all pages) of one file; CorruptFileError if unreadable."""
    try:
        size = path.stat().st_size
        with _tifffile_log() as records, tifffile.TiffFile(path) as tif:
            pages = tif.pages
            n = len(pages)
            errors = [_first_line(r) for r in records if r.levelno >= logging.ERROR]
            if errors or n == 0:
                reasons = errors or [_first_line(r) for r in records]
                why = f" ({reasons[0]})" if reasons else ""
                raise CorruptFileError(
                    f"'{path}' is corrupt or truncated{why}: tifffile found {n} readable page(s); export the file again"
                )
            if n > 1 and not all_pages:
                raise InvalidInputError(
                    f"'{path}' holds {n} pages but a folder or glob stack needs one slice per file; "
                    "pass the file itself to read it as a multi-page stack"
                )
            count = n if all_pages else 1
            return [_page_header(pages[i], path, f" (page {i})" if n > 1 else "", size) for i in range(count)]
    except InvalidInputError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, IndexError, struct.error ...
        raise CorruptFileError(f"'{path}' is not a readable TIFF ({_one_line(exc)}); check or re-export the file") from exc


class TiffStack:
    """A (Z, Y, X) volume stored as TIFF slices, read lazily a z-range at a time.

    ``files`` lists one file per slice (folder / glob), or a single multi-page file
    (``multipage`` True, one page per slice).  Picklable: only paths and header facts.
    """

    def __init__(self, spec: str, files: list[Path], multipage: bool, shape: tuple[int, int, int], dtype: np.dtype):
        self.spec = spec
        self.files = files
        self.multipage = multipage
        self.shape = shape
        self.dtype = dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        kind = "multi-page" if self.multipage else f"{len(self.files)} files"
        return f"TiffStack({self.spec!r}, {kind}, shape={self.shape}, dtype={self.dtype})"

    def where(self, z: int) -> str:
        """Human description of slice z for error messages: its file (and page)."""
        if self.multipage:
            return f"'{self.files[0]}' page {z}"
        return f"'{self.files[z]}' (slice {z})"

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices z0..z1-1 as a (z1 - z0, Y, X) array of ``dtype``; decodes only those slices."""
        if not 0 <= z0 <= z1 <= self.shape[0]:
            raise IndexError(f"slice range {z0}:{z1} outside a stack of {self.shape[0]} slices")
        out = np.empty((z1 - z0, *self.shape[1:]), dtype=self.dtype)
        if self.multipage:
            path = self.files[0]
            with self._decoding(path, f" page {z0}..{z1 - 1}"), tifffile.TiffFile(path) as tif:
                for i, z in enumerate(range(z0, z1)):
                    out[i] = self._check(tif.pages[z].asarray(), path, f" page {z}")
        else:
            for i, z in enumerate(range(z0, z1)):
                path = self.files[z]
                with self._decoding(path, ""), tifffile.TiffFile(path) as tif:
                    out[i] = self._check(tif.pages[0].asarray(), path, "")
        return out

    @contextlib.contextmanager
    def _decoding(self, path: Path, where: str) -> Iterator[None]:
        """Turn any decoding failure (truncated strip, bad compression) into one CorruptFileError."""
        try:
            with _tifffile_log():
                yield
        except (CorruptFileError, ShapeMismatchError):
            raise
        except Exception as exc:  # zlib.error, ValueError('failed to read ...'), TiffFileError ...
            raise CorruptFileError(
                f"'{path}'{where} cannot be decoded ({_one_line(exc)}); the file is corrupt or truncated, export it again"
            ) from exc

    def _check(self, arr: np.ndarray, path: Path, where: str) -> np.ndarray:
        # headers were checked at open; this only guards against a file replaced since then
        if arr.shape != self.shape[1:] or arr.dtype != self.dtype:
            raise ShapeMismatchError(
                f"'{path}'{where} changed since the stack was opened: expected {self.shape[1:]} {self.dtype}, "
                f"found {arr.shape} {arr.dtype}; open the stack again"
            )
        return arr


def _resolve(spec: str | os.PathLike) -> tuple[list[Path], bool]:
    """The slice files named by ``spec`` (naturally sorted) and whether it is one multi-page file."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES]
        if not files:
            raise InputNotFoundError(f"folder '{path}' holds no .tif/.tiff files; point to the folder with the slices")
        return sorted(files, key=natural_key), False
    if path.is_file():
        return [path], True
    if _GLOB_CHARS.search(text):
        files = [Path(p) for p in globlib.glob(os.path.expanduser(text)) if Path(p).is_file()]
        if not files:
            raise InputNotFoundError(f"pattern '{text}' matches no files; check the folder and the pattern")
        return sorted(files, key=natural_key), False
    raise InputNotFoundError(f"'{text}' does not exist; give a multi-page TIFF, a folder of TIFF slices or a glob")


def _check_dtype(dtype: np.dtype | None, path: Path, shape: tuple[int, ...]) -> np.dtype:
    if len(shape) != 2:
        raise InvalidInputError(
            f"'{path}' holds images of shape {shape}, not 2D grey-value slices; export single-channel slices"
        )
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"'{path}' has dtype {dtype}; supported are uint8, uint16 and float32: convert the stack to one of them"
        )
    return dtype


def open_stack(spec: str | os.PathLike) -> TiffStack:
    """Open a TIFF stack lazily; validate every slice's header (shape, dtype, truncation)."""
    files, multipage = _resolve(spec)
    if multipage:
        headers = _read_headers(files[0], all_pages=True)
        names = [f"'{files[0]}' page {i}" for i in range(len(headers))]
    else:
        headers = [_read_headers(f, all_pages=False)[0] for f in files]
        names = [f"'{f}'" for f in files]

    first = headers[0]
    dtype = _check_dtype(first.dtype, files[0], first.shape)
    for name, h in zip(names[1:], headers[1:]):
        if h.shape != first.shape:
            raise ShapeMismatchError(
                f"{name} has shape {h.shape} but the stack's first slice {names[0]} has {first.shape}; "
                "all slices must have the same size"
            )
        if h.dtype != first.dtype:
            raise InvalidInputError(
                f"{name} has dtype {h.dtype} but the stack's first slice {names[0]} has {first.dtype}; "
                "all slices must have the same dtype"
            )
    shape = (len(headers), first.shape[0], first.shape[1])
    stack = TiffStack(os.fspath(spec), files, multipage, shape, dtype)
    log.debug("opened %r", stack)
    return stack
