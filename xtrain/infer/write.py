"""The writer: the output group, per-block completion markers, and the final Zarr, TIFF or HDF5.

While a segmentation runs, everything lives in a work folder beside OUT:

    .OUT.partial/
      job.json      the settings of the run (``--resume`` refuses to continue with others)
      out.zarr/     Zarr v3 group in the OME-Zarr layout (``xtrain.data.layout``), level 0 only,
                    attributes ``xtrain.complete = false``:
                      labels/prediction/0  (Z, Y, X)    uint8 class ids
                      probabilities/0      (K, Z, Y, X) float16 softmax       (--probabilities)
                      entropy/0            (1, Z, Y, X) float16, nats in [0, ln K] (--probabilities)
      blocks/       one empty file per finished block, created *after* its data is written

A block's marker exists only if all of its shards were written, and a block owns whole
shards (blocks.align_block), so after a crash ``--resume`` redoes exactly the blocks
without a marker and the result is bit-identical to an uninterrupted run.  At the end
(``finish``, which can run again after an interruption with the same result) the output
becomes one of:

* ``.zarr``: an OME-Zarr 0.5 image (the input volume's grey values, copied, with a mean
  pyramid) whose ``labels/prediction`` is a label image (mode pyramid, colours, class
  names); probabilities and entropy are OME images.  napari shows image + labels.
* ``.tif``/``.tiff``: an ImageJ hyperstack (axes ZYX, voxel size in um, class names, a
  colour LUT and the provenance in the ImageJ metadata), zlib-compressed, streamed slab
  by slab (TIFF pages must be written in z order, which blocks finishing in any order cannot do).
* ``.h5``/``.hdf5``/``.nxs``: NeXus HDF5, labels at ``/entry/data/data`` (NXdata, signal),
  chunked and gzip-compressed, voxel size and class names as attributes.

Until the final rename OUT does not exist, and the group itself says ``complete: false``,
which ``open_store`` and ``open_segmentation`` refuse.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..data import layout as ome
from ..data.layout import Layout
from ..data.store import open_segmentation  # noqa: F401 (re-export)
from ..data.volumes.formats import OUTPUT_HDF5_SUFFIXES as HDF5_SUFFIXES
from ..data.volumes.formats import OUTPUT_TIFF_SUFFIXES as TIFF_SUFFIXES
from ..errors import CorruptFileError, InvalidInputError, OutputExistsError
from ..geometry import Box
from ..io import atomic_write, remove_path, replace_into_place
from .blocks import Block
from .plan import Plan, Previous

log = logging.getLogger(__name__)

GROUP = "out.zarr"
MARKERS = "blocks"
JOB = "job.json"


def work_dir(out: Path) -> Path:
    """The hidden sibling that holds a run in progress (fixed name: --resume finds it)."""
    return out.parent / f".{out.name}.partial"


def is_tiff(out: Path) -> bool:
    return out.suffix.lower() in TIFF_SUFFIXES


def is_hdf5(out: Path) -> bool:
    return out.suffix.lower() in HDF5_SUFFIXES


# ----------------------------------------------------------------------------- the group


class ZarrSink:
    """The level-0 arrays of the output group; picklable (zarr arrays are), written block by block."""

    def __init__(self, group_path: Path):
        group = zarr.open_group(str(group_path), mode="r+", zarr_format=3)
        self.path = group_path
        arrays = ome.read_arrays(group)
        self.labels = ome.writable(arrays.labels[ome.PREDICTION])  # every chunk written (also on --resume)
        self.probabilities = ome.writable(arrays.probabilities) if arrays.probabilities is not None else None
        self.entropy = ome.writable(arrays.entropy) if arrays.entropy is not None else None

    @staticmethod
    def create(group_path: Path, shape: tuple[int, int, int], num_classes: int, layout: Layout,
               probabilities: bool, attrs: dict[str, Any], image_dtype: Any = None) -> "ZarrSink":
        """The work group; ``image_dtype``: also an image level 0 (filled by ``finish`` for a .zarr output)."""
        group = zarr.open_group(str(group_path), mode="w-", zarr_format=3)
        ome.create_level(group, ome.level0_path("label", ome.PREDICTION), shape, np.uint8, layout)
        if image_dtype is not None:
            ome.create_level(group, ome.level0_path("image"), shape, image_dtype, layout)
        if probabilities:
            # one class per chunk, all classes in one shard: a block still owns whole shards
            ome.create_level(group, ome.level0_path(ome.PROBABILITIES), (num_classes, *shape), np.float16, layout)
            ome.create_level(group, ome.level0_path(ome.ENTROPY), (1, *shape), np.float16, layout)  # a channel axis
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
            self.entropy[(slice(0, 1), *sl)] = entropy[None]


def segmentation_attrs(name: str, info: dict[str, Any], voxel_size_nm: float | None) -> dict[str, Any]:
    """The work group's attributes: the ``xtrain`` block (``ome`` is written by ``finish``)."""
    return {"xtrain": info}


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


