"""The label census: labelled voxels per plane and axis, equal to a loop over the voxels."""

from __future__ import annotations

import numpy as np

from xtrain.data.labels import IGNORE, LabelCensus, census


def test_census_counts_equal_a_voxel_loop_and_round_trip():
    rng = np.random.default_rng(0)
    labels = np.full((13, 17, 19), IGNORE, np.uint8)
    labels[4] = rng.integers(0, 3, (17, 19))        # a painted z-plane
    labels[:, 5, :] = rng.integers(0, 3, (13, 19))  # a painted y-plane
    labels[9, 2:4, 3:6] = 1                         # a scribble
    c = census(labels)
    known = labels != IGNORE
    assert c.per_plane["z"] == known.sum(axis=(1, 2)).tolist()
    assert c.per_plane["y"] == known.sum(axis=(0, 2)).tolist()
    assert c.per_plane["x"] == known.sum(axis=(0, 1)).tolist()
    assert c.labelled == int(known.sum()) and not c.dense
    assert c.painted("z") == [4] and c.painted("y") == [5] and c.painted("x") == []
    assert LabelCensus.from_dict(c.to_dict()) == c


def test_summary_names_painted_planes_scribbles_and_dense_labels():
    labels = np.full((250, 20, 30), IGNORE, np.uint8)
    labels[[20, 60, 100, 140, 180]] = 1
    assert census(labels).summary() == "labels on 5 of 250 z-planes, 2 % of voxels; no labels on y/x planes"
    scribbles = np.full((50, 40, 40), IGNORE, np.uint8)
    scribbles[[10, 30], 5:10, 5:25] = 2
    assert census(scribbles).summary().startswith("partial labels (scribbles) on 2 of 50 z-planes")
    assert census(np.zeros((3, 4, 5), np.uint8)).dense


def test_census_per_class_counts_labelled_voxels_of_each_class_and_round_trips():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (7, 9, 11)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.6] = IGNORE
    labels[labels == 2] = IGNORE  # class 2 never labelled
    c = census(labels, num_classes=3)
    assert c.per_class == [int((labels == k).sum()) for k in range(3)] and c.per_class[2] == 0
    assert sum(c.per_class) == c.labelled
    assert LabelCensus.from_dict(c.to_dict()) == c and census(labels).per_class is None
    assert "per_class" not in census(labels).to_dict()  # without num_classes: the interface as it was
