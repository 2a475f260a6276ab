"""Segmentation models, built by name: ``create_model("unet", width=16)`` (timm-style registry).

Registered models (registry.py imports their modules on the first lookup):
    unet     2D U-Net (unet.py)
    pix2pix  U-Net generator + PatchGAN discriminator (pix2pix.py)
    mlp      dense 32x32 patch baseline (mlp.py)

Checkpoints (model.pt, last.pt) and the network they hold: ``checkpoint.py``.  Exports are
imported on first use (``xtrain.lazy``).
"""

from ..lazy import lazy_exports

__all__ = ["PatchDiscriminator", "PatchMLP", "Pix2Pix", "UNet", "create_model", "discriminator_loss",
           "generator_adversarial_loss", "list_models", "model_kwargs", "num_parameters", "register_model"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "PatchMLP": ".mlp", "Pix2Pix": ".pix2pix", "PatchDiscriminator": ".pix2pix", "discriminator_loss": ".pix2pix",
    "generator_adversarial_loss": ".pix2pix", "UNet": ".unet", "create_model": ".registry",
    "list_models": ".registry", "model_kwargs": ".registry", "num_parameters": ".registry",
    "register_model": ".registry",
})