# ----------------------------------------------------------------------------- the start


def finished_record(out: Path) -> dict[str, Any]:
    """What a finished OUT was made from, in ``job.json``'s terms (volume, shape, model, settings)."""
    if is_tiff(out) or is_hdf5(out):
        provenance, shape = read_labels_file_provenance(out)
        info = provenance.get("xtrain", {})
    else:
        store = open_segmentation(out)
        info = dict(store.attrs).get("xtrain", {})
        shape = list(store.labels.shape)
    source = info.get("source", {})
    return {"volume": source.get("volume"), "shape": shape, "model_sha256": source.get("model_sha256"),
            "settings": source.get("settings")}


def previous_run(out: Path, resume: bool, overwrite: bool) -> Previous | None:
    """Check OUT and its work folder before anything is written: the earlier run to continue
    (``resume``: an interrupted one's job.json, or a finished OUT's record), or None to start afresh.

    Raises ``InvalidInputError`` for a missing output folder, ``OutputExistsError`` for an existing
    OUT or interrupted run that is neither resumed nor overwritten."""
    if not out.parent.is_dir():
        raise InvalidInputError(f"output folder '{out.parent}' does not exist; create it first")
    work = work_dir(out)
    if out.exists() and resume and not overwrite and not work.exists():
        return Previous(str(out), finished_record(out), complete=True)  # plan checks it: "already complete"?
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output '{out}' already exists; pass --overwrite to replace it or choose another path")
    if work.exists():
        if resume:
            job = work / JOB
            return Previous(str(out), json.loads(job.read_text()), complete=False) if job.exists() else None
        if not overwrite:
            raise OutputExistsError(f"an interrupted run left '{work}'; pass --resume to continue it or --overwrite "
                                    "to start over")
    elif resume:
        log.info("nothing to resume for '%s'; starting from the beginning", out)
    return None


def start_work(out: Path, job: Plan, volume: Any, num_classes: int, info: dict[str, Any]) -> Path:
    """A fresh work folder for ``job`` (a leftover one is removed): the output group with the
    ``xtrain`` attributes ``info`` (a ``StoreInfo`` dict) and ``job.json``.  A .zarr output also
    gets an image level 0 in ``volume``'s raw dtype (``finish`` copies the image into it)."""
    work = work_dir(out)
    if work.exists():
        remove_path(work)
    work.mkdir()
    attrs = json.loads(json.dumps(segmentation_attrs(out.stem, info, volume.voxel_size_nm), default=str))
    image_dtype = None if is_tiff(out) or is_hdf5(out) else volume.raw_dtype.name
    ZarrSink.create(work / GROUP, tuple(volume.shape), num_classes, job.layout, job.settings.probabilities, attrs,
                    image_dtype)
    write_json(work / JOB, job.record)
    return work


# ----------------------------------------------------------------------------- the end


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str), what="the segmentation job record")


def _slabs(labels: zarr.Array, slab: int) -> Iterator[np.ndarray]:
    for z0 in range(0, labels.shape[0], slab):
        yield np.asarray(labels[z0:min(z0 + slab, labels.shape[0])])  # (n, Y, X)


