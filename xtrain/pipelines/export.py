"""``xtrain export``: a model.pt as a bioimage.io package, ONNX or TorchScript (the formats: ``xtrain.models.export``).

    export("runs/unet/model.pt", "soc-unet.zip", "bioimageio", sample="soc.zarr")
    export("runs/unet/model.pt", "soc-unet.onnx", "onnx")

This module gathers what the formats need from outside the network: the checkpoint, the
bioimage.io test input cut from a volume, the training data and its citation, the class colours.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..io import atomic_write, writing

log = logging.getLogger(__name__)

TEST_TILE = 256  # edge of the bioimage.io test input (rounded down to the network's multiple and the sample)
SOC_PXCT = {
    "name": "SOC PXCT Ni-YSZ electrode",
    "description": "Ptychographic X-ray computed tomography of a pristine solid oxide cell fuel electrode "
                   "(Ni / yttria-stabilised zirconia cermet with pores): 250 slices of 501 x 501 uint16, with "
                   "manual labels 0 = pore, 128 = YSZ, 255 = Ni.",
    "cite": {"text": "magn2998/XraySegmentation: PXCT volume of a pristine SOC Ni-YSZ fuel electrode with manual "
                     "pore / YSZ / Ni labels, a course project at the Technical University of Denmark (DTU), "
                     "commit d94a4bb, folders data/data and data/labels.",
             "url": "https://github.com/magn2998/XraySegmentation"},
}
SOC_PXCT_FILES = re.compile(r"SOCprist\d+\.tiff?$")  # the slice names of that volume


def export(model: str | os.PathLike, out: str | os.PathLike, fmt: str, *, sample: str | os.PathLike | None = None,
           overwrite: bool = False, name: str | None = None, authors: list[str] | None = None,
           license: str = "BSD-3-Clause") -> Path:
    """Export the model.pt ``model`` to ``out`` as ``fmt`` (``xtrain.models.export.FORMATS``).

    ``sample``: the volume the bioimage.io test input is cut from (default: the training store in
    the checkpoint's config).  Everything is checked before anything is written, and ``out``
    appears whole or not at all.  The exported files carry the export's ``xtrain.provenance``
    record (the model's sha256, for bioimage.io the sample's checksum) in their metadata.  Raises ``UnknownNameError`` (format), ``InvalidInputError`` (an
    OUT suffix that does not fit, a model without training statistics, no sample, a bad licence
    or name), ``OutputExistsError``, ``InputNotFoundError`` (model, sample, OUT's folder).
    """
    from ..data.store import check_output
    from ..models.checkpoint import load_checkpoint, model_from_checkpoint
    from ..models.export import (build_segmenter, check_format, check_package_fields, metadata, onnx_bytes,
                                 torchscript_bytes, write_bioimageio)
    from ..models.registry import num_parameters
    from ..provenance import now, provenance

    started = now()
    out = Path(out)
    check_format(out, fmt)
    check_output(out, overwrite)
    if fmt == "bioimageio":
        check_package_fields(name, license)
    ckpt = load_checkpoint(model)
    network, _ = model_from_checkpoint(ckpt, model)
    stats = ckpt.get("stats") or {}
    if "p0_5" not in stats or "p99_5" not in stats:
        raise InvalidInputError(f"model '{model}' has no training statistics (p0_5, p99_5) to write the "
                                "normalisation from; export a model.pt written by 'xtrain train'")
    store = (ckpt.get("config") or {}).get("data", {}).get("store")
    if fmt == "bioimageio" and sample is None:
        if not store or not Path(store).exists():
            raise InvalidInputError(f"the training store '{store}' is gone; give --sample VOLUME to cut the "
                                    "bioimage.io test input from")
        sample = store
    inside = fmt != "bioimageio"  # bioimage.io normalises in its preprocessing; the bare graphs themselves
    # the record is written into the exported files, so it ends before they are made (the export itself is a
    # pure function of the model file and, for bioimage.io, the sample volume the test input is cut from)
    record = provenance(started, inputs={"sample": sample} if fmt == "bioimageio" else None, models={"model": model})
    meta = metadata(ckpt, network, record["models"]["model"]["sha256"], normalised=inside, training_data=store,
                    provenance=record)
    seg = build_segmenter(network, ckpt, normalise=inside)
    with writing(out, f"the {fmt} export"):
        if fmt == "torchscript":
            atomic_write(out, torchscript_bytes(seg, meta), what="the TorchScript model")
        elif fmt == "onnx":
            atomic_write(out, onnx_bytes(seg, meta["in_channels"], meta["min_size"], meta), what="the ONNX model")
        else:
            from ..data.layout import class_colours

            tile = sample_tile(sample, meta["in_channels"], meta["min_size"])
            write_bioimageio(seg, ckpt, meta, tile, training_data(ckpt), class_colours(len(meta["classes"])), out,
                             name=name, authors=authors, license=license)
    log.info("exported %s (%s, %d parameters) to %s", ckpt["model_name"], fmt, num_parameters(seg), out)
    return out


def training_data(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Name, description and citation (a bioimage.io CiteEntry dict, or None) of the data the
    model was trained on, from the training store's recorded source (``config.data.store``): the
    public SOC PXCT volume is recognised by its slice names."""
    from ..data.store import open_store

    store = (ckpt.get("config") or {}).get("data", {}).get("store")
    if not store or not Path(store).exists():
        return {"name": "unknown training data", "cite": None,
                "description": f"The training store '{store}' was not found when the model was exported."}
    source = open_store(store, require_image=False).info.source or {}
    files = (source.get("provenance") or {}).get("images", {}).get("files") or []
    if any(SOC_PXCT_FILES.search(str(f)) for f in ([files] if isinstance(files, str) else files)):
        return SOC_PXCT
    kind = source.get("kind", "unknown")
    details = ", ".join(f"{k} {v}" for k, v in source.items() if k in ("preset", "seed", "generator", "shape"))
    return {"name": f"{kind} training store", "cite": None,
            "description": f"The store '{Path(store).name}' ({kind}{': ' + details if details else ''})."}


def sample_tile(sample: str | os.PathLike, in_channels: int, edge: int) -> np.ndarray:
    """The bioimage.io test input: raw (1, C, T, T) float32 from the middle of ``sample``'s
    middle slices, T = ``TEST_TILE`` rounded down to a multiple of ``edge`` and to the volume.
    Raises ``InvalidInputError`` for a sample too small for one tile."""
    from ..data.volumes import open_volume

    vol = open_volume(sample)
    nz, ny, nx = vol.shape
    t = min(TEST_TILE, ny, nx) // edge * edge
    if t < edge or nz < in_channels:
        raise InvalidInputError(f"sample '{sample}' of shape {vol.shape} is too small for a test input of "
                                f"{in_channels} slices of {edge}x{edge}; give a larger --sample volume")
    z0, y0, x0 = nz // 2 - in_channels // 2, (ny - t) // 2, (nx - t) // 2
    return np.asarray(vol.read(((z0, z0 + in_channels), (y0, y0 + t), (x0, x0 + t))), np.float32)[None]
