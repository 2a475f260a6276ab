"""Threshold baselines as predictors: segment_baseline runs through segment's plan, runner and writer,
and its output is the baseline of the whole volume, bit for bit, for any block depth and format."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from conftest import make_store
from xtrain.data.store import open_store
from xtrain.data.volumes import open_volume
from xtrain.evaluate.baselines import apply_thresholds, fit_baseline
from xtrain.infer.baselines import ThresholdPredictor, segment_baseline
from xtrain.infer.postprocess import majority_labels
from xtrain.infer.write import work_dir

SHAPE = (70, 29, 23)  # 70 deep: blocks of whole 32-slice shards (the default layout) are 2 or 3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("baselines") / "vol.zarr", SHAPE, seed=4)


def whole_volume(baseline, image: np.ndarray, clean: bool) -> np.ndarray:
    """The baseline of the whole volume in memory, independently of xtrain's block code:
    scipy's 3x3x3 median ('nearest' at the faces), the thresholds, then the majority filter."""
    data = ndimage.median_filter(image, size=3, mode="nearest") if baseline.median else image
    labels = apply_thresholds(data, baseline.thresholds)
    full = tuple((0, n) for n in image.shape)
    return majority_labels(labels, full, full, image.shape, len(baseline.thresholds) + 1) if clean else labels


@pytest.mark.parametrize("name", ["otsu", "median-otsu"])
@pytest.mark.parametrize("clean", [False, True])
def test_any_block_depth_gives_the_whole_volume_result_bit_for_bit(store, tmp_path, name, clean):
    b = fit_baseline(name, store, z_range=(0, 12))
    want = whole_volume(b, open_store(store).image[:], clean)
    if clean:
        assert (want != whole_volume(b, open_store(store).image[:], False)).any()  # the filter did something
    for slab, depth in ((1, 32), (40, 64), (100, 70)):  # rounded up to whole shards, clipped to the volume
        out = open_store(segment_baseline(b, store, tmp_path / f"{slab}.zarr", slab=slab, clean=clean))
        assert np.array_equal(out.labels[:], want), slab
        settings = out.info.source["settings"]
        assert settings["block"] == [depth, *SHAPE[1:]] and settings["clean"] is clean
        assert not work_dir(tmp_path / f"{slab}.zarr").exists()
    with tifffile.TiffFile(segment_baseline(b, store, tmp_path / "s.tif", slab=5, clean=clean)) as tif:
        assert np.array_equal(tif.asarray(), want)
        assert json.loads(tif.imagej_metadata["Info"])["xtrain"]["source"]["kind"] == "baseline"
    with h5py.File(segment_baseline(b, store, tmp_path / "s.h5", slab=3, clean=clean), "r") as f:
        assert np.array_equal(f["entry/data/data"][:], want)


def test_threshold_predictor_has_the_predictor_contract(store):
    b = fit_baseline("median-otsu", store, z_range=(0, 12))
    vol = open_volume(store)
    predictor = ThresholdPredictor(b, 3)
    core = ((3, 9), (10, 20), (0, 23))
    assert predictor.input_box(core, SHAPE) == ((2, 10), (9, 21), (0, 23))  # the median's reach, clipped
    probs = predictor.predict(vol, core)
    assert probs.shape == (3, 6, 10, 23) and probs.dtype == np.float32
    assert set(np.unique(probs)) == {0.0, 1.0} and (probs.sum(0) == 1).all()  # one-hot
    want = whole_volume(b, open_store(store).image[:], False)[3:9, 10:20, :]
    assert np.array_equal(probs.argmax(0), want)


def test_the_output_records_the_baseline_and_the_volume(store, tmp_path):
    b = fit_baseline("kmeans", store, z_range=(0, 12))
    out = open_store(segment_baseline(b, store, tmp_path / "k.zarr"))
    src = out.info.source
    assert src["kind"] == "baseline" and src["baseline"] == json.loads(json.dumps(b.to_dict()))
    assert src["volume"] == str(open_volume(store).spec) and src["clean"] is False and "inference" not in src
    assert out.info.stats["fill"] == {"fraction": 0.0, "value": None}  # computed: the store's leave no fill out
    assert np.array_equal(out.image[:], open_store(store).image[:])


def test_an_existing_output_is_refused_before_any_work(store, tmp_path):
    from xtrain.errors import OutputExistsError

    b = fit_baseline("otsu", store)
    out = segment_baseline(b, store, tmp_path / "o.zarr")
    stamp = (out / "zarr.json").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="--overwrite"):
        segment_baseline(b, store, out)
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    segment_baseline(b, store, out, overwrite=True, clean=True)
    assert open_store(out).info.source["clean"] is True
