"""Self-training from the EMA teacher: the pseudo-labels, the step's loss, a run with it on, the refusals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import StopAfter, make_store, planes, tiny_config
from xtrain.data.labels import IGNORE
from xtrain.errors import ConfigError
from xtrain.models.checkpoint import load_checkpoint
from xtrain.train.loop import WorkerContext, fit
from xtrain.train.self_training import SelfTraining, pseudo_labels, pseudo_loss


def _batch(seed=0, shape=(3, 4, 13, 11)):
    """Teacher logits (B, K, Y, X) spread wide enough that some pixels pass a 0.9 threshold, labels with IGNORE."""
    gen = torch.Generator().manual_seed(seed)
    b, k, y, x = shape
    logits = 3.0 * torch.randn(shape, generator=gen)
    label = torch.randint(0, k, (b, y, x), generator=gen)
    label[torch.rand((b, y, x), generator=gen) < 0.6] = IGNORE
    return logits, label


def test_pseudo_labels_keep_every_label_and_ignore_the_unsure():
    logits, label = _batch()
    p = np.exp(logits.numpy().astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)  # softmax over classes, in numpy
    for threshold in (0.0, 0.6, 0.9, 1.0):
        got = pseudo_labels(logits, label, threshold).numpy()
        assert got.dtype == np.int64 and got.shape == label.shape
        known = label.numpy() != IGNORE
        assert (got[known] == IGNORE).all()  # a labelled pixel is never overridden (nor re-labelled)
        sure = ~known & (p.max(axis=1) >= threshold)
        assert np.array_equal(got[sure], p.argmax(axis=1)[sure])
        assert (got[~sure] == IGNORE).all()
    assert (pseudo_labels(logits, label, 0.9).numpy() != IGNORE).sum() > 10  # the threshold let some through


def test_the_pseudo_loss_is_the_cross_entropy_over_accepted_pixels():
    logits, label = _batch(1)
    student = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    loss, metrics = pseudo_loss(student, logits, label, 0.8)
    pseudo = pseudo_labels(logits, label, 0.8)
    accepted = pseudo != IGNORE
    logp = torch.log_softmax(student.double(), dim=1).permute(0, 2, 3, 1)[accepted]  # (N, K)
    expected = -logp.gather(1, pseudo[accepted][:, None]).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert metrics["pseudo_accept"] == pytest.approx(int(accepted.sum()) / int((label == IGNORE).sum()))
    none, m = pseudo_loss(student, logits, torch.zeros_like(label), 0.8)  # nothing unlabelled: nothing accepted
    assert float(none) == 0.0 and m["pseudo_accept"] == 0.0


def _step(pseudo_weight: float | None):
    """One train_step of a freshly seeded U-Net on a half-unlabelled batch, with an (untrained) teacher when
    ``pseudo_weight`` is not None: the losses and every parameter's gradient."""
    from xtrain.config import config_from_dict
    from xtrain.models import create_model
    from xtrain.train.loop import Nets, build_optimizers, train_step
    from xtrain.train.losses import create_loss

    gen = torch.Generator().manual_seed(3)
    image = torch.randn(2, 1, 24, 24, generator=gen)
    label = torch.randint(0, 3, (2, 24, 24), generator=gen)
    label[:, :, 7:] = IGNORE
    torch.manual_seed(5)
    teacher = create_model("unet", in_channels=1, num_classes=3, width=8, depth=2).eval()
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, width=8, depth=2)
    pseudo = None if pseudo_weight is None else SelfTraining(teacher, pseudo_weight, 0.0, 0)
    losses = train_step(Nets(model, model, None), build_optimizers(model, config_from_dict({})),
                        create_loss("ce+dice"), image, label, adversarial_weight=0.0, amp=False, pseudo=pseudo)
    return losses, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_step_with_weight_0_is_the_plain_step_and_with_weight_1_is_not():
    plain, plain_grads = _step(None)
    assert plain.keys() == {"loss"}
    off, off_grads = _step(0.0)
    on, on_grads = _step(1.0)
    assert off["loss"] == plain["loss"] == on["loss"]  # "loss" is the supervised term, on or off
    assert on["pseudo_accept"] == 1.0 and on["pseudo_loss"] > 0  # threshold 0: every unlabelled pixel
    assert all(torch.equal(off_grads[n], plain_grads[n]) for n in plain_grads)
    assert not all(torch.allclose(on_grads[n], plain_grads[n]) for n in plain_grads)  # the term does reach them


