"""Dense patch baseline: a multilayer perceptron that maps a whole 32x32 patch to its labels.

    model = create_model("mlp")           # in_channels=1, num_classes=3, patch=32, hidden=128
    logits = model(x)                     # (B, C, 32, 32) -> (B, 3, 32, 32)

The patch (C x patch x patch values) is flattened, passed through two hidden layers
(Linear -> BatchNorm1d -> ReLU) and mapped to patch*patch*num_classes logits.  It has no
notion of locality or translation invariance: it is the "how much does the U-Net's
structure buy us" reference point.

Training must use patches of exactly ``patch`` x ``patch`` (anything else is a config
mismatch and raises ConfigError).  In eval mode any (B, C, Y, X) works: the input is
padded to a multiple of ``patch``, cut into non-overlapping tiles, each tile is
segmented on its own, and the tiles are put back together and cropped.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .registry import register_model
from .unet import crop, pad_to_multiple


@register_model("mlp")
class PatchMLP(nn.Module):
    """(B, in_channels, patch, patch) -> logits (B, num_classes, patch, patch); tiles in eval.

    Args:
        in_channels: input channels (1, or the 2.5D slice count).
        num_classes: output classes.
        patch: edge of the square patch the network maps at once.
        hidden: width of the two hidden layers.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3, patch: int = 32, hidden: int = 128):
        super().__init__()
        for key, value in (("in_channels", in_channels), ("num_classes", num_classes), ("patch", patch), ("hidden", hidden)):
            if value < 1:
                raise ConfigError(f"mlp {key} must be >= 1, got {value}")
        self.in_channels, self.num_classes, self.patch = in_channels, num_classes, patch
        self.net = nn.Sequential(
            nn.Linear(in_channels * patch * patch, hidden, bias=False),  # bias: BatchNorm's shift
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes * patch * patch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, ny, nx = x.shape
        p, k = self.patch, self.num_classes
        if self.training and (ny, nx) != (p, p):
            raise ConfigError(
                f"mlp model was built for {p}x{p} patches but is training on {ny}x{nx}; "
                f"set data.patch={p} (or model.kwargs.patch to the data patch)"
            )
        x, box = pad_to_multiple(x, p)  # (B, C, ty*p, tx*p)
        ty, tx = x.shape[2] // p, x.shape[3] // p
        # cut into tiles: (B, C, ty, p, tx, p) -> (B, ty, tx, C, p, p) -> (B*ty*tx, C*p*p)
        tiles = x.reshape(b, c, ty, p, tx, p).permute(0, 2, 4, 1, 3, 5).reshape(b * ty * tx, c * p * p)
        out = self.net(tiles)  # (B*ty*tx, K*p*p)
        # and back: (B, ty, tx, K, p, p) -> (B, K, ty, p, tx, p) -> (B, K, ty*p, tx*p)
        out = out.reshape(b, ty, tx, k, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, k, ty * p, tx * p)
        return crop(out, box)  # (B, K, Y, X)
