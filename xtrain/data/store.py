"""The store: the one place that defines how a volume lives on disk.

A store is a Zarr v3 group:

    STORE.zarr/
      zarr.json         attributes: "ome" (OME-Zarr 0.5 multiscales -> napari opens it)
                                    "xtrain" (classes, voxel size, source, stats, complete)
      image/            (Z, Y, X) uint8 | uint16 | float32, thin chunks inside z-shards
      labels/           (Z, Y, X) uint8 class ids 0..len(classes)-1 (optional)

Stores are written under a temporary sibling name and renamed into place only once
complete (``write_store``), so an interrupted ingest never leaves something that looks
finished; ``open_store`` refuses a store without the completion mark.

Chunk layout (see ``default_layout``): 2D training patches read one z-slice at a time,
so chunks are thin in z (1 x 256 x 256) and grouped into Zarr v3 shards (32 x 512 x 512)
so that the file count stays small.  ``bench/loader.py`` and ``bench/chunks.py`` measure it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import CorruptFileError, InputNotFoundError, OutputExistsError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_CLASSES = ("pore", "ysz", "ni")
DEFAULT_CHUNKS = (1, 256, 256)
DEFAULT_SHARD_DEPTH = 32
DEFAULT_SHARD_EDGE = 512


@dataclass
class Layout:
    """Chunk and shard shape of the arrays of one store (shards=None: no sharding)."""

    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None

    @property
    def slab(self) -> int:
        """Depth in z of one write: a whole shard (or chunk) layer, so each file is written once."""
        return (self.shards or self.chunks)[0]


def default_layout(shape: tuple[int, ...], chunks: tuple[int, int, int] | None = None, shard: bool = True) -> Layout:
    """Thin chunks (clipped to the volume) inside shards of 32 x 512 x 512 (multiples of the chunk)."""
    z, y, x = shape
    c = tuple(chunks) if chunks else DEFAULT_CHUNKS
    c = (max(1, min(c[0], z)), max(1, min(c[1], y)), max(1, min(c[2], x)))
    if not shard:
        return Layout(c, None)

    def round_up(n: int, k: int) -> int:
        return -(-n // k) * k

    s = (
        round_up(min(max(DEFAULT_SHARD_DEPTH, c[0]), z), c[0]),
        round_up(min(max(DEFAULT_SHARD_EDGE, c[1]), y), c[1]),
        round_up(min(max(DEFAULT_SHARD_EDGE, c[2]), x), c[2]),
    )
    return Layout(c, s)  # type: ignore[arg-type]


def compressor(dtype: np.dtype) -> BloscCodec:
    """Blosc/zstd with bit-shuffle: measured best size/speed trade-off for PXCT uint16 (bench/chunks.py)."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle" if np.dtype(dtype).itemsize > 1 else "shuffle")


@dataclass
class StoreInfo:
    """The ``xtrain`` attribute block of a store."""

    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    voxel_size_nm: float | None = None
    source: dict[str, Any] = field(default_factory=dict)  # files, label map, generator preset ...
    stats: dict[str, Any] = field(default_factory=dict)  # see xtrain.data.stats.IntensityStats.to_dict
    complete: bool = False
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "complete": self.complete,
            "classes": list(self.classes),
            "voxel_size_nm": self.voxel_size_nm,
            "source": self.source,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreInfo":
        return cls(
            classes=list(d.get("classes", DEFAULT_CLASSES)),
            voxel_size_nm=d.get("voxel_size_nm"),
            source=dict(d.get("source", {})),
            stats=dict(d.get("stats", {})),
            complete=bool(d.get("complete", False)),
            format=int(d.get("format", FORMAT_VERSION)),
        )


def ome_attrs(name: str, voxel_size_nm: float | None) -> dict[str, Any]:
    """OME-Zarr 0.5 multiscales block with one scale level, the ``image`` array."""
    scale = [voxel_size_nm / 1000.0] * 3 if voxel_size_nm else [1.0, 1.0, 1.0]
    unit = "micrometer" if voxel_size_nm else None
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": [{"path": "image", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }
        ],
    }


