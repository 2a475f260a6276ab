"""--clean: the 3D majority filter removes exactly the speckles, blockwise as on the whole volume."""

from __future__ import annotations

import numpy as np
import pytest

from xtrain.data.stats import IntensityStats
from xtrain.data.store import open_store, write_store
from xtrain.infer import open_segmentation, segment
from xtrain.infer.blocks import block_grid
from xtrain.infer.postprocess import CLEAN_HALO, grow, majority_filter, majority_labels

SHAPE = (23, 31, 29)


def clean_volume() -> np.ndarray:
    """Pore below z=9; above it YSZ for y < 14 and Ni for y >= 14: two flat interfaces and a
    straight triple-phase line, all running into the volume's faces."""
    v = np.zeros(SHAPE, np.uint8)
    v[9:, :14] = 1
    v[9:, 14:] = 2
    return v


def speckled() -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The clean volume with isolated wrong voxels >= 2 voxels from interfaces and each other."""
    v = clean_volume()
    rng = np.random.default_rng(3)
    dist_to_interface = np.minimum.reduce([np.abs(np.arange(SHAPE[0])[:, None, None] - 8.5) + 0 * v,
                                           np.where(np.arange(SHAPE[0])[:, None, None] >= 9,
                                                    np.abs(np.arange(SHAPE[1])[None, :, None] - 13.5), 99) + 0 * v])
    spots: list[tuple[int, int, int]] = []
    while len(spots) < 25:
        p = tuple(int(rng.integers(n)) for n in SHAPE)
        if dist_to_interface[p] < 2 or any(max(abs(a - b) for a, b in zip(p, q)) < 3 for q in spots):
            continue
        spots.append(p)  # type: ignore[arg-type]
        v[p] = (v[p] + 1 + rng.integers(2)) % 3
    return v, spots


def test_majority_removes_exactly_the_speckles():
    noisy, spots = speckled()
    assert (noisy != clean_volume()).sum() == len(spots)
    full = ((0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[2]))
    assert np.array_equal(majority_labels(noisy, full, full, SHAPE), clean_volume())
    # the soft version over probabilities: one-hot smeared, each voxel's own class at 0.6
    probs = np.full((3, *SHAPE), 0.2, np.float32)
    np.put_along_axis(probs, noisy[None].astype(np.int64), 0.6, 0)
    assert np.array_equal(majority_filter(probs, full, full, SHAPE).argmax(0), clean_volume())


@pytest.mark.parametrize("block", [(1, 31, 29), (4, 7, 5), (9, 16, 30), SHAPE])
def test_blockwise_clean_is_bit_identical_to_the_whole_volume(block):
    noisy, _ = speckled()
    rng = np.random.default_rng(0)
    probs = rng.random((3, *SHAPE), dtype=np.float32)
    full = ((0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[2]))
    whole_p, whole_l = majority_filter(probs, full, full, SHAPE), majority_labels(noisy, full, full, SHAPE)
    out_p, out_l = np.zeros_like(whole_p), np.zeros_like(whole_l)
    for b in block_grid(SHAPE, block):
        box = grow(b.core, CLEAN_HALO, SHAPE)
        sl = tuple(slice(a, c) for a, c in box)
        core = tuple(slice(a, c) for a, c in b.core)
        out_p[(slice(None), *core)] = majority_filter(probs[(slice(None), *sl)], box, b.core, SHAPE)
        out_l[core] = majority_labels(noisy[sl], box, b.core, SHAPE)
    assert np.array_equal(out_p, whole_p) and np.array_equal(out_l, whole_l)


def test_a_box_without_the_context_is_refused():
    core = ((2, 5), (0, 31), (0, 29))
    with pytest.raises(ValueError, match="grow it"):
        majority_labels(np.zeros((3, 31, 29), np.uint8), core, core, SHAPE)


def image_store(path, labels):
    """A store whose grey values are 1000 * (class + 1): Otsu thresholds recover the labels."""
    image = (labels.astype(np.uint16) + 1) * 1000
    with write_store(path, labels.shape) as w:
        w.create("image", labels.shape, np.uint16)[:] = image
        stats = IntensityStats(np.dtype(np.uint16))
        stats.update(image)
        w.info.stats = stats.to_dict()
    return path


@pytest.mark.parametrize("slab", [3, 8])
def test_baseline_clean_removes_exactly_the_speckles(tmp_path, slab):
    from xtrain.evaluate.baselines import fit_baseline
    from xtrain.infer.baselines import segment_baseline

    noisy, _ = speckled()
    store = image_store(tmp_path / "img.zarr", noisy)
    b = fit_baseline("otsu", store)
    plain = segment_baseline(b, store, tmp_path / "plain.zarr", slab=slab)
    assert np.array_equal(open_store(plain).labels[:], noisy)  # the baseline reproduces the speckles ...
    cleaned = segment_baseline(b, store, tmp_path / "clean.zarr", slab=slab, clean=True)
    assert np.array_equal(open_store(cleaned).labels[:], clean_volume())  # ... --clean removes them


@pytest.fixture(scope="module")
def model_and_store(tmp_path_factory, tiny_model):
    from conftest import make_store

    root = tmp_path_factory.mktemp("clean")
    return tiny_model, make_store(root / "vol.zarr", (21, 37, 33))


def test_segment_clean_is_the_filter_of_the_whole_volume_prediction_for_any_block(model_and_store, tmp_path):
    from xtrain.infer.predict import Predictor
    from xtrain.data.normalise import normalised_volume
    from xtrain.data.volumes import open_volume
    from xtrain.models.checkpoint import load_checkpoint, model_from_checkpoint

    model, store = model_and_store
    fast = dict(tile=32, halo=4, chunks=(8, 16, 16), shard=False, probabilities=True, clean=True)
    small = open_segmentation(segment(model, store, tmp_path / "a.zarr", block=(8, 16, 16), **fast))
    whole = open_segmentation(segment(model, store, tmp_path / "b.zarr", block=(21, 37, 33), **fast))
    for key in ("labels", "probabilities"):
        assert np.array_equal(small[key][:], whole[key][:]), key
    # independently: predict the whole volume in memory, filter, argmax
    ckpt = load_checkpoint(model)
    kw = ckpt["model_kwargs"]
    vol = normalised_volume(open_volume(store), train_stats=ckpt.get("stats"))  # the normalisation segment chooses (auto)
    full = ((0, 21), (0, 37), (0, 33))
    probs = Predictor(model_from_checkpoint(ckpt, model)[0], kw["in_channels"], kw["num_classes"], tile=32, halo=4).predict(vol, full)
    want = majority_filter(probs, full, full, vol.shape).argmax(0)
    assert np.array_equal(small["labels"][:], want)
    raw = open_segmentation(segment(model, store, tmp_path / "c.zarr", block=(21, 37, 33),
                                    **{**fast, "clean": False}))["labels"][:]
    assert (raw != want).any()  # the filter changed something on this noisy volume
    assert dict(small.attrs)["xtrain"]["source"]["settings"]["clean"] is True
