"""Pix2Pix (Isola et al. 2017) as a segmenter: a U-Net generator judged by a PatchGAN.

    model = create_model("pix2pix")
    logits = model(x)                    # (B, C, Y, X) -> (B, K, Y, X): the generator
    model.generator, model.discriminator

The generator is the plain ``UNet`` of unet.py: it outputs class logits, so inference
treats a Pix2Pix exactly like any other segmenter.  The discriminator sees an image
together with a segmentation (one-hot truth, or the generator's softmax probabilities)
and says, for each overlapping ~70x70 patch, whether the pair looks real.

One training step (the training loop does this; fake probabilities are computed once):

    logits = model(x)                                        # (B, K, Y, X)
    fake = logits.softmax(1)
    real, valid = one_hot(labels, K)                         # from xtrain.train.losses
    fake = fake * valid                                      # hide unlabelled pixels from D
    d_opt.zero_grad(); discriminator_loss(model.discriminator, x, real, fake).backward(); d_opt.step()
    g_opt.zero_grad()
    g_loss = seg_loss(logits, labels) + lam * generator_adversarial_loss(model.discriminator, x, fake)
    g_loss.backward(); g_opt.step()      # also leaves grads in D: zeroed by the next D step

Under DDP wrap ``model.generator`` and ``model.discriminator`` in *separate*
DistributedDataParallel modules (the discriminator is called outside ``model.forward``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnknownNameError
from .registry import register_model
from .unet import NORMS, UNet, make_norm


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)  # leaky: D must pass gradient back to G everywhere


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, C + K, Y, X) -> real/fake logits (B, 1, Y', X').

    ``layers`` stride-2 4x4 convs (channels width, 2*width, ... capped at 8*width), then
    a stride-1 conv and a 1-channel stride-1 conv, as in pix2pix's NLayerDiscriminator;
    layers=3 sees 70x70 pixels per output logit.  Y' = Y // 2**layers - 2.
    """

    def __init__(self, in_channels: int, width: int = 64, layers: int = 3, norm: str = "group"):
        super().__init__()
        if layers < 1 or width < 1:
            raise ConfigError(f"pix2pix disc_layers and disc_width must be >= 1, got {layers} and {width}")
        self.layers = layers
        chans = [width * min(2**i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 4, stride=2, padding=1), _act()]  # no norm on the input layer
        for i in range(1, layers):
            blocks += [nn.Conv2d(chans[i - 1], chans[i], 4, stride=2, padding=1, bias=False), make_norm(norm, chans[i]), _act()]
        blocks += [nn.Conv2d(chans[layers - 1], chans[layers], 4, stride=1, padding=1, bias=False), make_norm(norm, chans[layers]), _act()]
        blocks += [nn.Conv2d(chans[layers], 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*blocks)

    def output_shape(self, ny: int, nx: int) -> tuple[int, int]:
        """(Y', X') of the logit map for an (Y, X) input."""
        return ny // 2**self.layers - 2, nx // 2**self.layers - 2

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B, C, Y, X), mask (B, K, Y, X) one-hot or probabilities -> (B, 1, Y', X')."""
        oy, ox = self.output_shape(*image.shape[-2:])
        if oy < 1 or ox < 1:
            need = 3 * 2**self.layers
            raise ConfigError(
                f"pix2pix discriminator with disc_layers={self.layers} needs patches of at least {need}x{need}, "
                f"got {image.shape[-2]}x{image.shape[-1]}; use a larger data.patch or fewer disc_layers"
            )
        return self.net(torch.cat([image, mask.to(image.dtype)], dim=1))


@register_model("pix2pix")
class Pix2Pix(nn.Module):
    """U-Net generator (class logits) + PatchGAN discriminator; ``forward`` is the generator.

    Args:
        in_channels, num_classes, width, depth, norm, dropout: of the generator (see UNet).
        disc_width: channels of the first discriminator layer (doubling, capped at 8x).
        disc_layers: stride-2 layers of the discriminator (3: 70x70 receptive field).
        disc_norm: normalisation of the discriminator.  "group" by default: unlike batch
            norm it does not depend on how real and fake pairs are batched (so D(fake) is
            the same in the D and the G step), and unlike instance norm it stays
            meaningful on the 2x2 maps at the end of the stack for small patches.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        width: int = 32,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
        disc_width: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "group",
    ):
        super().__init__()
        if disc_norm not in NORMS:
            raise UnknownNameError("norm", disc_norm, NORMS)
        self.generator = UNet(in_channels, num_classes, width, depth, norm, dropout)
        self.discriminator = PatchDiscriminator(in_channels + num_classes, disc_width, disc_layers, disc_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)  # (B, C, Y, X) -> logits (B, num_classes, Y, X)


def discriminator_loss(
    disc: nn.Module, image: torch.Tensor, real_mask_onehot: torch.Tensor, fake_probs: torch.Tensor
) -> torch.Tensor:
    """BCE-with-logits of D: (image, truth) pairs -> 1, (image, generated) pairs -> 0.

    ``fake_probs`` is detached: this loss trains only the discriminator.  The result is
    the mean of the real and the fake term (the 0.5 of pix2pix slows D relative to G).
    """
    real_logits = disc(image, real_mask_onehot)
    fake_logits = disc(image, fake_probs.detach())
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def generator_adversarial_loss(disc: nn.Module, image: torch.Tensor, fake_probs: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits pushing D(image, generated) towards 1 ("real").

    Non-saturating form (maximise log D(fake) rather than minimise log(1 - D(fake))):
    it gives the generator strong gradients early on, when D easily spots fakes.
    Gradients flow through ``fake_probs`` into the generator.
    """
    fake_logits = disc(image, fake_probs)
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