@dataclass
class Store:
    """An open store: zarr arrays (lazy, sliceable, picklable) plus the attribute block."""

    path: Path
    image: zarr.Array
    labels: zarr.Array | None
    info: StoreInfo

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    def dask_labels(self):
        import dask.array as da

        if self.labels is None:
            return None
        return da.from_zarr(self.labels, chunks=self.labels.shards or self.labels.chunks)


def open_store(path: str | os.PathLike, mode: str = "r") -> Store:
    """Open a finished store; raise a one-line error for anything else."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"store '{path}' does not exist; create it with 'xtrain ingest' or 'xtrain synth'")
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as exc:  # zarr raises several types for a non-store folder
        raise CorruptFileError(
            f"'{path}' is not a Zarr v3 store ({type(exc).__name__}); create it with 'xtrain ingest'"
        ) from exc
    attrs = dict(group.attrs)
    if "xtrain" not in attrs:
        raise CorruptFileError(f"'{path}' is a Zarr group but not an xtrain store (no 'xtrain' attributes)")
    info = StoreInfo.from_dict(attrs["xtrain"])
    if not info.complete:
        raise CorruptFileError(f"store '{path}' is incomplete (an interrupted write); delete it and run again")
    if "image" not in group:
        raise CorruptFileError(f"store '{path}' has no 'image' array; recreate it with 'xtrain ingest'")
    image = group["image"]
    labels = group["labels"] if "labels" in group else None
    return Store(path=path, image=image, labels=labels, info=info)  # type: ignore[arg-type]


class StoreWriter:
    """Arrays of a store being written (under its temporary path). Used through ``write_store``."""

    def __init__(self, group: zarr.Group, name: str, layout: Layout):
        self.group = group
        self.name = name
        self.layout = layout
        self.info = StoreInfo()

    def create(self, name: str, shape: tuple[int, int, int], dtype: Any) -> zarr.Array:
        dtype = np.dtype(dtype)
        return self.group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=self.layout.chunks,
            shards=self.layout.shards,
            compressors=compressor(dtype),
            fill_value=0,
            dimension_names=("z", "y", "x"),
        )

    def slabs(self, depth: int) -> Iterator[slice]:
        """z-slices of one write each, aligned to the shards (so no shard is rewritten)."""
        step = self.layout.slab
        for z0 in range(0, depth, step):
            yield slice(z0, min(z0 + step, depth))


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree (a store, a partial output)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_into_place(src: Path, dst: Path) -> None:
    """Rename a finished ``src`` to ``dst``; an existing ``dst`` (an --overwrite) is replaced only now."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(src, dst)
        remove_path(old)
    else:
        os.replace(src, dst)


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite`` (checked before any work starts)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output '{path}' already exists; pass --overwrite to replace it or choose another path")
    if not path.parent.exists():
        raise InputNotFoundError(f"output folder '{path.parent}' does not exist; create it first")
    return path


@contextlib.contextmanager
def write_store(path: str | os.PathLike, shape: tuple[int, int, int], layout: Layout | None = None,
                overwrite: bool = False) -> Iterator[StoreWriter]:
    """Create a store atomically.

        with write_store(out, shape) as w:
            img = w.create("image", shape, np.uint16)
            for sl in w.slabs(shape[0]): img[sl] = ...
            w.info.classes = [...]; w.info.stats = ...

    Everything is written to ``.NAME.partial-XXXX`` beside ``path``; on success the
    attributes get ``complete: true`` and the folder is renamed into place (replacing an
    old store only now, when ``overwrite``).  On any exception the partial folder is removed
    and ``path`` is untouched.
    """
    path = check_output(path, overwrite)
    layout = layout or default_layout(shape)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        writer = StoreWriter(group, path.stem, layout)
        yield writer
        writer.info.complete = True
        group.attrs.update({"ome": ome_attrs(path.stem, writer.info.voxel_size_nm), "xtrain": writer.info.to_dict()})
        replace_into_place(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    log.debug("wrote store %s", path)
