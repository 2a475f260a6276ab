"""The napari reader (xtrain/napari/reader.py): the layers of a store and a segmentation, and the manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from conftest import make_store  # noqa: E402
from xtrain.data.labels import IGNORE  # noqa: E402
from xtrain.data.layout import class_colours  # noqa: E402
from xtrain.data.store import open_store, write_store  # noqa: E402
from xtrain.napari.reader import get_reader, read_store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    """A (9, 300, 270) store (two pyramid levels) whose ground truth is sparse, at 20 nm voxels."""
    src = make_store(tmp_path / "src.zarr", (9, 300, 270))
    old = open_store(src)
    labels = old.labels[:]
    labels[::2] = IGNORE
    with write_store(tmp_path / "scan.zarr", old.shape) as w:
        w.create("image", old.shape, old.image.dtype)[:] = old.image[:]
        w.create("labels", old.shape, np.uint8)[:] = labels
        w.info.classes, w.info.stats, w.info.voxel_size_nm = old.info.classes, old.info.stats, 20.0
    return tmp_path / "scan.zarr"


def test_a_store_opens_as_image_and_labels_with_scale_contrast_colours_and_names(store, tmp_path):
    assert get_reader(str(store)) is read_store
    assert get_reader(str(tmp_path)) is None and get_reader([str(store), str(store)]) is None
    (image, ikw, ikind), (labels, lkw, lkind) = read_store(store)
    s = open_store(store)
    assert ikind == "image" and lkind == "labels" and lkw["name"] == "ground_truth" and ikw["name"] == "scan"
    assert ikw["multiscale"] and len(image) == len(s.levels) == 2
    assert np.array_equal(np.asarray(image[1]), s.levels[1][:])
    assert ikw["contrast_limits"] == [s.info.stats["p0_5"], s.info.stats["p99_5"]]
    assert ikw["scale"] == lkw["scale"] == [0.02, 0.02, 0.02] and ikw["units"] == "micrometer"
    # labels: class id + 1, IGNORE -> 0 (napari's unlabelled), on every level
    truth = s.labels[:]
    values = np.asarray(labels[0])
    assert np.array_equal(values, np.where(truth == IGNORE, 0, truth + 1)) and (values[::2] == 0).all()
    assert lkw["multiscale"] and labels[1].shape == s.pyramids["labels/ground_truth"][1].shape
    assert lkw["features"] == {"index": [0, 1, 2, 3], "class": ["unlabelled", "pore", "ysz", "ni"]}
    assert lkw["colormap"][0] == "transparent"
    assert [lkw["colormap"][i + 1] for i in range(3)] == [[c / 255 for c in rgba] for rgba in class_colours(3)]
    assert ikw["metadata"]["xtrain"] == {"store": str(store.resolve()), "role": "image",
                                         "classes": ["pore", "ysz", "ni"]}


def test_a_segmentation_adds_prediction_probabilities_and_entropy(tiny_model, tmp_path):
    from xtrain.infer import open_segmentation, segment

    seg = segment(tiny_model, make_store(tmp_path / "v.zarr", (7, 33, 29)), tmp_path / "seg.zarr",
                  probabilities=True)
    layers = {kw["name"]: (data, kw, kind) for data, kw, kind in read_store(seg)}
    assert list(layers) == ["seg", "prediction", "p(pore)", "p(ysz)", "p(ni)", "entropy"]
    g = open_segmentation(seg)
    assert np.array_equal(np.asarray(layers["prediction"][0]), g.labels[:] + 1)
    assert np.array_equal(np.asarray(layers["p(ysz)"][0]), g.probabilities[1].astype(np.float32))
    data, kw, kind = layers["entropy"]
    assert kind == "image" and data.dtype == np.float32 and not kw["visible"]
    assert np.array_equal(np.asarray(data), g.entropy[0].astype(np.float32))
    assert kw["contrast_limits"] == [0.0, pytest.approx(np.log(3))]


def test_the_manifest_is_valid_and_is_what_the_entry_point_names():
    import tomllib

    from npe2 import PluginManifest

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["napari.manifest"]["xtrain"] == "xtrain.napari:napari.yaml"
    assert "napari.yaml" in project["tool"]["setuptools"]["package-data"]["xtrain.napari"]
    manifest = PluginManifest.from_file(REPO / "xtrain" / "napari" / "napari.yaml")
    manifest.validate_imports()  # every python_name imports
    assert manifest.name == "xtrain" and manifest.contributions.readers[0].accepts_directories
    assert {w.display_name for w in manifest.contributions.widgets} == {"Label loop"}
    assert "xtrain.napari.widget" in sys.modules  # validate_imports loaded the widget module
