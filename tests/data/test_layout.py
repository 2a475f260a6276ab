"""The OME-Zarr 0.5 layout: validated by ome-zarr-models, read by ome-zarr-py, pyramids, old stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr_models.v05.image import Image

from xtrain.cli import main
from xtrain.data import layout
from xtrain.data.store import open_store, upgrade, write_store
from xtrain.errors import CorruptFileError

SHAPE = (9, 21, 19)  # odd everywhere: every level pads its edge
EDGE = 8  # pyramid down to <= 8 in y/x: (9, 21, 19) -> (5, 11, 10) -> (3, 6, 5)


def make(path, shape=SHAPE, edge=EDGE, voxel_size_nm=50.0, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 65535, shape, dtype=np.uint16, endpoint=True)
    labels = rng.integers(0, 3, shape, dtype=np.uint8)
    with write_store(path, shape, pyramid_edge=edge) as w:
        w.create_image(shape, np.uint16)[:] = image
        w.create_labels(shape)[:] = labels
        w.info.voxel_size_nm = voxel_size_nm
    return path, image, labels


def validate(path) -> Image:
    """ome-zarr-models' OME-Zarr 0.5 image model of ``path`` (raises on any departure from the spec)."""
    return Image.from_zarr(zarr.open_group(str(path), mode="r"))


