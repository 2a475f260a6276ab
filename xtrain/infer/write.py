"""The writer: the output group, per-block completion markers, and the final Zarr or TIFF.

While a segmentation runs, everything lives in a work folder beside OUT:

    .OUT.partial/
      job.json      the settings of the run (``--resume`` refuses to continue with others)
      out.zarr/     Zarr v3 group, attributes ``xtrain.complete = false``:
                      labels         (Z, Y, X)    uint8 class ids
                      probabilities  (K, Z, Y, X) float16 softmax       (--probabilities)
                      entropy        (Z, Y, X)    float16, nats in [0, ln K] (--probabilities)
      blocks/       one empty file per finished block, created *after* its data is written

A block's marker exists only if all of its shards were written, and a block owns whole
shards (blocks.align_block), so after a crash ``--resume`` redoes exactly the blocks
without a marker and the result is bit-identical to an uninterrupted run.  At the end the
group is marked complete and renamed to OUT (``.zarr``), or streamed slab by slab into a
zlib-compressed multi-page TIFF that is renamed to OUT (``.tif``: TIFF pages must be
written in z order, which blocks finishing in any order cannot do).  Until that rename
OUT does not exist, and the group itself says ``complete: false``, which ``open_store``
and ``open_segmentation`` refuse.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from ..data.store import Layout, compressor, ome_attrs, remove_path, replace_into_place
from ..errors import CorruptFileError, InputNotFoundError
from ..runtime import atomic_write
from .blocks import Block, Box

log = logging.getLogger(__name__)

GROUP = "out.zarr"
MARKERS = "blocks"
JOB = "job.json"
TIFF_SUFFIXES = (".tif", ".tiff")


def work_dir(out: Path) -> Path:
    """The hidden sibling that holds a run in progress (fixed name: --resume finds it)."""
    return out.parent / f".{out.name}.partial"


def is_tiff(out: Path) -> bool:
    return out.suffix.lower() in TIFF_SUFFIXES


# ----------------------------------------------------------------------------- the group


class ZarrSink:
    """The arrays of the output group; picklable (zarr arrays are), written block by block."""

    def __init__(self, group_path: Path):
        group = zarr.open_group(str(group_path), mode="r+", zarr_format=3)
        self.path = group_path
        self.labels = group["labels"]
        self.probabilities = group["probabilities"] if "probabilities" in group else None
        self.entropy = group["entropy"] if "entropy" in group else None

    @staticmethod
    def create(group_path: Path, shape: tuple[int, int, int], num_classes: int, layout: Layout,
               probabilities: bool, attrs: dict[str, Any]) -> "ZarrSink":
        group = zarr.open_group(str(group_path), mode="w-", zarr_format=3)

        def array(name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], shards, dims) -> None:
            group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, shards=shards, fill_value=0,
                               compressors=compressor(np.dtype(dtype)), dimension_names=dims)

        array("labels", shape, np.uint8, layout.chunks, layout.shards, ("z", "y", "x"))
        if probabilities:
            # one class per chunk, all classes in one shard: a block still owns whole shards
            shards = (num_classes, *layout.shards) if layout.shards else None
            array("probabilities", (num_classes, *shape), np.float16, (1, *layout.chunks), shards,
                  ("c", "z", "y", "x"))
            array("entropy", shape, np.float16, layout.chunks, layout.shards, ("z", "y", "x"))
        group.attrs.update(attrs)
        return ZarrSink(group_path)

    def write(self, core: Box, probs: np.ndarray) -> None:
        """Labels (and probabilities, entropy) of one block core; probs: (K, z, y, x) float32."""
        sl = tuple(slice(a, b) for a, b in core)
        # slice by slice: argmax's int64 result (8 bytes a voxel) stays one slice big
        labels = np.empty(probs.shape[1:], np.uint8)
        for z in range(probs.shape[1]):
            labels[z] = np.argmax(probs[:, z], axis=0)
        self.labels[sl] = labels
        if self.probabilities is not None:
            self.probabilities[(slice(None), *sl)] = probs.astype(np.float16)
            entropy = np.empty(probs.shape[1:], np.float16)
            for z in range(probs.shape[1]):
                # entropy in nats: 0 = certain, ln K = uniform; 0 * log 0 counts as 0
                p = probs[:, z]
                entropy[z] = np.maximum(-(p * np.log(np.maximum(p, np.float32(1e-12)))).sum(axis=0), 0)
            self.entropy[sl] = entropy


def segmentation_attrs(name: str, info: dict[str, Any], voxel_size_nm: float | None) -> dict[str, Any]:
    """``ome`` (multiscales pointing at ``labels``, so napari opens it) and ``xtrain`` blocks."""
    ome = ome_attrs(name, voxel_size_nm)
    ome["multiscales"][0]["datasets"][0]["path"] = "labels"
    return {"ome": ome, "xtrain": info}


def open_segmentation(path: str | os.PathLike) -> zarr.Group:
    """Open a finished ``xtrain segment`` output; refuse a missing or half-written one."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"segmentation '{path}' does not exist; create it with 'xtrain segment'")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as exc:
        raise CorruptFileError(f"'{path}' is not a Zarr v3 group ({type(exc).__name__}); run 'xtrain segment'") from exc
    info = dict(group.attrs).get("xtrain", {})
    if not info.get("complete") or "labels" not in group:
        raise CorruptFileError(f"segmentation '{path}' is incomplete (an interrupted run); resume it with "
                               "'xtrain segment ... --resume' or delete it")
    return group


# ----------------------------------------------------------------------------- markers


class Markers:
    """Block completion markers: empty files in ``.OUT.partial/blocks``."""

    def __init__(self, folder: Path):
        self.folder = folder

    def done(self) -> set[str]:
        return {p.name for p in self.folder.iterdir()} if self.folder.exists() else set()

    def mark(self, block: Block) -> None:
        self.folder.mkdir(exist_ok=True)
        (self.folder / block.name).touch()


# ----------------------------------------------------------------------------- the end


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str), what="the segmentation job record")


def stream_tiff(labels: zarr.Array, path: Path, description: str, slab: int) -> None:
    """Write (Z, Y, X) uint8 labels as a zlib-compressed multi-page TIFF, ``slab`` slices at a time."""
    with tifffile.TiffWriter(path, bigtiff=labels.nbytes > 2**31) as tif:
        for z0 in range(0, labels.shape[0], slab):
            data = np.asarray(labels[z0:min(z0 + slab, labels.shape[0])])  # (n, Y, X)
            tif.write(data, compression="zlib", photometric="minisblack", metadata=None,
                      description=description if z0 == 0 else None)


def finish(work: Path, out: Path, slab: int) -> Path:
    """Mark the group complete and move it (or its TIFF rendering) to ``out``; remove ``work``."""
    group = zarr.open_group(str(work / GROUP), mode="r+", zarr_format=3)
    info = dict(group.attrs["xtrain"])
    info["complete"] = True
    group.attrs["xtrain"] = info
    if is_tiff(out):
        src = work / f"out{out.suffix}"
        stream_tiff(group["labels"], src, json.dumps({"xtrain": {k: v for k, v in info.items() if k != "stats"}},
                                                     default=str), slab)
    else:
        src = work / GROUP
    replace_into_place(src, out)  # --overwrite: the old output is replaced only now
    remove_path(work)
    return out
