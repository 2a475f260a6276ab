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
    # no RNG states: every step reseeds from (seed, epoch, rank, step), so they were never restored (and numpy's
    # would stop last.pt loading with torch.load(weights_only=True))
    assert "rng" not in last
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
    steps: list[tuple[int, set[str]]] = []
    on_step = lambda n, losses: steps.append((n, set(losses)))  # noqa: E731
    stopped = fit(cfg, tmp_path / "b", WorkerContext(should_stop=StopAfter(6), on_step=on_step))
    assert stopped["stopped"]
    partial = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (partial["epoch"], partial["epoch_step"]) == (1, 1)
    fit(cfg, tmp_path / "b", WorkerContext(on_step=on_step), resume=partial)
    # on_step after every step, counting the run's steps across the stop and resume, with the step's losses
    assert [n for n, _ in steps] == list(range(1, 9))
    assert all(keys == ({"loss", "g_adv", "d_loss"} if model == "pix2pix" else {"loss"}) for _, keys in steps)
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


# --------------------------------------------------------------------------- sparse labels


class _Shifted(torch.nn.Module):
    """``net`` with a fixed ``delta`` (B, K, P, P) added to its logits: no parameter, no change to any gradient
    path; what changes is only the prediction where ``delta`` is non-zero."""

    def __init__(self, net: torch.nn.Module, delta: torch.Tensor):
        super().__init__()
        self.net, self.delta = net, delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.delta


SPARSE_MODELS = {"unet": {"width": 8, "depth": 2}, "mlp": {"patch": 32, "hidden": 16},
                 "pix2pix": {"width": 8, "depth": 2, "disc_width": 8, "disc_layers": 2}}


def _one_step(model_name: str, image: torch.Tensor, label: torch.Tensor, delta: torch.Tensor, class_weights=None):
    """One ``train_step`` of a freshly seeded network whose logits get ``delta``: its losses and every
    parameter's gradient."""
    from xtrain.config import config_from_dict
    from xtrain.models import create_model
    from xtrain.train.loop import Nets, build_optimizers, train_step
    from xtrain.train.losses import create_loss

    torch.manual_seed(0)
    model = create_model(model_name, in_channels=1, num_classes=3, **SPARSE_MODELS[model_name])
    gan = model_name == "pix2pix"
    nets = Nets(model, _Shifted(model.generator if gan else model, delta), model.discriminator if gan else None)
    optimizers = build_optimizers(model, config_from_dict({"model": {"name": model_name}}))
    losses = train_step(nets, optimizers, create_loss("ce+dice", class_weights=class_weights), image, label,
                        adversarial_weight=1.0, amp=False)
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_name, class_weights", [("unet", None), ("unet", [1.0, 0.5, 3.0]), ("pix2pix", None),
                                                       ("mlp", None)])
def test_unlabelled_pixels_change_no_loss_and_no_gradient(model_name, class_weights):
    """Flip the prediction at every unlabelled (IGNORE) pixel of a batch to another class (a logit of +30): no
    loss term (cross-entropy, soft Dice, class weights; both Pix2Pix networks' adversarial terms: the
    discriminator sees neither truth nor prediction there) and no gradient may change.  The same flip at
    labelled pixels changes both (the test can fail)."""
    from xtrain.data.labels import IGNORE

    gen = torch.Generator().manual_seed(1)
    image = torch.randn(4, 1, 32, 32, generator=gen)
    label = torch.randint(0, 3, (4, 32, 32), generator=gen)
    label[:, :, 5:27] = IGNORE  # most of each patch unlabelled, as around a scribble
    label[1] = IGNORE  # and one patch without a label
    base_losses, base_grads = _one_step(model_name, image, label, torch.zeros(4, 3, 32, 32), class_weights)
    if model_name == "pix2pix":
        assert {n.split(".")[0] for n in base_grads} == {"generator", "discriminator"}
    for cls in range(3):
        flip = torch.zeros(4, 3, 32, 32)
        flip[:, cls] = 30.0 * (label == IGNORE)
        losses, grads = _one_step(model_name, image, label, flip, class_weights)
        assert losses.keys() == base_losses.keys()
        for key in losses:
            assert losses[key] == pytest.approx(base_losses[key], rel=1e-6, abs=1e-7), (cls, key)
        for name in base_grads:
            assert torch.allclose(grads[name], base_grads[name], rtol=1e-5, atol=1e-7), (cls, name)
    wrong = torch.zeros(4, 3, 32, 32)
    wrong[:, 0] = 30.0 * (label != IGNORE)  # the same flip where labels are: it must show
    losses, grads = _one_step(model_name, image, label, wrong, class_weights)
    assert losses["loss"] != pytest.approx(base_losses["loss"], rel=1e-3)


