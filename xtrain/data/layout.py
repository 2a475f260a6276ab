"""The OME-Zarr 0.5 layout of every Zarr group xtrain writes: paths, metadata and pyramids.

One module defines where things live; ``store.py`` (``open_store``, ``write_store``), the
segmentation writer (``infer/write.py``), the sampler and evaluate read and write through it.

    STORE.zarr/                      an OME-Zarr 0.5 multiscale image (napari, neuroglancer, Fiji/MoBIE)
      zarr.json                      attributes "ome" (version, multiscales) and "xtrain" (classes, voxel
                                     size, source, stats, completion mark: ``store.StoreInfo``)
      0/ 1/ 2/ ...                   image pyramid (Z, Y, X): level 0 at full resolution, each next level
                                     2x smaller in y and x (and z while z > 1), down to <= 256 in y/x;
                                     the mean of each 2x2x2 cell (dask.array.coarsen)
      labels/                        "ome": {"labels": [names]}
        ground_truth/                label image (ingest --labels, synth): uint8 class ids,
        prediction/                  label image (segment, baseline); each level the mode of each cell,
          0/ 1/ ...                  "image-label": colours of the classes, properties (class names),
                                     source image "../../"
      probabilities/ 0/ 1/ ...       OME image (C, Z, Y, X) float16 softmax (segment --probabilities)
      entropy/ 0/ 1/ ...             OME image (1, Z, Y, X) float16, nats (segment --probabilities)

The previous layout (format 1: root arrays ``image`` and ``labels``, one level) is no longer
read; ``xtrain upgrade STORE`` (``store.upgrade``) rewrites it in this layout.
Spec: https://ngff.openmicroscopy.org/0.5/ (multiscales, labels, image-label).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

log = logging.getLogger(__name__)

OME_VERSION = "0.5"
LABELS = "labels"
GROUND_TRUTH = "ground_truth"
PREDICTION = "prediction"
PROBABILITIES = "probabilities"
ENTROPY = "entropy"
PYRAMID_EDGE = 256  # the pyramid stops at the first level whose y and x are both <= this

# Okabe-Ito colours (colour-blind safe): pore blue, YSZ orange, Ni green; more classes follow on
_PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
            (240, 228, 66), (0, 0, 0)]


def class_colours(num_classes: int) -> list[tuple[int, int, int, int]]:
    """RGBA colour of each class id (pore, YSZ, Ni first), opaque."""
    return [(*_PALETTE[i % len(_PALETTE)], 255) for i in range(num_classes)]


# ----------------------------------------------------------------------------- the pyramid


def level_factors(shape: Sequence[int], spatial: int = 3) -> tuple[int, ...]:
    """Downsampling factor of one pyramid step per axis: 2 in y, x (and z while > 1), 1 on a channel axis."""
    lead = len(shape) - spatial
    z = shape[lead] if spatial == 3 else 1
    return (1,) * lead + ((2 if z > 1 else 1,) if spatial == 3 else ()) + (2, 2)


def pyramid_shapes(shape: Sequence[int], edge: int = PYRAMID_EDGE) -> list[tuple[int, ...]]:
    """Shapes of levels 0..n: halve (rounding up) until y and x are both <= ``edge``."""
    shapes = [tuple(int(n) for n in shape)]
    while max(shapes[-1][-2:]) > edge:
        f = level_factors(shapes[-1])
        shapes.append(tuple(-(-n // k) for n, k in zip(shapes[-1], f)))
    return shapes


def _mean(block: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    # float32 is exact here for integer data: a sum of 8 uint16 values < 2**24, and / 8 is exact
    return block.mean(axis=axis, dtype=np.float32 if block.dtype.itemsize <= 2 else np.float64)


def _cell_counts(hit: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Sum a 0/1 uint8 array over the cell axes by adding strided views (8x faster than a sum over axes)."""
    for ax in sorted(axis, reverse=True):
        parts = [hit[(slice(None),) * ax + (i,)] for i in range(hit.shape[ax])]
        total = parts[0].copy()
        for part in parts[1:]:
            total += part  # at most 8 per cell: fits uint8
        hit = total
    return hit


