"""BatchNorm folding: the inference-time form of a trained network (used by prediction and export)."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv2d -> BatchNorm2d pair inside an
    ``nn.Sequential`` folded into one convolution (``torch.nn.utils.fuse_conv_bn_eval``): the
    same function of the input up to float rounding (about 1e-7).  The caller's model is left as
    it was (training validates a live model).  BatchNorm without running statistics normalises by
    the batch even in eval mode and is left as it is."""
    model = copy.deepcopy(model).eval()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                conv, norm = seq[i], seq[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None:
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return model
