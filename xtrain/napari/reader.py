"""The napari reader: an xtrain store or segmentation (.zarr) as napari layers.

    napari scan.zarr --plugin xtrain        # or File > Open, or viewer.open("scan.zarr", plugin="xtrain")
    layers = read_store("scan.zarr")        # [(data, kwargs, layer type), ...]: napari's LayerData tuples

What it makes, every layer with the voxel size as its ``scale`` (z, y, x, from the OME ``multiscales``
transforms, in micrometres) and every pyramid level as multiscale data, read lazily (Dask over Zarr):

* the image, contrast limits from the store's sample statistics (p0.5, p99.5);
* each label image (``ground_truth``, ``prediction``) as a Labels layer in napari's convention:
  **class id + 1**, 0 = unlabelled (a sparse store's ``IGNORE`` voxels show transparent, and a
  painted correction is the same value), with the class colours of ``xtrain.data.layout.class_colours``
  and the class names as ``features`` (napari's status bar shows "class: ysz");
* the probabilities (one image layer per class, "p(pore)" ...) and the entropy (nats, 0 .. ln K),
  hidden at first.

Each layer's ``metadata["xtrain"]`` says which store and role it came from ({"store", "role", "classes"}):
the dock widget finds the volume, the classes and the prediction through it.  This module does not import
napari: it returns plain tuples (npe2's reader contract).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import layout as ome
from ..data.labels import IGNORE
from ..data.layout import class_colours

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
UNLABELLED = "unlabelled"  # the name of layer value 0


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: ``read_store`` for an xtrain store (a Zarr group with ``xtrain`` attributes), else None
    (napari then asks its other readers)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_store if is_xtrain_store(path) else None


def is_xtrain_store(path: str | os.PathLike) -> bool:
    """A folder holding a Zarr v3 group whose attributes have an ``xtrain`` block."""
    import json

    meta = Path(path) / "zarr.json"
    try:
        return meta.is_file() and "xtrain" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def label_colormap(classes: list[str]) -> dict[Any, Any]:
    """napari ``colormap`` dict of a Labels layer in the class id + 1 convention: 0 (and anything unknown)
    transparent, value i + 1 the colour of class i."""
    cmap: dict[Any, Any] = {0: "transparent", None: "transparent"}
    for i, rgba in enumerate(class_colours(len(classes))):
        cmap[i + 1] = [c / 255 for c in rgba]
    return cmap


def label_features(classes: list[str]) -> dict[str, list[Any]]:
    """napari ``features`` table of such a layer: row "index" v names the class of value v."""
    return {"index": list(range(len(classes) + 1)), "class": [UNLABELLED, *classes]}


def label_kwargs(classes: list[str]) -> dict[str, Any]:
    """The keyword arguments every xtrain Labels layer gets (colours and names of the classes)."""
    return {"colormap": label_colormap(classes), "features": label_features(classes)}


def _layer_values(block: np.ndarray) -> np.ndarray:
    # class id -> id + 1, IGNORE -> 0 (xtrain.data.painted.to_layer_values, on uint8 blocks without a copy to uint16)
    out = block + np.uint8(1)
    out[block == IGNORE] = 0
    return out


def _scale(group_attrs: dict[str, Any]) -> tuple[list[float], str | None]:
    """(z, y, x) scale of level 0 and the unit, from the OME multiscales (1, no unit: the store does not say)."""
    ms = group_attrs.get("ome", {}).get("multiscales", [])
    if not ms:
        return [1.0, 1.0, 1.0], None
    for t in ms[0]["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]][-3:]
            unit = next((a.get("unit") for a in ms[0].get("axes", []) if a.get("type") == "space"), None)
            return scale, unit
    return [1.0, 1.0, 1.0], None


def _data(levels: list[Any], take=None, cast=None) -> tuple[Any, bool]:
    """Lazy dask levels (``take``: an index into each level, e.g. a channel; ``cast``: a dtype); multiscale?"""
    import dask.array as da

    out = []
    for level in levels:
        arr = da.from_zarr(level, chunks=level.chunks)
        if take is not None:
            arr = arr[take]
        if cast is not None:
            arr = arr.astype(cast)
        out.append(arr)
    return (out, True) if len(out) > 1 else (out[0], False)


def read_store(path: str | os.PathLike) -> list[LayerData]:
    """The layers of an xtrain store or segmentation (see the module docstring), image first.

    Raises ``InputNotFoundError``/``CorruptFileError`` for a path that is not a finished xtrain store."""
    import zarr

    from ..data.store import open_store

    path = Path(path)
    store = open_store(path, require_image=False)  # a store, a segmentation, a labels-only store of the old layout
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    scale, unit = _scale(attrs)
    classes = list(store.info.classes)
    common = {"scale": scale, **({"units": unit} if unit else {})}
    name = path.name.removesuffix(".zarr")

    def meta(role: str) -> dict[str, Any]:
        return {"xtrain": {"store": str(path.resolve()), "role": role, "classes": classes}}

    layers: list[LayerData] = []
    if store.image is not None:
        data, multi = _data(store.levels or [store.image])
        stats = store.info.stats
        kwargs = {"name": name, "multiscale": multi, "metadata": meta("image"), **common}
        if "p0_5" in stats and "p99_5" in stats and float(stats["p99_5"]) > float(stats["p0_5"]):
            kwargs["contrast_limits"] = [float(stats["p0_5"]), float(stats["p99_5"])]
        layers.append((data, kwargs, "image"))
    for label, arr in store.label_images.items():
        levels = store.pyramids.get(f"{ome.LABELS}/{label}") or [arr]
        data, multi = _data(levels)
        data = [d.map_blocks(_layer_values, dtype=np.uint8) for d in data] if multi else \
            data.map_blocks(_layer_values, dtype=np.uint8)
        layers.append((data, {"name": label, "multiscale": multi, "metadata": meta(label), "opacity": 0.5,
                              **label_kwargs(classes), **common}, "labels"))
    if store.probabilities is not None:
        levels = store.pyramids.get(ome.PROBABILITIES) or [store.probabilities]
        for k, cls in enumerate(classes):
            data, multi = _data(levels, take=k, cast=np.float32)
            layers.append((data, {"name": f"p({cls})", "multiscale": multi, "contrast_limits": [0.0, 1.0],
                                  "visible": False, "metadata": meta(f"p({cls})"), **common}, "image"))
    if store.entropy is not None:
        levels = store.pyramids.get(ome.ENTROPY) or [store.entropy]
        data, multi = _data(levels, take=0 if store.entropy.ndim == 4 else None, cast=np.float32)
        layers.append((data, {"name": ome.ENTROPY, "multiscale": multi, "colormap": "inferno", "visible": False,
                              "contrast_limits": [0.0, float(np.log(max(len(classes), 2)))],
                              "metadata": meta(ome.ENTROPY), **common}, "image"))
    log.info("opened %s: %s", path, ", ".join(kw["name"] for _, kw, _ in layers))
    return layers

