"""Segmentation losses: cross-entropy, soft Dice, and their sum (the default).

    loss_fn = create_loss("ce+dice", class_weights=[1.0, 1.0, 2.0])
    loss = loss_fn(logits, labels)     # logits (B, K, Y, X) float, labels (B, Y, X) int

Label pixels equal to ``ignore_index`` (255: unlabelled) contribute nothing to either
loss, nor to its gradient.  Class weights multiply each pixel's cross-entropy by the
weight of its true class (normalised like ``torch.nn.functional.cross_entropy``), and
turn the Dice mean over classes into a weighted mean.

Dice is computed over the whole batch (all pixels of all patches together), not per
patch and then averaged: a patch without any Ni would otherwise have an ill-defined Ni
Dice, and batch Dice is the quantity the validation metric measures anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.labels import IGNORE
from ..errors import ConfigError, ShapeMismatchError, UnknownNameError

IGNORE_INDEX = IGNORE  # unlabelled voxels (xtrain.data.labels)


def one_hot(labels: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B, Y, X) int -> (one-hot (B, K, Y, X) float, valid (B, 1, Y, X) float).

    Ignored pixels get an all-zero one-hot vector and ``valid == 0``.
    """
    labels = labels.long()
    valid = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    safe = torch.where(valid, labels, torch.zeros_like(labels))  # any in-range value; masked below
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()  # (B, K, Y, X)
    valid = valid.unsqueeze(1).float()  # (B, 1, Y, X)
    return onehot * valid, valid


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ShapeMismatchError(
            f"loss expects logits (B, K, Y, X) and labels (B, Y, X), got {tuple(logits.shape)} and {tuple(target.shape)}"
        )


class _Weighted(nn.Module):
    """Holds optional class weights as a buffer, so ``.to(device)`` moves them too."""

    weight: torch.Tensor | None

    def __init__(self, class_weights: Sequence[float] | None, ignore_index: int | None):
        super().__init__()
        if class_weights is not None:
            w = torch.as_tensor(list(class_weights), dtype=torch.float32)
            if w.dim() != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
                raise ConfigError(f"loss.class_weights must be non-negative numbers, not all zero; got {list(class_weights)}")
            self.register_buffer("weight", w)
        else:
            self.weight = None
        self.ignore_index = ignore_index

    def _weight_for(self, logits: torch.Tensor) -> torch.Tensor | None:
        if self.weight is not None and len(self.weight) != logits.shape[1]:
            raise ConfigError(
                f"loss.class_weights has {len(self.weight)} entries but the model predicts {logits.shape[1]} classes; give one weight per class"
            )
        return self.weight


class CrossEntropyLoss(_Weighted):
    """Pixel-wise cross-entropy; same value as ``F.cross_entropy(..., weight, ignore_index)``.

    One difference: a batch whose pixels are *all* ignored gives 0 (torch gives NaN, 0/0),
    so that one unlabelled patch cannot poison the weights.  It is computed as
    sum / total weight without ``.item()``, so there is no GPU -> CPU synchronisation.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, ignore_index: int | None = IGNORE_INDEX):
        super().__init__(class_weights, ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        target = target.long()
        logits = logits.float()  # float32 even under bf16 autocast: the sums run over ~10^5 pixels
        weight = self._weight_for(logits)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction="sum")
        valid = target != ignore
        safe = torch.where(valid, target, torch.zeros_like(target))
        per_pixel = weight[safe] if weight is not None else torch.ones_like(target, dtype=logits.dtype)
        denom = (per_pixel * valid).sum()
        return total / denom.clamp_min(torch.finfo(logits.dtype).tiny)


class DiceLoss(_Weighted):
    """Soft multi-class Dice loss: 1 - (weighted) mean over classes of the soft Dice.

    Per class k, over all valid pixels i of the batch, with p = softmax(logits):
        dice_k = (2 * sum_i p_ik g_ik + smooth) / (sum_i p_ik + sum_i g_ik + smooth)
    ``smooth`` (1.0) keeps a class that is absent from both truth and prediction at
    dice ~1 instead of 0/0, and stops tiny false-positive mass of an absent class from
    dominating the loss (with smooth -> 0 it would give dice 0 there).
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        smooth: float = 1.0,
    ):
        super().__init__(class_weights, ignore_index)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        truth, valid = one_hot(target, logits.shape[1], self.ignore_index)  # (B, K, Y, X), (B, 1, Y, X)
        # softmax in float32 even under bf16 autocast: the sums below run over ~10^5 pixels
        probs = logits.float().softmax(dim=1) * valid  # ignored pixels: no mass, no gradient
        dims = (0, 2, 3)  # sum over batch and space, keep classes
        inter = (probs * truth).sum(dims)  # (K,)
        denom = probs.sum(dims) + truth.sum(dims)  # (K,)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)  # (K,)
        weight = self._weight_for(logits)
        if weight is None:
            return 1 - dice.mean()
        return 1 - (weight * dice).sum() / weight.sum()


class CEDiceLoss(nn.Module):
    """Cross-entropy + soft Dice (unit weights): CE gives well-behaved per-pixel gradients
    from the start, Dice counters class imbalance (Ni and pores are minorities)."""

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        smooth: float = 1.0,
    ):
        super().__init__()
        self.ce = CrossEntropyLoss(class_weights, ignore_index)
        self.dice = DiceLoss(class_weights, ignore_index, smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice(logits, target)


LOSSES: dict[str, type[nn.Module]] = {"ce": CrossEntropyLoss, "dice": DiceLoss, "ce+dice": CEDiceLoss}


def create_loss(
    name: str = "ce+dice",
    class_weights: Sequence[float] | None = None,
    ignore_index: int | None = IGNORE_INDEX,
) -> nn.Module:
    """A loss module by name (``loss.name`` in the config): "ce", "dice" or "ce+dice".

    Called as ``loss_fn(logits (B, K, Y, X), labels (B, Y, X))`` -> scalar tensor.
    """
    if name not in LOSSES:
        raise UnknownNameError("loss", name, LOSSES)
    return LOSSES[name](class_weights=class_weights, ignore_index=ignore_index)