SHAPE = (33, 50, 47)


@pytest.fixture(scope="module")
def one_plane(tmp_path_factory):
    """A sparse store: one painted z-plane (no validation hold-out: the fixed schedule)."""
    return make_store(tmp_path_factory.mktemp("one_plane") / "s.zarr", shape=SHAPE, labelled=planes(SHAPE, at=(12,)))


# lr 0.03: the tiny U-Net's teacher gets past a 0.5 max probability at some pixels within 8 steps
ON = ("train.epochs=2", "optim.lr=0.03", "train.ema_decay=0.9", "train.pseudo_weight=1.0",
      "train.pseudo_threshold=0.5", "train.pseudo_start=0.5", "data.unlabelled_fraction=0.5")


def test_a_run_with_self_training_accepts_pixels_after_the_start_and_resumes_exactly(one_plane, tmp_path):
    """64 samples / batch 16 = 4 steps an epoch, 8 in all; pseudo_start 0.5: pseudo-labels from step 4 (epoch 2)."""
    cfg = tiny_config(one_plane, *ON)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    fit(cfg, tmp_path / "a")
    with open(tmp_path / "a" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["train_pseudo_accept"]) == 0.0 == float(rows[0]["train_pseudo_loss"])  # before the start
    assert 0.0 < float(rows[1]["train_pseudo_accept"]) <= 1.0 and float(rows[1]["train_pseudo_loss"]) > 0
    stopped = fit(cfg, tmp_path / "b", WorkerContext(should_stop=StopAfter(6)))  # epoch 2, after step 1
    partial = load_checkpoint(tmp_path / "b" / "last.pt")
    assert stopped["stopped"] and (partial["epoch"], partial["epoch_step"]) == (1, 1)
    fit(cfg, tmp_path / "b", resume=partial)
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in "ab")
    for key in ("model_state", "ema_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_a_run_without_self_training_has_no_pseudo_columns(one_plane, tmp_path):
    fit(tiny_config(one_plane, "train.epochs=1", "train.ema_decay=0.9"), tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        assert not any("pseudo" in k for k in next(csv.DictReader(f)))


@pytest.mark.parametrize("overrides, words", [
    (("train.pseudo_weight=1.0",), r"train.pseudo_weight=1.0 needs train.ema_decay > 0: the EMA weights are the "
                                   r"teacher"),
    (("train.pseudo_weight=1.0", "train.ema_decay=0.9", "model.name=pix2pix"),
     "is for segmenters .unet, mlp., not model.name=pix2pix"),
    (("train.pseudo_threshold=1.5",), r"'train.pseudo_threshold'=1.5 must be in \[0.0, 1.0\]"),
    (("train.pseudo_start=1.0",), r"'train.pseudo_start'=1.0 must be in \[0.0, 1.0\)"),
    (("train.pseudo_weight=-1",), r"'train.pseudo_weight'=-1.0 must be in \[0.0, inf\)"),
    (("data.unlabelled_fraction=1.0",), r"'data.unlabelled_fraction'=1.0 must be in \[0.0, 1.0\)"),
])
def test_bad_self_training_settings_are_refused(one_plane, overrides, words):
    with pytest.raises(ConfigError, match=words):
        tiny_config(one_plane, *overrides)


def test_the_cli_refuses_self_training_without_ema_in_one_line(one_plane, tmp_path, capsys):
    from xtrain.cli import main

    code = main(["train", "--config", "configs/tiny.yaml", "--data", str(one_plane), "--out", str(tmp_path / "r"),
                 "--set", "train.pseudo_weight=1.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs train.ema_decay > 0" in err[0], err