def _mode(block: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """The most frequent value of each cell (ties: the smallest id), so a level holds only class ids.

    Counts each value present (bincount: no sort) per cell.  ``axis=None`` (dask asks for the
    result type that way): a 0-d array of the input dtype.
    """
    if axis is None:
        return np.zeros((), block.dtype)
    if block.dtype.kind == "u" and block.dtype.itemsize <= 2:
        values = np.flatnonzero(np.bincount(block.ravel()))
    else:
        values = np.unique(block)
    best = count = None
    for value in values:  # ascending, and only a strictly larger count wins: ties keep the smaller id
        c = _cell_counts((block == value).view(np.uint8), axis)
        if best is None:
            best, count = np.full(c.shape, value, block.dtype), c
            continue
        better = c > count
        best[better] = value
        np.maximum(count, c, out=count)
    return best if best is not None else np.zeros(tuple(n for i, n in enumerate(block.shape) if i not in axis),
                                                   block.dtype)


REDUCTIONS = {"mean": _mean, "mode": _mode}


def downsample(src, factors: Sequence[int], method: str, chunks: Sequence[int] | None = None):
    """One pyramid step of a lazy dask array: ``method`` ("mean" | "mode") over cells of ``factors``.

    The edge is padded by repetition to a multiple of the factor, so level n+1 has
    ceil(shape / factor) voxels and covers the whole volume.  "mean" rounds back to an
    integer dtype; "mode" keeps the exact ids.  ``chunks``: output chunks (default: src's / factor).
    """
    import dask.array as da

    dtype = src.dtype
    pad = [(0, (-n) % f) for n, f in zip(src.shape, factors)]
    if any(p for _, p in pad):
        src = da.pad(src, pad, mode="edge")
    out_chunks = tuple(chunks) if chunks else tuple(max(1, c[0] // f) for c, f in zip(src.chunks, factors))
    src = src.rechunk(tuple(min(c * f, n) for c, f, n in zip(out_chunks, factors, src.shape)))
    low = da.coarsen(REDUCTIONS[method], src, dict(enumerate(factors)), trim_excess=False)
    if method == "mean":
        if np.dtype(dtype).kind in "ui":
            info = np.iinfo(dtype)
            low = da.clip(da.round(low), info.min, info.max)
        low = low.astype(dtype)
    return low


# ----------------------------------------------------------------------------- metadata


def axes(unit: str | None, channel: bool = False) -> list[dict[str, Any]]:
    space = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    return ([{"name": "c", "type": "channel"}] if channel else []) + space


def multiscale(name: str, shapes: Sequence[Sequence[int]], voxel_size_nm: float | None, method: str,
               paths: Sequence[str] | None = None) -> dict[str, Any]:
    """One OME-Zarr 0.5 ``multiscales`` entry: axes, one dataset per level with its scale and
    translation (a level-n voxel centre sits at (f - 1) / 2 level-0 voxels), type and metadata."""
    import dask

    unit = "micrometer" if voxel_size_nm else None
    v = voxel_size_nm / 1000.0 if voxel_size_nm else 1.0
    channel = len(shapes[0]) == 4
    datasets = []
    for i, shape in enumerate(shapes):
        f = [s0 / s if s else 1 for s0, s in zip(shapes[0], shape)]
        f = [int(2 ** round(np.log2(x))) for x in f]  # exact powers of two (ceil rounding)
        scale = [float(k * v) for k in f]
        shift = [float((k - 1) / 2 * v) for k in f]
        if channel:
            scale[0], shift[0] = 1.0, 0.0
        transforms = [{"type": "scale", "scale": scale}]
        if any(shift):
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": paths[i] if paths else str(i), "coordinateTransformations": transforms})
    return {
        "name": name,
        "axes": axes(unit, channel),
        "datasets": datasets,
        "type": method,
        "metadata": {"description": f"{method} of 2x2(x2) cells, edges padded by repetition",
                     "method": "dask.array.coarsen", "version": dask.__version__},
    }


def image_label(classes: Sequence[str]) -> dict[str, Any]:
    """``image-label`` block: a colour and a class name per class id, the source image two levels up."""
    colours = class_colours(len(classes))
    return {
        "colors": [{"label-value": i, "rgba": list(c)} for i, c in enumerate(colours)],
        "properties": [{"label-value": i, "class": str(name)} for i, name in enumerate(classes)],
        "source": {"image": "../../"},
    }


# ----------------------------------------------------------------------------- creating and finishing


@dataclass
class Layout:
    """Chunk and shard shape of the arrays of one store (shards=None: no sharding)."""

    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None

    @property
    def slab(self) -> int:
        """Depth in z of one write: a whole shard (or chunk) layer, so each file is written once."""
        return (self.shards or self.chunks)[0]


DEFAULT_CHUNKS = (1, 256, 256)
DEFAULT_SHARD_DEPTH = 32
DEFAULT_SHARD_EDGE = 512


def default_layout(shape: tuple[int, ...], chunks: tuple[int, int, int] | None = None, shard: bool = True) -> Layout:
    """Thin chunks (clipped to the volume) inside shards of 32 x 512 x 512 (multiples of the chunk)."""
    z, y, x = shape
    c = tuple(chunks) if chunks else DEFAULT_CHUNKS
    c = (max(1, min(c[0], z)), max(1, min(c[1], y)), max(1, min(c[2], x)))
    if not shard:
        return Layout(c, None)  # type: ignore[arg-type]

    def round_up(n: int, k: int) -> int:
        return -(-n // k) * k

    s = (
        round_up(min(max(DEFAULT_SHARD_DEPTH, c[0]), z), c[0]),
        round_up(min(max(DEFAULT_SHARD_EDGE, c[1]), y), c[1]),
        round_up(min(max(DEFAULT_SHARD_EDGE, c[2]), x), c[2]),
    )
    return Layout(c, s)  # type: ignore[arg-type]


def fit_layout(layout: Layout, shape: Sequence[int]) -> Layout:
    """``layout`` clipped to a (smaller) level's shape: chunks <= shape, shards whole chunks <= shape rounded up."""
    c = tuple(max(1, min(k, n)) for k, n in zip(layout.chunks, shape))
    if layout.shards is None:
        return Layout(c, None)  # type: ignore[arg-type]
    s = tuple(-(-min(k, n) // ci) * ci for k, n, ci in zip(layout.shards, shape, c))
    return Layout(c, s)  # type: ignore[arg-type]


def compressor(dtype: np.dtype):
    """Blosc/zstd with bit-shuffle: measured best size/speed trade-off for PXCT uint16 (bench/chunks.py)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle" if np.dtype(dtype).itemsize > 1 else "shuffle")


WRITE_CONFIG = {"write_empty_chunks": True}  # every chunk on disk, all-zero ones too: absent = lost


def writable(array: zarr.Array) -> zarr.Array:
    """``array`` (opened again, e.g. by ``--resume``) writing every chunk, as ``create_level`` does:
    zarr's runtime config is not stored with the array, and its default skips all-zero chunks."""
    return array.with_config(WRITE_CONFIG)


def create_level(group: zarr.Group, path: str, shape: Sequence[int], dtype: Any, layout: Layout,
                 overwrite: bool = False, codec: Any = None) -> zarr.Array:
    """A (Z, Y, X) or (C, Z, Y, X) array at ``path`` with the store's chunks (a channel per chunk).

    ``codec``: the compressor (default ``compressor(dtype)``), followed by a crc32c checksum of
    every inner chunk (the shard index has one too: zarr's default), so changed bytes fail to
    decode instead of changing voxels.  Every chunk is written, also all-zero ones
    (``WRITE_CONFIG``), so an absent chunk always means a lost one (``chunks.check_chunks``).
    crc32c costs at most about a tenth of the CPU of decoding a whole shard and nothing measurable in a
    training patch read from the warm chunk cache (bench/checksum.py, docs/measurements.md).
    """
    from zarr.codecs import Crc32cCodec

    shape = tuple(int(n) for n in shape)
    lay = fit_layout(layout, shape[-3:])
    lead = shape[:-3]
    chunks = (1,) * len(lead) + lay.chunks
    shards = (tuple(lead) + lay.shards) if lay.shards else None
    dims = ("c", "z", "y", "x") if lead else ("z", "y", "x")
    return group.create_array(path, shape=shape, dtype=np.dtype(dtype), chunks=chunks, shards=shards,
                              compressors=(codec or compressor(np.dtype(dtype)), Crc32cCodec()), fill_value=0,
                              dimension_names=dims, overwrite=overwrite, config=WRITE_CONFIG)


def level0_path(kind: str, name: str | None = None) -> str:
    """Path of level 0: kind "image" | "label" (name: the label image) | "probabilities" | "entropy"."""
    if kind == "image":
        return "0"
    if kind == "label":
        return f"{LABELS}/{name}/0"
    return f"{kind}/0"


def write_pyramid(group: zarr.Group, prefix: str, method: str, layout: Layout,
                  edge: int = PYRAMID_EDGE) -> list[tuple[int, ...]]:
    """Levels 1..n of the pyramid whose level 0 is ``prefix/0``; returns all level shapes.

    Each level is computed lazily from the one above it (so a level reads 1/8 of the
    data of the previous one) and stored shard by shard; existing levels are replaced,
    so finishing again after an interruption gives the same bits.
    """
    import dask.array as da

    base = f"{prefix}/" if prefix else ""
    level0 = group[f"{base}0"]
    shapes = pyramid_shapes(level0.shape, edge)
    previous = level0
    for i, shape in enumerate(shapes[1:], start=1):
        target = create_level(group, f"{base}{i}", shape, level0.dtype, layout, overwrite=True)
        src = da.from_zarr(previous, chunks=previous.shards or previous.chunks)
        unit = target.shards or target.chunks
        low = downsample(src, level_factors(previous.shape), method, chunks=unit)
        da.store(low.rechunk(unit), target, lock=False)
        previous = target
    return shapes


def finish_image(group: zarr.Group, prefix: str, name: str, method: str, voxel_size_nm: float | None,
                 layout: Layout, extra: dict[str, Any] | None = None, edge: int = PYRAMID_EDGE) -> None:
    """Write the pyramid of ``prefix`` and its ``ome`` attributes (multiscales, plus ``extra``)."""
    shapes = write_pyramid(group, prefix, method, layout, edge)
    node = group[prefix] if prefix else group
    ome = {"version": OME_VERSION, "multiscales": [multiscale(name, shapes, voxel_size_nm, method)], **(extra or {})}
    attrs = dict(node.attrs)
    attrs["ome"] = ome
    node.attrs.update(attrs)


def finish_group(group: zarr.Group, name: str, voxel_size_nm: float | None, classes: Sequence[str],
                 layout: Layout, edge: int = PYRAMID_EDGE) -> None:
    """Pyramids and OME attributes of everything in ``group`` written at level 0.

    The root image (``0``), every label image under ``labels/`` (mode pyramids, with
    ``image-label``), ``probabilities`` and ``entropy``.  The root's own ``ome`` block is
    written last, after its ``labels`` group is complete.
    """
    label_names = sorted(group[LABELS].group_keys()) if LABELS in group else []
    for label in label_names:
        finish_image(group, f"{LABELS}/{label}", label, "mode", voxel_size_nm, layout,
                     {"image-label": image_label(classes)}, edge)
    if label_names:
        group[LABELS].attrs.update({"ome": {"version": OME_VERSION, "labels": label_names}})
    for sub in (PROBABILITIES, ENTROPY):
        if sub in group:
            finish_image(group, sub, sub, "mean", voxel_size_nm, layout, None, edge)
            channels = list(classes) if sub == PROBABILITIES else [ENTROPY]
            group[sub].attrs.update({"xtrain": {"channels": channels}})
    if "0" in group:
        finish_image(group, "", name, "mean", voxel_size_nm, layout, None, edge)


# ----------------------------------------------------------------------------- reading


@dataclass
class Arrays:
    """Level-0 arrays of a group (None where absent), and its image pyramid."""

    image: zarr.Array | None
    labels: dict[str, zarr.Array] = field(default_factory=dict)
    probabilities: zarr.Array | None = None
    entropy: zarr.Array | None = None
    levels: list[zarr.Array] = field(default_factory=list)

    def main_labels(self) -> zarr.Array | None:
        """The label image a reader means by "the labels": ground truth, else the prediction, else the first."""
        for name in (GROUND_TRUTH, PREDICTION, *self.labels):
            if name in self.labels:
                return self.labels[name]
        return None


def _levels(node: zarr.Group) -> list[zarr.Array]:
    ms = dict(node.attrs).get("ome", {}).get("multiscales", [])
    if not ms:
        return [node["0"]] if "0" in node else []
    return [node[d["path"]] for d in ms[0]["datasets"] if d["path"] in node]


def previous_layout(group: zarr.Group) -> bool:
    """``group`` has the previous layout (format 1): a root array ``image`` or ``labels`` (``xtrain upgrade``)."""
    return any(name in group and isinstance(group[name], zarr.Array) for name in ("image", LABELS))


def read_arrays(group: zarr.Group) -> Arrays:
    """Find the arrays of ``group`` in the OME layout (a group of the previous layout: ``previous_layout``)."""
    levels = _levels(group)
    labels: dict[str, zarr.Array] = {}
    if LABELS in group:
        lab = group[LABELS]
        names = dict(lab.attrs).get("ome", {}).get("labels") or sorted(lab.group_keys())
        for name in names:
            if name in lab and "0" in lab[name]:
                labels[name] = lab[name]["0"]

    def sub(name: str) -> zarr.Array | None:
        return group[name]["0"] if name in group and "0" in group[name] else None

    return Arrays(levels[0] if levels else None, labels, sub(PROBABILITIES), sub(ENTROPY), levels)
