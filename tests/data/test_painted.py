"""Painted labels -> a sparse-label store (xtrain/data/painted.py): the values, the merge, the census, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_store
from xtrain.data.labels import IGNORE, census
from xtrain.data.painted import painted_ids, save_painted, to_layer_values
from xtrain.data.store import open_store
from xtrain.data.volumes import array_volume, open_volume
from xtrain.errors import InvalidInputError, LabelValueError, ShapeMismatchError

SHAPE = (7, 13, 11)
CLASSES = ["pore", "ysz", "ni"]


def test_layer_values_and_class_ids_convert_both_ways():
    ids = np.array([[[0, 1, 2, IGNORE]]], np.uint8)
    values = to_layer_values(ids)
    assert values.tolist() == [[[1, 2, 3, 0]]]
    assert np.array_equal(painted_ids(values, 3), ids)
    with pytest.raises(LabelValueError, match=r"painted value 4 at \(z, y, x\) \(0, 0, 1\).*1..3"):
        painted_ids(np.array([[[1, 4]]]), 3)


def test_a_new_store_holds_the_painting_the_image_and_its_census(tmp_path):
    image = make_store(tmp_path / "img.zarr", SHAPE)
    painted = np.zeros(SHAPE, np.uint8)
    painted[3] = 2  # a whole z-plane of ysz
    painted[:, 4, 2:5] = 3  # a scribble of ni across z
    report = save_painted(tmp_path / "lab.zarr", painted, classes=CLASSES, image=open_volume(image),
                          source={"model": "m.pt"})
    s = open_store(tmp_path / "lab.zarr")
    expected = np.where(painted > 0, painted - 1, IGNORE)
    assert np.array_equal(s.labels[:], expected)
    assert np.array_equal(s.image[:], open_store(image).image[:])
    assert s.info.labels == census(expected).to_dict() and s.info.classes == CLASSES
    assert s.info.stats == open_store(image).info.stats  # the training normalisation of the image
    assert s.info.source["model"] == "m.pt" and s.info.source["kind"] == "painted"
    assert report.painted == int((painted > 0).sum()) and report.earlier == 0
    assert "a new store" in report.summary() and "1 z planes" in report.summary()


def test_saving_again_merges_and_painted_voxels_win(tmp_path):
    image = array_volume(np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE))
    first = np.zeros(SHAPE, np.uint8)
    first[1] = 1
    save_painted(tmp_path / "lab.zarr", first, classes=CLASSES, image=image)
    second = np.zeros(SHAPE, np.uint8)
    second[5] = 3
    second[1, :2] = 2  # repaints 2 rows of the first plane
    report = save_painted(tmp_path / "lab.zarr", second, classes=CLASSES, image=None)
    labels = open_store(tmp_path / "lab.zarr").labels[:]
    assert (labels[5] == 2).all() and (labels[1, :2] == 1).all() and (labels[1, 2:] == 0).all()
    assert (labels[[0, 2, 3, 4, 6]] == IGNORE).all()
    assert report.earlier == SHAPE[1] * SHAPE[2] and report.replaced == 2 * SHAPE[2]
    assert "merged with" in report.summary() and "repainted" in report.summary()
    assert open_store(tmp_path / "lab.zarr").info.stats["p0_5"] >= 0  # statistics computed for an array image


@pytest.mark.parametrize("case", ["nothing", "shape", "classes"])
def test_bad_input_writes_nothing(tmp_path, case):
    image = make_store(tmp_path / "img.zarr", SHAPE)
    out = tmp_path / "lab.zarr"
    painted = np.zeros(SHAPE, np.uint8)
    painted[0] = 1
    classes = CLASSES
    if case == "nothing":
        painted[:] = 0
        err, match = InvalidInputError, "nothing is painted"
    elif case == "shape":
        painted = painted[:5]
        err, match = ShapeMismatchError, "has shape"
    else:
        save_painted(out, painted, classes=CLASSES, image=open_volume(image))
        classes = ["a", "b", "c"]
        err, match = InvalidInputError, "has classes"
    before = open_store(out).labels[:] if out.exists() else None
    with pytest.raises(err, match=match):
        save_painted(out, painted, classes=classes, image=open_volume(image))
    if before is None:
        assert not out.exists()
    else:
        assert np.array_equal(open_store(out).labels[:], before)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
