"""Which planes to label next (xtrain/infer/suggest.py): the scores against independent computations, block
independence, the spread picks, the exclusion of labelled planes, the CSV/TIFF output and the refusals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from conftest import make_store
from xtrain.cli import main
from xtrain.data.labels import IGNORE, census
from xtrain.data.normalise import normalised_volume
from xtrain.data.store import open_store, write_store
from xtrain.data.volumes import open_volume
from xtrain.errors import InvalidInputError, OutputExistsError, ShapeMismatchError
from xtrain.infer import open_segmentation, segment
from xtrain.infer.predict import Predictor
from xtrain.infer.suggest import (MARGIN, boundary_maps, entropy_map, entropy_scores, labelled_planes, pick_planes,
                                  plane_scores, suggest)
from xtrain.models.checkpoint import load_checkpoint, model_from_checkpoint

SHAPE = (23, 41, 37)
FAST = dict(tile=64, halo=4)  # one tile a plane: quick


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("suggest")
    store = make_store(root / "vol.zarr", SHAPE, seed=3)
    ckpt = load_checkpoint(tiny_model)
    net, info = model_from_checkpoint(ckpt, tiny_model)
    vol = normalised_volume(open_volume(store), train_stats=ckpt["stats"])
    return {"root": root, "model": tiny_model, "store": store, "net": net, "info": info, "vol": vol}


def predictor(data, axes="z"):
    return Predictor(data["net"], data["info"].in_channels, data["info"].num_classes, axes=axes, **FAST)


def plane_means(voxels):
    return {"z": voxels.mean(axis=(1, 2)), "y": voxels.mean(axis=(0, 2)), "x": voxels.mean(axis=(0, 1))}


def test_voxel_maps_equal_their_definitions():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([0.5, 0.5, 0.5], size=(5, 6, 7)).transpose(3, 0, 1, 2).astype(np.float32)  # (K, z, y, x)
    p[:, 0, 0, 0] = [1, 0, 0]  # 0 log 0 counts as 0
    expected = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=0)
    np.testing.assert_allclose(entropy_map(p), expected, rtol=1e-5, atol=1e-6)
    assert entropy_map(p)[0, 0, 0] == 0
    boundary, uncertain = boundary_maps(p)
    labels = p.argmax(0)
    padded = np.pad(labels, 1, mode="edge")  # an edge voxel compares with the neighbours it has
    core = padded[1:-1, 1:-1, 1:-1]
    diff = np.zeros(labels.shape, bool)
    for d in range(3):
        for s in (-1, 1):
            diff |= np.roll(padded, s, axis=d)[1:-1, 1:-1, 1:-1] != core
    assert np.array_equal(boundary, diff)
    top = np.sort(p, axis=0)
    assert np.array_equal(uncertain, top[-1] - top[-2] < MARGIN)


def test_plane_scores_are_the_plane_means_of_the_whole_volume_prediction_in_any_block(data):
    vol, whole = data["vol"], tuple((0, n) for n in SHAPE)
    pred = predictor(data, "zyx")
    passes = [p for _, p in pred.predict_passes(vol, whole)]
    fused = pred.predict(vol, whole)
    summed = passes[0].copy()
    for p in passes[1:]:
        summed += p
    assert np.array_equal(summed / 3, fused)  # predict is the mean of the passes, bit for bit
    h = entropy_map(fused)
    js = h - sum(entropy_map(p) for p in passes) / 3
    boundary, uncertain = boundary_maps(fused)
    names = ("entropy", "disagreement", "boundary")
    small = plane_scores(pred, vol, names, block=(7, 16, 16))  # many blocks: the sums and the edges across them
    assert js.max() > 0.01  # the passes do disagree somewhere: the score measures something
    for a, axis in enumerate("zyx"):
        others = tuple(d for d in range(3) if d != a)
        np.testing.assert_allclose(small["entropy"][axis], plane_means(h)[axis], rtol=1e-5)
        np.testing.assert_allclose(small["disagreement"][axis], plane_means(np.maximum(js, 0))[axis], rtol=1e-4,
                                   atol=1e-7)
        expected = (boundary & uncertain).sum(axis=others) / np.maximum(boundary.sum(axis=others), 1)
        np.testing.assert_allclose(small["boundary"][axis], expected, rtol=1e-12)  # exact counts


def test_stored_entropy_of_a_segmentation_ranks_like_the_predictor(data, tmp_path):
    seg = segment(data["model"], data["store"], tmp_path / "seg.zarr", probabilities=True, **FAST)
    stored = entropy_scores(open_segmentation(seg).entropy)
    direct = plane_scores(predictor(data), data["vol"], ("entropy",))["entropy"]
    for a in "zyx":
        np.testing.assert_allclose(stored[a], direct[a], rtol=2e-3, atol=1e-4)  # float16 storage


def test_picks_take_the_best_spaced_planes_and_skip_labelled_ones():
    scores = {"z": np.array([0.1, 0.9, 0.85, 0.2, 0.8, 0.3, 0.7, 0.0, 0.6, 0.5])}
    picks = pick_planes(scores, n=3, spacing=2)
    assert [(p.axis, p.index, p.rank) for p in picks] == [("z", 1, 1), ("z", 4, 2), ("z", 6, 3)]  # 2 is next to 1
    assert picks[0].score == pytest.approx(0.9)
    picks = pick_planes(scores, n=2, spacing=2, labelled={"z": [4]})
    assert [p.index for p in picks] == [1, 6]  # 4 labelled; 3 and 5 too close to it
    # a crop: scores of slices 10.., labelled planes and picks in volume coordinates
    picks = pick_planes(scores, n=1, spacing=3, labelled={"z": [11]}, offset={"z": 10})
    assert [p.index for p in picks] == [14]
    # across axes: one ranking, spacing per axis
    both = pick_planes({"z": np.array([0.5, 0.4]), "y": np.array([0.45, 0.44, 0.9])}, n=3, spacing=2)
    assert [(p.axis, p.index) for p in both] == [("y", 2), ("z", 0), ("y", 0)]


def test_fewer_picks_when_the_spacing_leaves_fewer_planes(caplog):
    picks = pick_planes({"z": np.linspace(1, 0, 10)}, n=5, spacing=4)
    assert [p.index for p in picks] == [0, 4, 8]
    assert "only 3 of the 5 planes" in caplog.text


def test_spread_picks_cover_the_volume_without_a_model(data, tmp_path):
    picks = suggest(data["model"], data["store"], n=3, score="spread", spacing=2)
    # 23 planes: the middle first, then the middles of the two halves (an end counts half as near)
    assert [p.index for p in picks] == [11, 3, 18]
    sparse = sparse_store(tmp_path / "s.zarr", data["store"], {"z": [2, 12]})
    picks = suggest(data["model"], data["store"], n=2, score="spread", spacing=2, exclude_labelled=sparse)
    assert [p.index for p in picks] == [19, 7]  # farthest from 2, 12 and (half as near) the end at 23 first


def sparse_store(path, image_store, planes):
    """A store with the image of ``image_store`` and its labels only on ``planes`` (axis -> indices)."""
    src = open_store(image_store)
    labels = np.full(src.shape, IGNORE, np.uint8)
    truth = src.labels[:]
    for axis, idx in planes.items():
        sl = [slice(None)] * 3
        sl["zyx".index(axis)] = idx
        labels[tuple(sl)] = truth[tuple(sl)]
    with write_store(path, src.shape) as w:
        w.create("image", src.shape, src.image.dtype)[:] = src.image[:]
        w.create("labels", src.shape, np.uint8)[:] = labels
        w.info.classes, w.info.stats = src.info.classes, src.info.stats
        w.info.labels = census(labels).to_dict()
    return path


def test_suggest_skips_labelled_planes_and_writes_the_csv_and_the_planes(data, tmp_path, caplog):
    caplog.set_level("INFO", logger="xtrain")
    sparse = sparse_store(tmp_path / "sparse.zarr", data["store"], {"z": [5, 15], "x": [20]})
    assert labelled_planes(sparse, SHAPE) == {"z": [5, 15], "y": [], "x": [20]}
    scores = plane_scores(predictor(data, "zyx"), data["vol"], ("entropy",))["entropy"]
    picks = suggest(data["model"], data["store"], n=4, axes="zyx", spacing=3, exclude_labelled=sparse,
                    score="entropy", out=tmp_path / "next", **FAST)
    assert len(picks) == 4 and [p.rank for p in picks] == [1, 2, 3, 4]
    assert pick_planes(scores, 4, 3, {"z": [5, 15], "x": [20]}) == picks  # the same as ranking by hand
    for p in picks:
        near = {"z": [5, 15], "y": [], "x": [20]}[p.axis]
        assert all(abs(p.index - t) >= 3 for t in near)
        assert f"pick {p.rank}: {p.axis}-plane {p.index}" in caplog.text
    with open(tmp_path / "next" / "suggestions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["axis"], int(r["index"])) for r in rows] == [(p.axis, p.index) for p in picks]
    image = open_store(data["store"]).image[:]
    for axis in {p.axis for p in picks}:
        mine = [p for p in picks if p.axis == axis]
        with tifffile.TiffFile(tmp_path / "next" / f"planes_{axis}.tif") as tif:
            assert tif.is_imagej
            pages = tif.asarray().reshape(len(mine), *tif.pages[0].shape)
        for page, p in zip(pages, mine):
            assert np.array_equal(page, np.take(image, p.index, axis="zyx".index(axis)))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        suggest(data["model"], data["store"], n=1, out=tmp_path / "next", **FAST)


def test_z_range_keeps_the_picks_inside_it(data):
    picks = suggest(data["model"], data["store"], n=3, spacing=2, z_range=(10, 20), score="entropy", **FAST)
    assert all(10 <= p.index < 20 for p in picks)
    full = plane_scores(predictor(data), data["vol"], ("entropy",))["entropy"]
    part = plane_scores(predictor(data), data["vol"], ("entropy",), z_range=(10, 20))["entropy"]
    np.testing.assert_allclose(part["z"], full["z"][10:20], rtol=1e-6)  # the rest of the volume is context
    assert [p.index for p in picks] == [p.index for p in pick_planes({"z": full["z"][10:20]}, 3, 2, offset={"z": 10})]


@pytest.mark.parametrize("case", ["disagreement-z", "shape", "everything-labelled", "n"])
def test_bad_input_is_refused_with_one_line(data, tmp_path, case):
    kwargs = dict(n=2, **FAST)
    if case == "disagreement-z":
        kwargs["score"] = "disagreement"
        err, match = InvalidInputError, "--axes zyx"
    elif case == "shape":
        kwargs["exclude_labelled"] = make_store(tmp_path / "other.zarr", (5, 41, 37))
        err, match = ShapeMismatchError, "has shape"
    elif case == "everything-labelled":
        kwargs["exclude_labelled"] = data["store"]  # dense labels: every plane is labelled
        err, match = InvalidInputError, "no plane left"
    else:
        kwargs["n"] = 0
        err, match = InvalidInputError, "at least 1"
    with pytest.raises(err, match=match) as info:
        suggest(data["model"], data["store"], **kwargs)
    assert "\n" not in str(info.value)


def test_cli_prints_the_ranking_and_refuses_bad_input_with_exit_2(data, tmp_path, capsys):
    assert main(["suggest", str(data["model"]), str(data["store"]), "--n", "2", "--tile", "64",
                 "--out", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "rank,axis,index,score" and len(lines) == 3
    assert (tmp_path / "s" / "planes_z.tif").exists()
    assert main(["suggest", str(data["model"]), str(data["store"]), "--n", "2", "--score", "disagreement"]) == 2
    err = capsys.readouterr().err
    assert "--axes zyx" in err and "Traceback" not in err
