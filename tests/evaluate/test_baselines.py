"""Multi-Otsu baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xtrain.evaluate.baselines import apply_thresholds, multi_otsu_thresholds, otsu_segment
from xtrain.errors import InvalidInputError


def mean_dice(pred: np.ndarray, truth: np.ndarray, n_classes: int = 3) -> float:
    scores = []
    for c in range(n_classes):
        p, t = pred == c, truth == c
        scores.append(2.0 * np.logical_and(p, t).sum() / max(int(p.sum()) + int(t.sum()), 1))
    return float(np.mean(scores))


def test_otsu_segments_an_easy_synthetic_volume():
    from xtrain.data.synth import generate

    image, labels, _ = generate((32, 96, 96), preset="easy", seed=0)
    pred = otsu_segment(image)
    assert pred.dtype == np.uint8 and pred.shape == image.shape
    assert mean_dice(pred, labels) > 0.9


def test_thresholds_from_store_histogram(tmp_path):
    """The coarse histogram in the store attributes is enough to threshold the store."""
    from xtrain.data.store import open_store
    from xtrain.data.synth import synthesize

    store = open_store(synthesize(tmp_path / "e.zarr", shape=(16, 64, 64), preset="easy", seed=1))
    hist = store.info.stats["hist"]
    edges = np.linspace(*hist["range"], len(hist["counts"]) + 1)
    t = multi_otsu_thresholds(hist["counts"], edges)
    assert t.shape == (2,) and t[0] < t[1]
    assert mean_dice(apply_thresholds(store.image[:], t), store.labels[:]) > 0.9


def test_edges_and_centres_give_the_same_thresholds():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(m, 1.0, 5000) for m in (0.0, 10.0, 20.0)])
    counts, edges = np.histogram(values, bins=128)
    centres = 0.5 * (edges[:-1] + edges[1:])
    t = multi_otsu_thresholds(counts, edges)
    assert np.allclose(t, multi_otsu_thresholds(counts, centres))
    assert 2 < t[0] < 8 and 12 < t[1] < 18


def test_apply_thresholds_convention():
    image = np.array([0, 4, 5, 6, 9, 10, 11], dtype=np.uint16)
    assert apply_thresholds(image, [5, 10]).tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_bad_histograms_are_rejected():
    with pytest.raises(InvalidInputError, match="edges"):
        multi_otsu_thresholds(np.ones(10), np.arange(5))
    with pytest.raises(InvalidInputError, match="non-empty"):
        multi_otsu_thresholds(np.array([0, 5, 0, 0]), np.arange(4))
    with pytest.raises(InvalidInputError, match="increasing"):
        apply_thresholds(np.zeros(3), [5, 1])


# ----------------------------------------------------------------------------- fitted baselines


@pytest.fixture(scope="module")
def easy_store(tmp_path_factory):
    from xtrain.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("b") / "easy.zarr", shape=(32, 64, 64), preset="easy", seed=0)


@pytest.mark.parametrize("name", ["otsu", "kmeans", "median-otsu"])
def test_fitted_baselines_separate_an_easy_volume(easy_store, tmp_path, name):
    from xtrain.evaluate.baselines import fit_baseline
    from xtrain.infer.baselines import segment_baseline
    from xtrain.data.store import open_store

    b = fit_baseline(name, easy_store, z_range=(0, 20))
    assert len(b.thresholds) == 2 and b.thresholds[0] < b.thresholds[1]
    out = open_store(segment_baseline(b, easy_store, tmp_path / "seg.zarr"))
    truth = open_store(easy_store)
    assert out.shape == truth.shape and out.labels.dtype == np.uint8
    assert mean_dice(out.labels[:], truth.labels[:]) > 0.9
    assert np.array_equal(out.image[:], truth.image[:])  # the output carries its image
    src = out.info.source
    assert src["baseline"]["name"] == name and src["baseline"]["thresholds"] == b.thresholds
    assert src["baseline"]["fit"]["z_range"] == [0, 20]
    if name == "kmeans":
        c = src["baseline"]["centres"]
        assert c == sorted(c)  # class 0 = darkest centre = pore


@pytest.mark.parametrize("name", ["median-otsu", "kmeans"])
def test_baseline_output_independent_of_slab_size(easy_store, tmp_path, name):
    from xtrain.evaluate.baselines import fit_baseline
    from xtrain.infer.baselines import segment_baseline
    from xtrain.data.store import open_store

    b = fit_baseline(name, easy_store, z_range=(0, 16))
    assert b == fit_baseline(name, easy_store, z_range=(0, 16))  # deterministic fit
    ref = b.predict(open_store(easy_store).image[:])  # whole volume at once
    for slab in (1, 5, 32):
        out = open_store(segment_baseline(b, easy_store, tmp_path / f"s{slab}.zarr", slab=slab))
        assert np.array_equal(out.labels[:], ref), slab


def test_kmeans_1d_recovers_centres():
    from xtrain.evaluate.baselines import kmeans_1d

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(m, 1.0, n) for m, n in ((50.0, 3000), (10.0, 5000), (30.0, 2000))])
    assert np.allclose(kmeans_1d(values), [10, 30, 50], atol=0.2)


def test_baseline_errors(easy_store, tmp_path):
    from xtrain.evaluate.baselines import fit_baseline
    from xtrain.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="otsu"):
        fit_baseline("otsu2", easy_store)
    with pytest.raises(InvalidInputError, match="fit z range"):
        fit_baseline("otsu", easy_store, z_range=(10, 99))


def test_baseline_writes_ome_zarr_imagej_tiff_and_nexus(easy_store, tmp_path, capsys):
    import h5py
    import tifffile
    import zarr
    from ome_zarr_models.v05.image import Image

    from xtrain.evaluate.baselines import fit_baseline
    from xtrain.infer.baselines import segment_baseline
    from xtrain.cli import main
    from xtrain.data.store import open_store

    b = fit_baseline("otsu", easy_store, z_range=(0, 16))
    ref = open_store(segment_baseline(b, easy_store, tmp_path / "s.zarr"))
    Image.from_zarr(zarr.open_group(str(tmp_path / "s.zarr"), mode="r"))
    assert set(ref.label_images) == {"prediction"}
    voxel = open_store(easy_store).info.voxel_size_nm / 1000
    with tifffile.TiffFile(segment_baseline(b, easy_store, tmp_path / "s.tif")) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        assert tif.imagej_metadata["spacing"] == pytest.approx(voxel)
        assert json.loads(tif.imagej_metadata["Info"])["xtrain"]["source"]["baseline"]["name"] == "otsu"
        assert np.array_equal(tif.asarray(), ref.labels[:])
    with h5py.File(segment_baseline(b, easy_store, tmp_path / "s.nxs"), "r") as f:
        assert f["entry/data"].attrs["signal"] == "data"
        assert np.array_equal(f["entry/data/data"][:], ref.labels[:])
    assert main(["baseline", "otsu", "--fit", str(easy_store), str(easy_store), str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ".tif" in err and not (tmp_path / "s.png").exists()
