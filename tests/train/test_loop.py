"""The training loop without Ray: learning, checkpoints, exact resume."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import StopAfter, tiny_config
from xtrain.errors import ConfigError, InvalidInputError, UnknownNameError
from xtrain.models.checkpoint import load_checkpoint
from xtrain.train.loop import WorkerContext, fit, preflight



def test_loss_falls_and_dice_rises(train_store, tmp_path):
    cfg = tiny_config(train_store, "train.epochs=4")
    metrics = fit(cfg, tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    assert metrics["val_mean_dice"] > 0.5 > float(rows[0]["val_mean_dice"])
    for c in ("pore", "ysz", "ni"):
        assert f"val_dice_{c}" in rows[0] and f"val_iou_{c}" in rows[0] and f"val_precision_{c}" in rows[0]


def test_checkpoints_hold_what_inference_and_resume_need(train_store, tmp_path):
    fit(tiny_config(train_store, "train.epochs=1"), tmp_path)
    last = load_checkpoint(tmp_path / "last.pt")
    for key in ("model_state", "optimizer_states", "epoch", "step", "config", "stats", "classes", "model_name",
                "model_kwargs"):
        assert key in last, key
    best = load_checkpoint(tmp_path / "model.pt")
    assert "optimizer_states" not in best and best["kind"] == "model"
    assert best["classes"] == ["pore", "ysz", "ni"] and best["stats"]["p99_5"] > best["stats"]["p0_5"]
    # model.pt rebuilds the network with nothing but its own content
    from xtrain.models import create_model

    model = create_model(best["model_name"], **best["model_kwargs"])
    model.load_state_dict(best["model_state"])
    assert model(torch.zeros(1, 1, 37, 41)).shape == (1, 3, 37, 41)



@pytest.mark.parametrize("model", ["unet", "pix2pix"])
def test_interrupted_and_resumed_equals_uninterrupted(train_store, tmp_path, model):
    """Stop mid-epoch (as SIGTERM would), resume from last.pt: bit-identical weights.

    Exact because every step's data and dropout RNG derive from (seed, epoch, index/step).
    """
    extra = ["model.name=pix2pix", "model.kwargs={width: 8, depth: 2, disc_width: 8, disc_layers: 2}"] \
        if model == "pix2pix" else ["model.kwargs={width: 8, depth: 2, dropout: 0.2}"]
    cfg = tiny_config(train_store, "train.epochs=2", *extra)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fit(cfg, tmp_path / "a")
    # 64 samples / batch 16 = 4 steps per epoch; stop after 6 checks = during epoch 2
    stopped = fit(cfg, tmp_path / "b", WorkerContext(should_stop=StopAfter(6)))
    assert stopped["stopped"]
    partial = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (partial["epoch"], partial["epoch_step"]) == (1, 1)
    fit(cfg, tmp_path / "b", resume=partial)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model_state"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with open(tmp_path / "b" / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_preflight_rejects_bad_config(train_store, tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'unet'"):
        preflight(tiny_config(train_store, "model.name=unet2"))
    with pytest.raises(ConfigError, match="widht"):
        preflight(tiny_config(train_store, "model.kwargs={widht: 8}"))
    with pytest.raises(ConfigError, match="train_z"):
        preflight(tiny_config(train_store, "data.train_z=[0, 40]"))
    unlabelled = tmp_path / "nolabels.zarr"
    from xtrain.data.store import write_store
    import numpy as np

    with write_store(unlabelled, (5, 8, 8)) as w:
        w.create("image", (5, 8, 8), np.uint16)[:] = 1  # every chunk written: only the labels are absent
    with pytest.raises(InvalidInputError, match="no labels"):
        preflight(tiny_config(unlabelled))
