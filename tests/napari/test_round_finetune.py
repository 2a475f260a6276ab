"""The one-process fine-tune of a labelling round (xtrain/napari/finetune.py): it learns the painted planes,
draws patches only where labels are, stops on request without writing, and refuses what it cannot use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import StopAfter, make_store
from xtrain.data.labels import IGNORE, census
from xtrain.data.normalise import normalised_volume
from xtrain.data.painted import save_painted
from xtrain.data.store import open_segmentation, open_store, write_store
from xtrain.data.volumes import open_volume
from xtrain.errors import InvalidInputError, RunInterrupted
from xtrain.geometry import reflect
from xtrain.models.checkpoint import file_checksum, load_checkpoint
from xtrain.napari.finetune import draw_batch, finetune, training_planes
from xtrain.napari.loop import segment_volume

SHAPE = (11, 45, 39)
CLASSES = ["pore", "ysz", "ni"]


@pytest.fixture
def painted(tmp_path):
    """A scan and a labels store: z-plane 2 painted with the classes turned round (c -> c + 1 mod 3), wrong
    for the model everywhere, and a short y-plane scribble."""
    scan = make_store(tmp_path / "scan.zarr", SHAPE, seed=5)
    truth = open_store(scan).labels[:]
    values = np.zeros(SHAPE, np.uint8)
    values[2] = (truth[2] + 1) % 3 + 1
    values[6:9, 30, 4:9] = 1
    save_painted(tmp_path / "labels.zarr", values, classes=CLASSES, image=open_volume(scan))
    return scan, tmp_path / "labels.zarr", np.where(values > 0, values - 1, IGNORE)


def test_the_finetuned_model_predicts_what_was_painted(painted, tiny_model, tmp_path, one_thread):
    scan, labels, ids = painted
    before = open_segmentation(segment_volume(tiny_model, scan, tmp_path / "before.zarr")).labels[:]
    steps = []
    new = finetune(labels, tiny_model, tmp_path / "round", progress=lambda i, n: steps.append((i, n)), steps=40)
    after = open_segmentation(segment_volume(new, scan, tmp_path / "after.zarr")).labels[:]
    old_hit, new_hit = (before[2] == ids[2]).mean(), (after[2] == ids[2]).mean()
    assert new_hit > old_hit + 0.25, (old_hit, new_hit)  # measured: 0.32 -> 0.83
    assert steps == [(i, 40) for i in range(1, 41)]
    ckpt, old = load_checkpoint(new), load_checkpoint(tiny_model)
    record = ckpt["finetune"]
    assert record["from_sha256"] == file_checksum(tiny_model) and record["steps"] == 40
    # its own provenance record (made here, from the painted store and the parent), the parent's kept as previous
    made = ckpt["provenance"]
    assert made["models"]["parent"]["sha256"] == hashlib.sha256(Path(tiny_model).read_bytes()).hexdigest()
    assert made["inputs"]["labels"]["sha256"] and made["previous"] == old.get("provenance")
    assert record["planes"] == {"z": [2, 6, 7, 8]}  # the tiny model trains on z-planes: the scribble's too
    assert ckpt["classes"] == old["classes"] and ckpt["stats"] == old["stats"] and ckpt["config"] == old["config"]
    assert any(not torch.equal(ckpt["model_state"][k], v) for k, v in old["model_state"].items())


def test_patches_come_from_labelled_planes_with_the_models_normalisation(painted, tiny_model):
    scan, labels, ids = painted
    store, stats = open_store(labels), load_checkpoint(tiny_model)["stats"]
    vol = normalised_volume(open_volume(labels), train_stats=stats)
    planes = training_planes(store, vol, ("z", "y"), slices=3)
    # every y-plane crosses the painted z-plane 2 (one labelled row); y 30 holds the scribble too
    assert [(p.axis, p.index) for p in planes] == [("z", 2), ("z", 6), ("z", 7), ("z", 8)] + \
        [("y", i) for i in range(SHAPE[1])]
    whole = np.asarray(vol.read(((0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[2]))))
    z2 = planes[0]
    assert np.array_equal(z2.image, whole[reflect(np.arange(1, 4), 0, SHAPE[0])])
    assert np.array_equal(z2.labels, ids[2]) and len(z2.labelled) == SHAPE[1] * SHAPE[2]
    y30 = planes[4 + 30]
    assert np.array_equal(y30.image, np.moveaxis(whole[:, 29:32], 1, 0)) and len(y30.labelled) == SHAPE[2] + 15
    edge = training_planes(store, vol, ("z",), slices=5)[0]  # z 2 with 2 neighbours each side: 0..4
    assert np.array_equal(edge.image, whole[0:5])
    image, target = draw_batch(planes, np.random.default_rng(0), 64, 32, True, True)
    assert image.shape == (64, 3, 32, 32) and target.shape == (64, 32, 32) and image.dtype == torch.float32
    assert all((t != IGNORE).any() for t in target)  # every patch holds its anchor pixel


def test_a_stop_writes_nothing_and_bad_stores_are_refused(painted, tiny_model, tmp_path):
    scan, labels, _ = painted
    with pytest.raises(RunInterrupted, match="stopped at step 3 of 50; nothing was written"):
        finetune(labels, tiny_model, tmp_path / "stopped", should_stop=StopAfter(3), steps=50)
    assert not (tmp_path / "stopped" / "model.pt").exists()
    with pytest.raises(InvalidInputError, match="has classes .* predicts"):
        other = make_store(tmp_path / "two.zarr", (5, 20, 20), classes=("a", "b"))
        finetune(other, tiny_model, tmp_path / "r2")
    empty = tmp_path / "empty.zarr"  # the scan with no label at all (every voxel IGNORE)
    with write_store(empty, SHAPE) as w:
        w.create("image", SHAPE, np.uint16)[:] = open_store(scan).image[:]
        w.create("labels", SHAPE, np.uint8)[:] = IGNORE
        w.info.classes, w.info.stats = CLASSES, open_store(scan).info.stats
        w.info.labels = census(np.full(SHAPE, IGNORE, np.uint8)).to_dict()
    with pytest.raises(InvalidInputError, match="holds no labelled voxel on a plane normal to z: paint some"):
        finetune(empty, tiny_model, tmp_path / "r3")
