"""Pix2Pix: generator logits, PatchGAN shapes, and the two GAN loss pieces."""

from __future__ import annotations

import pytest
import torch

from xtrain.errors import ConfigError
from xtrain.train.losses import one_hot
from xtrain.models import Pix2Pix, create_model, discriminator_loss, generator_adversarial_loss

# one intra-op thread: see conftest.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(width=4, depth=2, disc_width=8, disc_layers=2)


def test_forward_is_generator_logits():
    torch.manual_seed(0)
    model = create_model("pix2pix", in_channels=3, **SMALL).eval()
    assert isinstance(model, Pix2Pix)
    x = torch.randn(2, 3, 37, 29)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 3, 37, 29)
        assert torch.equal(out, model.generator(x))


@pytest.mark.parametrize("layers,shape", [(2, (37, 53)), (3, (64, 41))])
def test_discriminator_output_shape(layers, shape):
    model = create_model("pix2pix", width=4, depth=2, disc_width=8, disc_layers=layers)
    x = torch.randn(2, 1, *shape)
    out = model.discriminator(x, torch.rand(2, 3, *shape))
    expected = tuple(s // 2**layers - 2 for s in shape)
    assert out.shape == (2, 1, *expected)
    assert model.discriminator.output_shape(*shape) == expected


def test_discriminator_rejects_too_small_patches():
    model = create_model("pix2pix", **SMALL)  # disc_layers=2 needs >= 12 pixels
    with pytest.raises(ConfigError, match="at least 12x12"):
        model.discriminator(torch.randn(1, 1, 11, 20), torch.rand(1, 3, 11, 20))


def test_discriminator_learns_on_fixed_fakes():
    torch.manual_seed(0)
    model = create_model("pix2pix", **SMALL)
    labels = torch.randint(0, 3, (2, 24, 24))
    x = labels.float().unsqueeze(1) + 0.1 * torch.randn(2, 1, 24, 24)
    real, _ = one_hot(labels, 3)
    with torch.no_grad():
        fake = model(x).softmax(1)
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = discriminator_loss(model.discriminator, x, real, fake)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_discriminator_loss_does_not_reach_generator():
    model = create_model("pix2pix", **SMALL)
    x = torch.randn(2, 1, 24, 24)
    real, _ = one_hot(torch.randint(0, 3, (2, 24, 24)), 3)
    discriminator_loss(model.discriminator, x, real, model(x).softmax(1)).backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator.parameters())


def test_generator_adversarial_loss_has_gradient_into_generator():
    model = create_model("pix2pix", **SMALL)
    x = torch.randn(2, 1, 24, 24)
    adv = generator_adversarial_loss(model.discriminator, x, model(x).softmax(1))
    assert adv.dim() == 0 and adv.item() > 0
    adv.backward()
    grads = [p.grad for p in model.generator.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_one_hot_hides_ignored_pixels():
    labels = torch.tensor([[[0, 2], [255, 1]]])
    onehot, valid = one_hot(labels, 3)
    assert onehot.shape == (1, 3, 2, 2) and valid.shape == (1, 1, 2, 2)
    assert onehot[0, :, 1, 0].sum() == 0 and valid[0, 0, 1, 0] == 0
    assert onehot[0, 2, 0, 1] == 1