def _provenance(info: dict[str, Any]) -> dict[str, Any]:
    return {"xtrain": {k: v for k, v in info.items() if k != "stats"}}


def write_label_tiff(path: Path, slabs: Iterator[np.ndarray], shape: tuple[int, int, int], classes: list[str],
                     voxel_size_nm: float | None, provenance: dict[str, Any]) -> None:
    """Stream (Z, Y, X) uint8 class-id slabs into a zlib-compressed ImageJ hyperstack.

    Axes ZYX; ``spacing`` (z) and the XY resolution (pixels per um) from the voxel size,
    unit ``um`` (without a voxel size: 1 pixel); class names in the ImageJ properties
    (``class_0`` = pore ...), a colour LUT (``layout.class_colours``), the provenance as
    JSON in ``Info``.  ImageJ files are classic TIFF (< 4 GiB); a larger label volume is
    written as a BigTIFF with the same metadata in ``ImageDescription`` (Fiji opens it with Bio-Formats).
    """
    import tifffile

    um = voxel_size_nm / 1000.0 if voxel_size_nm else None
    lut = np.zeros((3, 256), np.uint8)
    for i, (r, g, b, _) in enumerate(ome.class_colours(len(classes))):
        lut[:, i] = (r, g, b)
    props = {f"class_{i}": str(c) for i, c in enumerate(classes)}
    props["classes"] = ",".join(map(str, classes))
    metadata: dict[str, Any] = {"axes": "ZYX", "Info": json.dumps(provenance, default=str), "Properties": props,
                                "LUTs": [lut], "min": 0, "max": 255}
    kwargs: dict[str, Any] = {}
    if um:
        metadata.update(spacing=um, unit="um")
        kwargs["resolution"] = (1.0 / um, 1.0 / um)
    big = int(np.prod(shape)) >= 2**32 - 2**25  # ImageJ hyperstacks cannot be BigTIFF
    if big:
        log.warning("labels of %d voxels exceed an ImageJ TIFF (4 GiB); writing a BigTIFF instead", int(np.prod(shape)))

    def pages() -> Iterator[np.ndarray]:
        for block in slabs:
            yield from block

    with tifffile.TiffWriter(path, imagej=not big, bigtiff=big) as tif:
        tif.write(pages(), shape=tuple(shape), dtype=np.uint8, compression="zlib", photometric="minisblack",
                  metadata=metadata, **kwargs)


def write_label_hdf5(path: Path, slabs: Iterator[np.ndarray], shape: tuple[int, int, int], classes: list[str],
                     voxel_size_nm: float | None, provenance: dict[str, Any]) -> None:
    """Stream (Z, Y, X) uint8 class-id slabs into a NeXus HDF5 file at ``/entry/data/data``.

    ``/entry`` (NXentry, default "data") > ``/entry/data`` (NXdata, signal "data", axes z, y, x
    with coordinates in um when the voxel size is known) > ``data``: chunked (<= 16 x 256 x 256),
    gzip level 4, attributes ``classes``, ``voxel_size`` and ``voxel_size_units`` ("um"),
    ``long_name``.  The provenance is JSON in ``/entry/notes/data`` (NXnote).
    """
    import h5py

    chunks = (min(16, shape[0]), min(256, shape[1]), min(256, shape[2]))
    um = voxel_size_nm / 1000.0 if voxel_size_nm else None
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        nxdata = entry.create_group("data")
        nxdata.attrs.update({"NX_class": "NXdata", "signal": "data", "axes": ["z", "y", "x"],
                             "z_indices": 0, "y_indices": 1, "x_indices": 2})
        data = nxdata.create_dataset("data", shape=shape, dtype=np.uint8, chunks=chunks, compression="gzip",
                                     compression_opts=4)
        data.attrs.update({"long_name": "class id (" + ", ".join(f"{i}={c}" for i, c in enumerate(classes)) + ")",
                           "classes": [str(c) for c in classes], "voxel_size_units": "um" if um else "pixel",
                           "voxel_size": [um or 1.0] * 3})
        for i, axis in enumerate("zyx"):
            coord = nxdata.create_dataset(axis, data=np.arange(shape[i]) * (um or 1.0))
            coord.attrs["units"] = "um" if um else "pixel"
        note = entry.create_group("notes")
        note.attrs["NX_class"] = "NXnote"
        note.create_dataset("type", data="application/json")
        note.create_dataset("data", data=json.dumps(provenance, default=str))
        z0 = 0
        for block in slabs:
            data[z0:z0 + block.shape[0]] = block
            z0 += block.shape[0]


