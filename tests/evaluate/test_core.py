"""evaluate: readers, streamed confusion matrix, per-slice Dice, Zarr vs TIFF, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from xtrain.errors import InputNotFoundError, LabelValueError, ShapeMismatchError
from xtrain.evaluate.core import evaluate, open_label_volume, ratio, to_json
from xtrain.evaluate.metrics import confusion_matrix, scores


def random_labels(shape=(9, 13, 11), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, shape).astype(np.uint8)


def noisy_copy(truth, frac=0.1, seed=1):
    rng = np.random.default_rng(seed)
    pred = truth.copy()
    flip = rng.random(truth.shape) < frac
    pred[flip] = rng.integers(0, 3, int(flip.sum()))
    return pred


def write_store_labels(path, labels, image=None, voxel_size_nm=None):
    from xtrain.data.store import write_store

    with write_store(path, labels.shape) as w:
        img = w.create("image", labels.shape, np.uint16)
        lab = w.create("labels", labels.shape, np.uint8)
        img[:] = image if image is not None else labels.astype(np.uint16) * 1000
        lab[:] = labels
        w.info.voxel_size_nm = voxel_size_nm
    return path


def write_tiff_folder(folder, volume):
    folder.mkdir()
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / f"slice_{z + 1}.tif", plane)
    return folder


def test_streamed_confusion_matrix_equals_dense():
    truth = random_labels()
    pred = noisy_copy(truth)
    r = evaluate(pred, truth, slab=4, microstructure=False)
    dense = confusion_matrix(pred, truth, 3)
    assert np.array_equal(np.array(r["confusion_matrix"]), dense)
    assert r["overlap"] == scores(dense, ["pore", "ysz", "ni"])
    # per-slice Dice: slice by slice with the dense scorer
    for z in range(truth.shape[0]):
        s = scores(confusion_matrix(pred[z], truth[z], 3))
        assert r["per_slice"]["mean_dice"][z] == pytest.approx(s["mean_dice"])
        assert r["per_slice"]["dice"]["ni"][z] == pytest.approx(s["per_class"]["2"]["dice"])
    md = np.array(r["per_slice"]["mean_dice"])
    assert r["per_slice"]["summary"]["mean_dice"] == pytest.approx({"mean": md.mean(), "std": md.std()})


def test_single_voxel_error_changes_dice_exactly():
    truth = np.zeros((4, 5, 6), np.uint8)
    truth[:, :, 2:4] = 1
    truth[:, :, 4:] = 2
    pred = truth.copy()
    pred[1, 2, 3] = 2  # one YSZ voxel called Ni
    r = evaluate(pred, truth, microstructure=False)
    n = 4 * 5 * 2  # voxels per class
    c = r["overlap"]["per_class"]
    assert c["pore"]["dice"] == 1.0
    assert c["ysz"]["dice"] == pytest.approx(2 * (n - 1) / (2 * (n - 1) + 1))  # TP n-1, FN 1
    assert c["ni"]["dice"] == pytest.approx(2 * n / (2 * n + 1))  # TP n, FP 1
    # only slice 1 is affected in the per-slice Dice
    assert r["per_slice"]["mean_dice"][0] == 1.0 and r["per_slice"]["mean_dice"][1] < 1.0


def test_zarr_and_tiff_give_the_same_result(tmp_path):
    truth = random_labels((7, 10, 12), seed=2)
    pred = noisy_copy(truth, seed=3)
    raw = np.array([0, 128, 255], np.uint8)[truth]  # manual labels as delivered: 0/128/255
    t_store = write_store_labels(tmp_path / "t.zarr", truth)
    p_store = write_store_labels(tmp_path / "p.zarr", pred)
    t_tiff = write_tiff_folder(tmp_path / "t_tif", raw)
    p_tiff = tmp_path / "p.tif"
    tifffile.imwrite(p_tiff, pred, photometric="minisblack")  # multi-page
    a = evaluate(str(p_store), str(t_store), slab=3)
    b = evaluate(open_label_volume(p_tiff), open_label_volume(t_tiff, {0: 0, 128: 1, 255: 2}), slab=5)
    for key in ("confusion_matrix", "overlap", "per_slice", "microstructure"):
        assert to_json(a[key]) == to_json(b[key]), key


def test_z_range_and_voxel_size_from_store(tmp_path):
    truth = random_labels((10, 8, 8), seed=4)
    pred = noisy_copy(truth, seed=5)
    t_store = write_store_labels(tmp_path / "t.zarr", truth, voxel_size_nm=20.0)
    r = evaluate(pred, str(t_store), z_range=(3, 7))
    assert r["z_range"] == [3, 7] and r["shape"] == [4, 8, 8] and r["per_slice"]["z"] == [3, 4, 5, 6]
    assert np.array_equal(np.array(r["confusion_matrix"]), confusion_matrix(pred[3:7], truth[3:7], 3))
    assert r["voxel_size_nm"] == 20.0 and r["microstructure"]["labels"]["units"]["tpb_density"] == "um^-2"


def test_microstructure_side_by_side_and_ratio():
    truth = random_labels(seed=6)
    r = evaluate(truth, truth)
    ms = r["microstructure"]
    assert ms["pred"] == ms["labels"]
    assert ms["ratio"]["tpb"]["density"] == 1.0 and ms["ratio"]["fractions"]["ni"] == 1.0
    assert math.isnan(ratio({"a": 1.0}, {"a": 0.0})["a"])


def test_json_is_strict_and_nan_becomes_null():
    truth = np.zeros((2, 3, 3), np.uint8)  # no YSZ, no Ni: many undefined scores
    text = to_json(evaluate(truth, truth))
    d = json.loads(text)
    assert d["overlap"]["per_class"]["ni"]["dice"] is None and "NaN" not in text


def test_errors(tmp_path):
    truth = random_labels((4, 5, 6))
    with pytest.raises(ShapeMismatchError, match=r"\(4, 5, 7\)"):
        evaluate(np.zeros((4, 5, 7), np.uint8), truth)
    with pytest.raises(InputNotFoundError):
        open_label_volume(tmp_path / "missing.zarr")
    bad = truth.copy()
    bad[2, 3, 4] = 7
    with pytest.raises(LabelValueError, match="value 7 at z=2 y=3 x=4"):
        evaluate(bad, truth, microstructure=False)
    raw = np.array([0, 128, 255], np.uint8)[truth]
    raw[1, 0, 0] = 100
    with pytest.raises(LabelValueError, match="value 100"):
        (lambda v: v.read(v.planes(0, 4)))(open_label_volume(raw, {0: 0, 128: 1, 255: 2}))


# ----------------------------------------------------------------------------- CLI errors: one line, exit 2


def _cli_error(args, capsys):
    from xtrain.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xtrain evaluate: error:")
    return err


def test_cli_errors(tmp_path, capsys):
    truth = random_labels((4, 6, 5))
    t_store = str(write_store_labels(tmp_path / "t.zarr", truth))
    assert "does not exist" in _cli_error(["evaluate", str(tmp_path / "nope.zarr"), t_store], capsys)
    other = str(write_store_labels(tmp_path / "o.zarr", random_labels((4, 6, 7))))
    assert "shape" in _cli_error(["evaluate", other, t_store], capsys)
    raw = np.array([0, 128, 255], np.uint8)[truth]
    tif = tmp_path / "raw.tif"
    tifffile.imwrite(tif, raw, photometric="minisblack")
    # 0/128/255 labels without --label-map: 128 is not a class id
    assert "is not a class" in _cli_error(["evaluate", t_store, str(tif)], capsys)
    assert "z range" in _cli_error(["evaluate", t_store, t_store, "--z", "2,9"], capsys)
    from xtrain.cli import main

    assert main(["evaluate", t_store, str(tif), "--label-map", "0:0,128:1,255:2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overlap"]["mean_dice"] == 1.0


# ----------------------------------------------------------------------------- sparse truth


def sparse_truth(truth, planes=(2, 6), scribble=(4, slice(3, 9), slice(2, 5))):
    """``truth`` with IGNORE everywhere but whole z-planes and one scribble (what a sparse store holds)."""
    from xtrain.data.labels import IGNORE

    sparse = np.full(truth.shape, IGNORE, np.uint8)
    sparse[list(planes)] = truth[list(planes)]
    sparse[scribble] = truth[scribble]
    return sparse


def test_sparse_truth_scores_labelled_voxels_only():
    from xtrain.data.labels import IGNORE

    truth = random_labels((9, 13, 11), seed=7)
    pred = noisy_copy(truth, seed=8)
    sparse = sparse_truth(truth)
    known = sparse != IGNORE
    r = evaluate(pred, open_label_volume(sparse, unlabelled=IGNORE), slab=4)
    assert np.array_equal(np.array(r["confusion_matrix"]), confusion_matrix(pred[known], truth[known], 3))
    assert r["overlap"] == scores(confusion_matrix(pred[known], truth[known], 3), ["pore", "ysz", "ni"])
    assert r["per_slice"]["z"] == [2, 4, 6]  # slices with labels only; slice 4 holds the scribble
    for i, z in enumerate((2, 4, 6)):
        s = scores(confusion_matrix(pred[z][known[z]], truth[z][known[z]], 3))
        assert r["per_slice"]["mean_dice"][i] == pytest.approx(s["mean_dice"])
    # the prediction at unlabelled voxels changes nothing: they are never counted as a class
    flipped = pred.copy()
    flipped[~known] = (flipped[~known] + 1) % 3
    again = evaluate(flipped, open_label_volume(sparse, unlabelled=IGNORE), slab=4, microstructure=False)
    assert again["confusion_matrix"] == r["confusion_matrix"] and again["per_slice"] == r["per_slice"]
    # no microstructure of partial labels: the labels' TPB and the ratio are absent, and the result says why
    ms = r["microstructure"]
    assert ms["labels"] is None and ms["ratio"] is None and ms["pred"]["tpb"]["density"] > 0
    assert r["sparse_labels"]["labelled_voxels"] == int(known.sum()) and r["sparse_labels"]["labelled_slices"] == 3
    assert "microstructure (fractions, TPB, percolation) is not computed" in r["sparse_labels"]["note"]
    assert "sparse_labels" not in evaluate(pred, truth, microstructure=False)  # dense truth: as before


def test_evaluate_a_sparse_store_and_a_painted_tiff_through_the_cli(tmp_path, capsys):
    """xtrain evaluate PRED STORE with the store's sparse labels, and LABELS painted in napari (0 = unpainted)."""
    from xtrain.cli import main
    from xtrain.data.labels import IGNORE

    truth = random_labels((9, 13, 11), seed=9)
    pred = noisy_copy(truth, seed=10)
    sparse = sparse_truth(truth)
    tifffile.imwrite(tmp_path / "pred.tif", pred, photometric="minisblack")
    store = write_store_labels(tmp_path / "sparse.zarr", sparse)
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(store), "--json"]) == 0
    by_store = json.loads(capsys.readouterr().out)
    known = sparse != IGNORE
    assert by_store["confusion_matrix"] == confusion_matrix(pred[known], truth[known], 3).tolist()
    painted = np.where(known, truth + 1, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "painted.tif", painted, photometric="minisblack")
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "painted.tif"), "--label-map",
                 "1:0,2:1,3:2", "--unlabelled", "0", "--json"]) == 0
    by_tiff = json.loads(capsys.readouterr().out)
    for key in ("confusion_matrix", "overlap", "per_slice", "sparse_labels"):
        assert by_tiff[key] == by_store[key], key
    # the report and the tables say it in one line, and show no labels' TPB
    assert main(["-q", "evaluate", str(tmp_path / "pred.tif"), str(store), "--report", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "rep" / "report.md").read_text()
    for text in (printed, md):
        assert text.count("is not computed, it needs every voxel labelled") == 1
        assert "PRED/LABELS" not in text and "TPB density" in text  # the prediction's own numbers only
    # without --unlabelled the painted zeros are class ids of nothing: refused, never ignored
    assert "is not a class" in _cli_error(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "painted.tif"),
                                           "--label-map", "1:0,2:1,3:2"], capsys)
