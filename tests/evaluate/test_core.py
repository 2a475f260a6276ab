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
