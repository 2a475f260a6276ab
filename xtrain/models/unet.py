"""2D U-Net (Ronneberger et al. 2015) for (B, C, Y, X) slices or 2.5D slice stacks.

    model = create_model("unet", in_channels=1, num_classes=3, width=32, depth=4)
    logits = model(x)        # x: (B, C, Y, X) float -> logits: (B, num_classes, Y, X)

Shape of the network (width=32, depth=4): the encoder has depth+1 levels with
32, 64, 128, 256, 512 channels; each level is two 3x3 conv -> norm -> ReLU, and levels are
joined by 2x2 max-pooling on the way down and 2x2 transposed convolutions (plus the skip
connection of the same level) on the way up.  A 1x1 conv makes the class logits.

Any input size works: the input is padded to a multiple of 2**depth (so every pooling
halves an even size and the skip connections line up) and the logits are cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnknownNameError
from .registry import register_model

NORMS = ("batch", "group", "instance")


def make_norm(norm: str, channels: int) -> nn.Module:
    """A 2D normalisation layer by name: batch, group (<= 8 groups) or instance."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        # 8 groups is a good default (Wu & He 2018); small layers get the largest divisor
        # of `channels` below 8, so e.g. 4 channels -> 4 groups, 12 channels -> 4 groups.
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if norm == "instance":
        # affine=True: like batch/group norm, learn a per-channel scale and shift
        return nn.InstanceNorm2d(channels, affine=True)
    raise UnknownNameError("norm", norm, NORMS)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (B, C, Y, X) so that Y and X are multiples of ``multiple``; returns (padded, box).

    ``box = (top, left, Y, X)`` is what ``crop`` needs to undo it.  The padding is split
    between both sides and *reflects* the image: zero padding would draw an artificial
    dark edge, and in a PXCT slice dark means pore, so the network would see a fake pore
    boundary along the patch border.  A reflection continues the microstructure
    plausibly.  Reflection needs pad < size; inputs smaller than that (only tiny test
    tiles) fall back to replicating the edge pixels.
    """
    _, _, ny, nx = x.shape
    py, px = (-ny) % multiple, (-nx) % multiple
    top, left = py // 2, px // 2
    pads = (left, px - left, top, py - top)  # F.pad order: last dim first
    mode = "reflect" if py < ny and px < nx else "replicate"
    return F.pad(x, pads, mode=mode), (top, left, ny, nx)


def crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo ``pad_to_multiple``: cut (B, K, Y', X') back to the original (B, K, Y, X)."""
    top, left, ny, nx = box
    return x[:, :, top : top + ny, left : left + nx]


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> norm -> ReLU); keeps Y, X.  No conv bias: the norm's shift replaces it."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            make_norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            make_norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample 2x with a transposed conv, concatenate the skip, then a ConvBlock."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * c_out, c_out, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, c_out, 2Y, 2X): same size as skip thanks to the padding
        return self.conv(torch.cat([skip, x], dim=1))


@register_model("unet")
class UNet(nn.Module):
    """2D U-Net: (B, in_channels, Y, X) -> logits (B, num_classes, Y, X), any Y, X.

    Args:
        in_channels: input channels: 1, or the number of slices of a 2.5D stack.
        num_classes: output classes (3: pore, YSZ, Ni).
        width: channels of the first level; each of the ``depth`` poolings doubles them.
        depth: number of 2x downsamplings (the bottleneck sees Y / 2**depth).
        norm: "batch", "group" or "instance".
        dropout: channel dropout probability in the bottleneck (0 disables it).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        width: int = 32,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        for key, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if value < 1:
                raise ConfigError(f"unet {key} must be >= 1, got {value}")
        if depth < 0:
            raise ConfigError(f"unet depth must be >= 0, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"unet dropout must be in [0, 1), got {dropout}")
        if norm not in NORMS:
            raise UnknownNameError("norm", norm, NORMS)
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.multiple = 2**depth  # input sizes are padded to a multiple of this

        chans = [width * 2**i for i in range(depth + 1)]  # e.g. 32, 64, 128, 256, 512
        self.stem = ConvBlock(in_channels, chans[0], norm)
        self.down = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], norm) for i in range(depth))
        # Dropout2d drops whole feature maps: neighbouring pixels of one map are strongly
        # correlated, so dropping single pixels would barely regularise.
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(Up(chans[i + 1], chans[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, box = pad_to_multiple(x, self.multiple)  # (B, C, Y', X'), Y' and X' divisible
        x = self.stem(x)  # (B, w, Y', X')
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(F.max_pool2d(x, 2))  # (B, 2c, Y/2, X/2) at each level
        x = self.drop(x)  # bottleneck: (B, w * 2**depth, Y' / 2**depth, X' / 2**depth)
        for i, up in enumerate(self.up):  # indexing, not reversed(): TorchScript (export) has no reversed list
            x = up(x, skips[-1 - i])  # back up one level: (B, c, 2Y, 2X)
        return crop(self.head(x), box)  # (B, num_classes, Y, X)