def test_the_discriminator_sees_no_unlabelled_pixel():
    from xtrain.data.labels import IGNORE
    from xtrain.train.loop import discriminator_masks

    label = torch.tensor([[[0, 1, IGNORE], [2, IGNORE, 1]]])
    real, fake = discriminator_masks(torch.randn(1, 3, 2, 3), label)
    unlabelled = (label == IGNORE).unsqueeze(1).expand_as(real)
    assert (real[unlabelled] == 0).all() and (fake[unlabelled] == 0).all()
    assert torch.equal(real.argmax(1)[label != IGNORE], label[label != IGNORE])
    assert torch.allclose(fake.sum(1)[label != IGNORE], torch.ones(4))


def test_few_labelled_planes_train_a_fixed_schedule_and_say_so(tmp_path, caplog):
    """1 painted z-plane: no hold-out (the rule needs 6), no validation row, model.pt is the last epoch's EMA."""
    from conftest import make_store, planes

    shape = (33, 50, 47)
    store = make_store(tmp_path / "sparse.zarr", shape=shape, labelled=planes(shape, "z", at=(12,)))
    cfg = tiny_config(store, "train.epochs=2", "train.ema_decay=0.9")
    (tmp_path / "run").mkdir()
    with caplog.at_level("INFO", logger="xtrain"):
        metrics = fit(cfg, tmp_path / "run")
    assert ("1 labelled plane: no validation hold-out (it needs 6 whole labelled planes); training runs its fixed "
            "schedule and model.pt is the last epoch's EMA weights") in caplog.text
    assert "(no validation)" in caplog.text
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and not any(k.startswith("val_") for k in rows[0])
    best, last = load_checkpoint(tmp_path / "run" / "model.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert best["epoch"] == 2 and metrics["epoch"] == 2
    for k, v in best["model_state"].items():  # the EMA weights of the last epoch, not the raw ones
        assert torch.equal(v, last["ema_state"][f"module.{k}"]), k


def test_six_labelled_planes_validate_on_a_held_out_one(tmp_path, caplog):
    from conftest import make_store, planes

    shape = (33, 50, 47)
    store = make_store(tmp_path / "sparse.zarr", shape=shape, labelled=planes(shape, "z", at=(2, 7, 12, 17, 22, 27)))
    (tmp_path / "run").mkdir()
    with caplog.at_level("INFO", logger="xtrain"):
        metrics = fit(tiny_config(store, "train.epochs=1"), tmp_path / "run")
    # tiny.yaml: val_fraction 0.25 of 6 planes -> 2, evenly spread
    assert "6 labelled planes: validating on 2 held out whole (z 7, z 22), training on the other 4" in caplog.text
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0 and "val_tpb_ratio" not in metrics


def test_a_validation_slab_of_a_sparse_store_must_be_labelled_whole(tmp_path):
    from conftest import make_store, planes

    shape = (33, 50, 47)
    mask = planes(shape, "z", at=(3, 9))
    mask[26:] = True
    store = make_store(tmp_path / "sparse.zarr", shape=shape, labelled=mask)
    preflight(tiny_config(store, "data.train_z=[0, 22]", "data.val_z=[26, 33]"))  # dense slab: as today
    with pytest.raises(InvalidInputError, match=r"data.val_z=\[24, 33\] holds unlabelled voxels \(z 24 first\)"):
        preflight(tiny_config(store, "data.train_z=[0, 20]", "data.val_z=[24, 33]"))
    with pytest.raises(InvalidInputError, match="no labelled voxel in the training region"):
        preflight(tiny_config(store, "data.train_z=[10, 20]", "data.val_z=[26, 33]"))