def read_labels_file_provenance(out: Path) -> tuple[dict[str, Any], list[int]]:
    """(provenance, shape) of a label file written by ``write_labels_file``: the JSON that
    ``write_label_tiff`` puts in the ImageJ ``Info`` (or a BigTIFF's description) and
    ``write_label_hdf5`` in ``/entry/notes/data``.  Raises CorruptFileError for another file."""
    try:
        if is_tiff(out):
            import tifffile

            with tifffile.TiffFile(out) as tif:
                meta = tif.imagej_metadata or {}
                text = meta.get("Info") or json.loads(tif.pages[0].description or "{}").get("Info", "{}")
                shape = list(tif.series[0].shape)
        else:
            import h5py

            with h5py.File(out, "r") as f:
                text = f["/entry/notes/data"][()]
                text = text.decode() if isinstance(text, bytes) else str(text)
                shape = list(f["/entry/data/data"].shape)
        return json.loads(text), shape
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptFileError(f"'{out}' is not a label file written by xtrain ({type(exc).__name__}: {exc}); "
                               "use --overwrite or another output") from None


def write_labels_file(out: Path, slabs: Iterator[np.ndarray], shape: tuple[int, int, int], classes: list[str],
                      voxel_size_nm: float | None, provenance: dict[str, Any]) -> None:
    """Write label slabs as ``out``'s format (.tif ImageJ / .h5 NeXus) under a temporary name, then rename."""
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp{out.suffix}"
    writer = write_label_tiff if is_tiff(out) else write_label_hdf5
    try:
        writer(tmp, slabs, shape, classes, voxel_size_nm, provenance)
        replace_into_place(tmp, out)
    except BaseException:
        remove_path(tmp)
        raise


def copy_image(volume: Any, image: zarr.Array, slab: int) -> None:
    """Level 0 of the output image from ``volume``'s raw grey values (``Volume.raw``), slab by slab."""
    raw = volume.raw()
    z = image.shape[0]
    for z0 in range(0, z, slab):
        image[z0:min(z0 + slab, z)] = raw.read(raw.planes(z0, min(z0 + slab, z)))


def finish(work: Path, out: Path, slab: int, volume: Any = None, layout: Layout | None = None) -> Path:
    """Turn the work group into ``out`` (.zarr / .tif / .h5); remove ``work``.

    ``.zarr``: copy the input image from ``volume`` (a ``Volume``, raw or a view), build the
    pyramids and OME attributes (``layout.finish_group``), mark complete, rename.  Running it
    again after an interruption gives the same output.
    """
    group = zarr.open_group(str(work / GROUP), mode="r+", zarr_format=3)
    info = dict(group.attrs["xtrain"])
    arrays = ome.read_arrays(group)
    labels = arrays.labels[ome.PREDICTION]
    classes = list(info.get("classes") or [])
    voxel = info.get("voxel_size_nm")
    if is_tiff(out) or is_hdf5(out):
        info["complete"] = True
        write_labels_file(out, _slabs(labels, slab), tuple(labels.shape), classes, voxel, _provenance(info))
    else:
        if arrays.image is not None and volume is not None:
            copy_image(volume, ome.writable(arrays.image), slab)
        lay = layout or Layout(tuple(labels.chunks), tuple(labels.shards) if labels.shards else None)
        ome.finish_group(group, out.stem, voxel, classes, lay)
        info["complete"] = True
        info["all_chunks_written"] = True  # create_level / writable: write_empty_chunks=True
        group.attrs["xtrain"] = info
        replace_into_place(work / GROUP, out)  # --overwrite: the old output is replaced only now
    remove_path(work)
    return out