def cells(a: np.ndarray, f=(2, 2, 2)) -> np.ndarray:
    """(z, y, x, 8) values of each 2x2x2 cell, edges padded by repetition (independent of layout.py)."""
    a = np.pad(a, [(0, (-n) % k) for n, k in zip(a.shape, f)], mode="edge")
    z, y, x = (n // k for n, k in zip(a.shape, f))
    return a.reshape(z, f[0], y, f[1], x, f[2]).transpose(0, 2, 4, 1, 3, 5).reshape(z, y, x, -1)


def test_store_validates_and_has_the_pyramid(tmp_path):
    path, image, labels = make(tmp_path / "s.zarr")
    model = validate(path)
    assert [d.path for d in model.attributes.ome.multiscales[0].datasets] == ["0", "1", "2"]
    store = open_store(path)
    assert [lv.shape for lv in store.levels] == [SHAPE, (5, 11, 10), (3, 6, 5)]
    assert all(lv.dtype == np.uint16 for lv in store.levels)
    np.testing.assert_array_equal(store.image[:], image)
    # level 1 = the rounded mean of each cell, level 2 the same of level 1
    expected1 = np.round(cells(image).mean(axis=-1)).astype(np.uint16)
    np.testing.assert_array_equal(store.levels[1][:], expected1)
    np.testing.assert_array_equal(store.levels[2][:], np.round(cells(expected1).mean(axis=-1)).astype(np.uint16))
    ms = dict(zarr.open_group(str(path)).attrs)["ome"]["multiscales"][0]
    assert ms["type"] == "mean" and ms["metadata"]["method"] == "dask.array.coarsen"
    assert ms["axes"][0] == {"name": "z", "type": "space", "unit": "micrometer"}
    assert ms["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [0.1, 0.1, 0.1]}, {"type": "translation", "translation": [0.025, 0.025, 0.025]}]


def test_label_pyramid_holds_the_mode_and_only_class_ids(tmp_path):
    path, _, labels = make(tmp_path / "s.zarr")
    group = zarr.open_group(str(path), mode="r")
    gt = group["labels/ground_truth"]
    levels = [gt[str(i)][:] for i in range(3)]
    assert [lv.dtype for lv in levels] == [np.uint8] * 3
    np.testing.assert_array_equal(levels[0], labels)
    # mode of each cell, ties to the smallest id: bincount + argmax (first maximum) per cell
    c = cells(labels)
    counts = np.stack([(c == k).sum(axis=-1) for k in range(3)], axis=-1)
    np.testing.assert_array_equal(levels[1], counts.argmax(axis=-1).astype(np.uint8))
    assert set(np.unique(levels[2])) <= {0, 1, 2}
    attrs = dict(gt.attrs)["ome"]
    assert attrs["multiscales"][0]["type"] == "mode"
    assert attrs["image-label"]["properties"] == [{"label-value": i, "class": c}
                                                  for i, c in enumerate(["pore", "ysz", "ni"])]
    assert attrs["image-label"]["source"] == {"image": "../../"}
    assert dict(group["labels"].attrs)["ome"]["labels"] == ["ground_truth"]


def test_ome_zarr_reader_returns_the_labels_as_a_label_node_with_colours(tmp_path):
    path, _, _ = make(tmp_path / "s.zarr")
    nodes = list(Reader(parse_url(str(path)))())
    labels = [n for n in nodes if n.load(Label)]
    assert len(labels) == 1 and nodes[0].load(Label) is None  # the image, then its label image
    colours = labels[0].metadata["color"]
    expected = layout.class_colours(3)
    for value, rgba in enumerate(expected):
        assert np.allclose(colours[value], [v / 255 for v in rgba])
    assert len(labels[0].data) == 3  # the whole pyramid


def test_ingested_store_validates(tmp_path):
    rng = np.random.default_rng(1)
    tifffile.imwrite(tmp_path / "img.tif", rng.integers(0, 4000, (5, 300, 17), dtype=np.uint16))
    tifffile.imwrite(tmp_path / "lab.tif", np.array([0, 128, 255], np.uint8)[rng.integers(0, 3, (5, 300, 17))])
    out = tmp_path / "in.zarr"
    assert main(["ingest", str(tmp_path / "img.tif"), str(out), "--labels", str(tmp_path / "lab.tif"),
                 "--label-map", "0:0,128:1,255:2", "--voxel-size", "30"]) == 0
    validate(out)
    store = open_store(out)
    assert [lv.shape for lv in store.levels] == [(5, 300, 17), (3, 150, 9)]  # 300 > 256: one more level
    assert store.labels is store.label_images["ground_truth"]


def test_synth_store_validates(tmp_path):
    out = tmp_path / "syn.zarr"
    assert main(["synth", str(out), "--shape", "3,270,40", "--preset", "easy"]) == 0
    validate(out)
    assert [lv.shape for lv in open_store(out).levels] == [(3, 270, 40), (2, 135, 20)]


def legacy_store(path, image, labels, kind="test"):
    """A store as the previous layout (format 1) wrote it: root arrays image and labels."""
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.create_array("image", data=image, chunks=(2, 8, 8))
    group.create_array("labels", data=labels, chunks=(2, 8, 8))
    group.attrs.update({"ome": {"version": "0.5", "multiscales": [{"name": "x", "axes": [
        {"name": a, "type": "space"} for a in "zyx"], "datasets": [{"path": "image", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]},
        "xtrain": {"format": 1, "complete": True, "classes": ["pore", "ysz", "ni"], "voxel_size_nm": None,
                   "source": {"kind": kind}, "stats": {"p0_5": 1.0}}})
    return path


def test_previous_layout_is_refused_until_upgraded(tmp_path, capsys):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 9, SHAPE, dtype=np.uint16)
    labels = rng.integers(0, 3, SHAPE, dtype=np.uint8)
    path = legacy_store(tmp_path / "old.zarr", image, labels)
    with pytest.raises(CorruptFileError, match="xtrain upgrade"):
        open_store(path)  # the format-1 reader is gone: one line with the fix
    with pytest.raises(Exception):
        validate(path)  # what the issue reported: 'labels' is an array, not a group

    assert main(["upgrade", str(path)]) == 0
    validate(path)
    new = open_store(path)
    assert len(new.levels) == 1 and new.info.format == 2 and new.info.stats == {"p0_5": 1.0}
    np.testing.assert_array_equal(new.image[:], image)
    np.testing.assert_array_equal(new.labels[:], labels)
    np.testing.assert_array_equal(new.label_images["ground_truth"][:], labels)
    assert upgrade(path) is False  # nothing left to do
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_upgraded_previous_layout_segmentation_keeps_probabilities_and_entropy(tmp_path):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 9, SHAPE, dtype=np.uint16)
    pred = rng.integers(0, 3, SHAPE, dtype=np.uint8)
    prob = rng.random((3, *SHAPE)).astype(np.float16)
    entropy = rng.random(SHAPE).astype(np.float16)
    path = legacy_store(tmp_path / "seg.zarr", image, pred, kind="segmentation")
    group = zarr.open_group(str(path), mode="r+")
    group.create_array("probabilities", data=prob, chunks=(1, 2, 8, 8))
    group.create_array("entropy", data=entropy, chunks=(2, 8, 8))
    assert upgrade(path) is True
    from xtrain.data.store import open_segmentation

    seg = open_segmentation(path)
    assert set(seg.label_images) == {"prediction"}
    np.testing.assert_array_equal(seg.labels[:], pred)
    np.testing.assert_array_equal(seg.probabilities[:], prob)
    np.testing.assert_array_equal(seg.entropy[:], entropy[np.newaxis])  # the OME layout's channel axis
    validate(path)


def test_upgrade_of_something_else_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["upgrade", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plain" in err
    assert main(["upgrade", str(tmp_path / "missing.zarr")]) == 2
    assert not (tmp_path / "missing.zarr").exists()


def test_downsample_keeps_an_exact_power_of_two_scale():
    shapes = layout.pyramid_shapes((250, 501, 501))
    assert shapes == [(250, 501, 501), (125, 251, 251)]
    ms = layout.multiscale("x", shapes, 10.0, "mean")
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [0.02, 0.02, 0.02]
    assert json.dumps(ms)  # plain JSON


def test_previous_layout_segmentation_without_image_is_refused_and_left_alone(tmp_path, capsys):
    from xtrain.data.store import open_segmentation

    labels = np.random.default_rng(3).integers(0, 3, SHAPE, dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "seg.zarr"), mode="w-", zarr_format=3)
    group.create_array("labels", data=labels, chunks=(2, 8, 8))
    group.attrs.update({"xtrain": {"format": 1, "complete": True, "classes": ["pore", "ysz", "ni"],
                                   "source": {"kind": "segmentation"}}})
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(CorruptFileError, match="xtrain upgrade"):
        open_segmentation(tmp_path / "seg.zarr")
    assert main(["upgrade", str(tmp_path / "seg.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "without an image" in err and "xtrain segment" in err
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before  # untouched
