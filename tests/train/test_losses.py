"""Losses: CE matches torch, Dice behaves, class weights and ignore_index are honoured."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xtrain.errors import ConfigError, ShapeMismatchError, UnknownNameError
from xtrain.train.losses import CEDiceLoss, CrossEntropyLoss, DiceLoss, create_loss


def _batch(seed=0, shape=(2, 7, 9)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], 3, *shape[1:], generator=g)
    labels = torch.randint(0, 3, shape, generator=g)
    return logits, labels


@pytest.mark.parametrize("name,cls", [("ce", CrossEntropyLoss), ("dice", DiceLoss), ("ce+dice", CEDiceLoss)])
def test_create_loss(name, cls):
    assert isinstance(create_loss(name), cls)


def test_default_and_unknown_name():
    assert isinstance(create_loss(), CEDiceLoss)
    with pytest.raises(UnknownNameError, match="did you mean 'dice'"):
        create_loss("dcie")


def test_ce_equals_torch():
    logits, labels = _batch()
    assert torch.allclose(create_loss("ce")(logits, labels), F.cross_entropy(logits, labels), atol=1e-6)
    w = [0.5, 1.0, 3.0]
    labels[0, 0, :4] = 255
    ours = create_loss("ce", class_weights=w)(logits, labels)
    ref = F.cross_entropy(logits, labels, weight=torch.tensor(w), ignore_index=255)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_ce_all_ignored_is_zero_not_nan():
    logits, labels = _batch()
    loss = create_loss("ce")(logits.requires_grad_(), torch.full_like(labels, 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_dice_of_perfect_prediction_is_about_zero():
    _, labels = _batch()
    logits = 30.0 * F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert create_loss("dice")(logits, labels).item() < 1e-6
    assert create_loss("ce+dice")(logits, labels).item() < 1e-6


def test_dice_of_wrong_prediction_is_high():
    _, labels = _batch()
    logits = 30.0 * F.one_hot((labels + 1) % 3, 3).permute(0, 3, 1, 2).float()
    assert create_loss("dice")(logits, labels).item() > 0.95


def test_dice_by_hand():
    # 1 image, 2 pixels, 2 classes, probabilities exactly (0.75, 0.25) and (0.5, 0.5)
    logits = torch.log(torch.tensor([[0.75, 0.5], [0.25, 0.5]])).reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    loss = DiceLoss(smooth=0.0)(logits, labels)
    d0 = 2 * 0.75 / (1.25 + 1)  # class 0: p = (0.75, 0.5), g = (1, 0)
    d1 = 2 * 0.5 / (0.75 + 1)  # class 1: p = (0.25, 0.5), g = (0, 1)
    assert loss.item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
    weighted = DiceLoss(class_weights=[1.0, 3.0], smooth=0.0)(logits, labels)
    assert weighted.item() == pytest.approx(1 - (d0 + 3 * d1) / 4, abs=1e-6)


@pytest.mark.parametrize("name", ["ce", "dice", "ce+dice"])
def test_class_weights_change_the_loss(name):
    logits, labels = _batch()
    plain = create_loss(name)(logits, labels)
    weighted = create_loss(name, class_weights=[1.0, 1.0, 5.0])(logits, labels)
    assert not torch.allclose(plain, weighted)
    uniform = create_loss(name, class_weights=[2.0, 2.0, 2.0])(logits, labels)
    assert torch.allclose(plain, uniform, atol=1e-6)  # only relative weights matter


@pytest.mark.parametrize("name", ["ce", "dice", "ce+dice"])
def test_ignored_pixels_affect_neither_loss_nor_gradient(name):
    logits, labels = _batch()
    labels[:, :3, :] = 255
    loss_fn = create_loss(name, class_weights=[1.0, 2.0, 0.5])
    a = logits.clone().requires_grad_()
    loss_a = loss_fn(a, labels)
    loss_a.backward()
    b = logits.clone()
    b[:, :, :3, :] = torch.randn(2, 3, 3, 9) * 10  # change the logits of ignored pixels only
    b.requires_grad_()
    loss_b = loss_fn(b, labels)
    loss_b.backward()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert torch.all(a.grad[:, :, :3, :] == 0)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_bad_inputs():
    logits, labels = _batch()
    with pytest.raises(ShapeMismatchError):
        create_loss("ce")(logits, labels[:, :-1])
    with pytest.raises(ConfigError, match="2 entries.*3 classes"):
        create_loss("dice", class_weights=[1.0, 2.0])(logits, labels)
    with pytest.raises(ConfigError):
        create_loss("ce", class_weights=[1.0, -1.0, 1.0])


def test_uint8_labels_and_module_moves_weights():
    logits, labels = _batch()
    loss_fn = create_loss("ce+dice", class_weights=[1.0, 2.0, 3.0])
    assert [n for n, _ in loss_fn.named_buffers()] == ["ce.weight", "dice.weight"]
    assert torch.allclose(loss_fn(logits, labels.to(torch.uint8)), loss_fn(logits, labels))
