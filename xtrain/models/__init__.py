"""Segmentation models, built by name: ``create_model("unet", width=16)``.

Registered models (importing this package registers them):
    unet     2D U-Net (unet.py)
    pix2pix  U-Net generator + PatchGAN discriminator (pix2pix.py)
    mlp      dense 32x32 patch baseline (mlp.py)
"""

from . import mlp, pix2pix, unet  # noqa: F401  (imported for their @register_model)
from .mlp import PatchMLP
from .pix2pix import Pix2Pix, PatchDiscriminator, discriminator_loss, generator_adversarial_loss
from .registry import create_model, list_models, model_kwargs, num_parameters, register_model
from .unet import UNet

__all__ = [
    "PatchDiscriminator",
    "PatchMLP",
    "Pix2Pix",
    "UNet",
    "create_model",
    "discriminator_loss",
    "generator_adversarial_loss",
    "list_models",
    "model_kwargs",
    "num_parameters",
    "register_model",
]
