"""Segment and evaluate take every input format: HDF5, Zarr v2 and OME-Zarr segment bit for bit like a store."""

from __future__ import annotations

import h5py
import hdf5plugin
import numpy as np
import pytest
import zarr

from conftest import make_store
from xtrain.data.store import open_store
from xtrain.evaluate.core import evaluate
from xtrain.infer import open_segmentation, segment

SHAPE = (13, 41, 37)
FAST = dict(tile=32, halo=4, chunks=(8, 16, 16), shard=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    store = make_store(root / "vol.zarr", SHAPE, seed=7)
    s = open_store(store)
    image, labels = s.image[:], s.labels[:]
    with h5py.File(root / "tomo.h5", "w") as f:
        f.create_dataset("exchange/data", data=image, chunks=(1, *SHAPE[1:]), **hdf5plugin.Bitshuffle(cname="lz4"))
        f.create_dataset("exchange/labels", data=labels)
    v2 = zarr.create_array(str(root / "v2.zarr"), shape=SHAPE, dtype=image.dtype, chunks=(4, 20, 20), zarr_format=2)
    v2[:] = image
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    write_image(image, zarr.open_group(str(root / "img.ome.zarr"), mode="w", zarr_format=3), axes="zyx",
                fmt=FormatV05(), scale_factors=[2])
    return {"root": root, "store": store, "labels": labels,
            "specs": {"hdf5": f"{root / 'tomo.h5'}:/exchange/data", "zarr-v2": str(root / "v2.zarr"),
                      "ome-zarr": str(root / "img.ome.zarr")}}


def test_every_format_segments_bit_for_bit_like_the_store(tiny_model, inputs, tmp_path):
    ref = open_segmentation(segment(tiny_model, inputs["store"], tmp_path / "ref.zarr", **FAST))["labels"][:]
    assert len(np.unique(ref)) == 3
    for name, spec in inputs["specs"].items():
        out = segment(tiny_model, spec, tmp_path / f"{name}.zarr", **FAST)
        g = open_segmentation(out)
        np.testing.assert_array_equal(g["labels"][:], ref, err_msg=name)
        source = dict(g.attrs)["xtrain"]["source"]
        assert source["normalisation"]["mode"] == "train" and source["volume_provenance"]["format"] in name


def test_evaluate_takes_every_format(inputs):
    truth = inputs["store"]
    ref = evaluate(truth, truth, microstructure=False)["confusion_matrix"]
    h5 = evaluate(f"{inputs['root'] / 'tomo.h5'}:/exchange/labels", truth, microstructure=False)
    assert h5["confusion_matrix"] == ref
    zarr.create_array(str(inputs["root"] / "lab.zarr"), shape=SHAPE, dtype=np.uint8, zarr_format=2)[:] = \
        inputs["labels"]
    assert evaluate(str(inputs["root"] / "lab.zarr"), truth, microstructure=False)["confusion_matrix"] == ref
