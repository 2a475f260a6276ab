"""Which format a path is: the one list of file suffixes and the one ``is_store``.

    detect("scan.h5:/entry/data")  # -> ("hdf5", Path("scan.h5"), "/entry/data")
    is_store(Path("soc.zarr"))      # an xtrain store (a Zarr v3 group with ``xtrain`` attributes)

Every reader of inputs (``open_volume``, ``xtrain nightly``'s watch folder, ingest, evaluate)
asks this module, so a format that ``open_volume`` reads is never skipped elsewhere.  Formats
are found from the path and the file's first bytes, never from a flag.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import re
from pathlib import Path

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx", ".nx5", ".cxi", ".he5")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
ZARR_SUFFIXES = (".zarr",)
# what xtrain writes label volumes as (segment / baseline OUT): ImageJ TIFF and NeXus HDF5
OUTPUT_TIFF_SUFFIXES = (".tif", ".tiff")
OUTPUT_HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs")
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup", ".zattrs")

GLOB_CHARS = re.compile(r"[*?\[]")
HDF5_SPEC = re.compile(r"^(?P<file>.*?(?:" + "|".join(re.escape(s) for s in HDF5_SUFFIXES) + r")):(?P<path>/.*)$",
                       re.IGNORECASE)


def is_zarr_dir(path: Path) -> bool:
    """A Zarr v2 or v3 array or group (its metadata file is there)."""
    return path.is_dir() and any((path / f).exists() for f in ZARR_MARKERS)


def is_hdf5(path: Path) -> bool:
    """An HDF5 file: its signature, or an HDF5 suffix."""
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89HDF\r\n\x1a\n" or path.suffix.lower() in HDF5_SUFFIXES


def is_tiff(path: Path) -> bool:
    """A TIFF or BigTIFF file by its first four bytes (byte order and magic number)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


def is_store(path: str | os.PathLike) -> bool:
    """An xtrain store or segmentation: a Zarr v3 group whose attributes hold an ``xtrain`` block."""
    path = Path(os.fspath(path))
    try:
        return path.is_dir() and "xtrain" in json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def is_tiff_folder(path: Path) -> bool:
    """A folder holding TIFF slices (and not a Zarr store)."""
    return path.is_dir() and not is_zarr_dir(path) and any(
        p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".") for p in path.iterdir())


def is_volume_file(path: Path) -> bool:
    """A file ``open_volume`` reads as a volume (TIFF or HDF5 by suffix; watch folders use this)."""
    return path.is_file() and path.suffix.lower() in (*TIFF_SUFFIXES, *HDF5_SUFFIXES)


def detect(text: str) -> tuple[str, Path, str | None]:
    """(backend, path, dataset from a ``file.h5:/path`` spec) for ``open_volume``.

    backend: "zarr" (a Zarr folder), "tiff-folder", "hdf5", "tiff", "glob", or "" (nothing
    there; the caller says what is wrong)."""
    path = Path(text).expanduser()
    m = HDF5_SPEC.match(text)
    if m and not path.exists():
        return "hdf5", Path(m["file"]).expanduser(), m["path"]
    if path.is_dir():
        return ("zarr" if is_zarr_dir(path) else "tiff-folder"), path, None
    if path.is_file():
        if is_hdf5(path):
            return "hdf5", path, None
        if path.suffix.lower() in TIFF_SUFFIXES or is_tiff(path):
            return "tiff", path, None
        return "unknown", path, None
    if GLOB_CHARS.search(text):
        return "glob", path, None
    return "", path, None


def natural_key(path: str | os.PathLike) -> list:
    """Sort key that orders 'slice_2' before 'slice_10' (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", Path(path).name)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts]


def glob_files(pattern: str) -> list[Path]:
    """Files matching a glob, naturally sorted, dot-files skipped."""
    files = [Path(p) for p in globlib.glob(os.path.expanduser(pattern)) if Path(p).is_file()]
    return sorted((f for f in files if not f.name.startswith(".")), key=natural_key)
