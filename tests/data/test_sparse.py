"""Sparse labels in: label folders of fewer slices matched by slice number, every refusal, the real file names."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import tifffile

from xtrain.cli import main
from xtrain.data.ingest import ingest
from xtrain.data.labels import IGNORE, LabelCensus
from xtrain.data.sparse import match_slices, slice_number
from xtrain.data.store import open_store
from xtrain.errors import InvalidInputError

SHAPE = (37, 41, 29)  # more than one 32-deep slab, odd in-plane sizes
RAW = np.array([0, 128, 255], np.uint8)  # raw label values as the real labels have them


def scan(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, shape, dtype=np.uint16), rng.integers(0, 3, shape).astype(np.uint8)


def write_slices(folder, planes, names):
    folder.mkdir(parents=True, exist_ok=True)
    for plane, name in zip(planes, names):
        tifffile.imwrite(folder / name, plane)
    return folder


@pytest.fixture
def images(tmp_path):
    """37 image slices 'img1.tif' .. 'img37.tif' (no zero padding) and their class ids."""
    image, ids = scan()
    return write_slices(tmp_path / "images", image, [f"img{z + 1}.tif" for z in range(SHAPE[0])]), image, ids


def run_bad(capsys, tmp_path, args):
    """The CLI refuses: exit 2, one line, no store and no temporary left; returns the line."""
    out = tmp_path / "out.zarr"
    code = main(["ingest", str(args[0]), str(out), *map(str, args[1:])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    return err[0]


def test_slice_number_is_the_last_run_of_digits():
    assert slice_number("slice__021.tif") == 21
    assert slice_number("/data/v1/SOCprist0021.tiff") == 21  # the folder's digits are not the name's
    assert slice_number("scan_v2_0021.tif") == 21
    assert slice_number("21.tf8") == 21  # the suffix's digits are not the slice number
    assert slice_number("slice.tif") is None


def test_matching_rules(caplog):
    imgs = [f"SOCprist{z:04d}.tiff" for z in range(1, 11)]
    assert match_slices([f"slice__{z:03d}.tif" for z in (3, 7, 10)], imgs, "l", "i") == [2, 6, 9]  # by number
    assert match_slices([f"slice__{z:03d}.tif" for z in range(1, 11)], imgs, "l", "i") == list(range(10))
    with caplog.at_level(logging.WARNING):  # the same count, numbered from 0: by order, and said
        assert match_slices([f"lab{z}.tif" for z in range(10)], imgs, "l", "i") == list(range(10))
    assert "matched by order" in caplog.text and "0..9" in caplog.text and "1..10" in caplog.text
    assert match_slices([f"lab_{c}.tif" for c in "abcdefghij"], imgs, "l", "i") == list(range(10))  # no numbers
    # the same count, numbers that disagree (not one offset): by number, which refuses the stray one
    with pytest.raises(InvalidInputError, match=r"'lab40.tif' is slice number 40, which matches no image"):
        match_slices([f"lab{z}.tif" for z in (*range(1, 10), 40)], imgs, "l", "i")


def test_fewer_label_slices_are_matched_by_number_and_the_rest_is_unlabelled(tmp_path, images, caplog):
    folder, image, ids = images
    labelled = [4, 19, 32]  # image z of the label files: slices 5, 20, 33 (both sides of the slab boundary)
    labels = write_slices(tmp_path / "labels", RAW[ids[labelled]], [f"slice__{z + 1:04d}.tif" for z in labelled])
    out = tmp_path / "s.zarr"
    with caplog.at_level(logging.INFO, logger="xtrain"):
        assert main(["ingest", str(folder), str(out), "--labels", str(labels), "--label-map",
                     "0:0,128:1,255:2"]) == 0
    store = open_store(out)
    expected = np.full(SHAPE, IGNORE, np.uint8)
    expected[labelled] = ids[labelled]
    np.testing.assert_array_equal(store.labels[:], expected)
    np.testing.assert_array_equal(store.image[:], image)
    census = LabelCensus.from_dict(store.info.labels)
    assert census.painted("z") == labelled and census.labelled == 3 * SHAPE[1] * SHAPE[2]
    assert census.per_class == np.bincount(ids[labelled].ravel(), minlength=3).tolist()
    assert store.info.source["label_z"] == labelled and len(store.info.source["labels"]) == 3
    assert "labels on 3 of 37 z-planes, 8.1 % of voxels; no labels on y/x planes" in caplog.text


@pytest.mark.parametrize("names, expected", [
    (["slice__0005.tif", "slice__0040.tif"], ["/slice__0040.tif' is slice number 40, which matches no image",
                                              "slices 1..37"]),
    (["slice__0005.tif", "slice.tif"], ["/slice.tif' has no slice number in its name", "last number"]),
    (["slice__0005.tif", "scan_5.tif"], ["/scan_5.tif' and '", "/slice__0005.tif' have the same slice number 5"]),
])
def test_label_files_refused_naming_the_file(capsys, tmp_path, images, names, expected):
    folder, _, ids = images
    labels = write_slices(tmp_path / "labels", RAW[ids[:len(names)]], names)
    line = run_bad(capsys, tmp_path, [folder, "--labels", labels, "--label-map", "0:0,128:1,255:2"])
    for text in expected:
        assert text in line, line


def test_two_images_with_one_number_and_a_single_file_image_are_refused(capsys, tmp_path):
    image, ids = scan((5, 41, 29))
    folder = write_slices(tmp_path / "images", image, ["a_1.tif", "a_2.tif", "b_2.tif", "a_3.tif", "a_4.tif"])
    labels = write_slices(tmp_path / "labels", RAW[ids[:2]], ["l_1.tif", "l_3.tif"])
    line = run_bad(capsys, tmp_path, [folder, "--labels", labels, "--label-map", "0:0,128:1,255:2"])
    assert "image files" in line and "a_2.tif' and '" in line and "b_2.tif' have the same slice number 2" in line
    tifffile.imwrite(tmp_path / "stack.tif", image)
    line = run_bad(capsys, tmp_path, [tmp_path / "stack.tif", "--labels", labels, "--label-map", "0:0,128:1,255:2"])
    assert "hold 2 slices" in line and "stack.tif" in line and "folder (or glob) of slices" in line


def test_same_count_numbered_alike_keeps_the_dense_path(tmp_path, images):
    """As many label files as images, numbered with other padding: matched as before, every voxel labelled."""
    folder, _, ids = images
    labels = write_slices(tmp_path / "labels", RAW[ids], [f"slice__{z + 1:03d}.tif" for z in range(SHAPE[0])])
    store = open_store(ingest(folder, tmp_path / "s.zarr", labels=labels, label_map={0: 0, 128: 1, 255: 2}))
    np.testing.assert_array_equal(store.labels[:], ids)
    assert store.info.labels["dense"] and "label_z" not in store.info.source


@pytest.mark.realdata
def test_real_file_names_match_by_number(real_data, tmp_path):
    """The real scan's names: labels slice__003.tif .. label images SOCprist0003.tiff .. (other padding)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for z in range(1, 11):
        shutil.copy(real_data / "images" / f"SOCprist{z:04d}.tiff", tmp_path / "images")
    for z in (3, 8):
        shutil.copy(real_data / "labels" / f"slice__{z:03d}.tif", tmp_path / "labels")
    store = open_store(ingest(tmp_path / "images", tmp_path / "soc.zarr", labels=tmp_path / "labels",
                              label_map={0: 0, 128: 1, 255: 2}))
    assert store.shape == (10, 501, 501) and store.info.source["label_z"] == [2, 7]
    for z in range(10):
        if z in (2, 7):
            raw = tifffile.imread(real_data / "labels" / f"slice__{z + 1:03d}.tif")
            np.testing.assert_array_equal(store.labels[z], np.searchsorted([0, 128, 255], raw))
        else:
            assert (store.labels[z] == IGNORE).all()
    assert LabelCensus.from_dict(store.info.labels).painted("z") == [2, 7]
