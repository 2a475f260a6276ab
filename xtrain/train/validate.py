"""Validation on whole planes of the validation slab (``data.val_mode: slab``).

    slab = ValidationSlab(cfg.data.store, split.val, stats)     # reads the slab once
    result = slab.evaluate(model, num_classes, classes, rank, world_size)
    result.matrix, result.tpb_ratio, result.fraction_error_pp

Every z-plane of the validation slab is predicted whole (one tile per plane, no blending),
as ``segment --axes z`` does with a tile as large as the plane, with the training
normalisation (the store's statistics).  2.5D neighbours are mirrored inside the slab, like
the training sampler's (no slice outside the validation region is read).  Ranks predict
disjoint z-ranges; the label planes are gathered, so every rank gets the same scores:

* the confusion matrix (Dice etc., xtrain.evaluate.metrics);
* the TPB density of the prediction over that of the labels (xtrain.evaluate.microstructure.analyze);
* the largest absolute phase-fraction difference, in percentage points.

Those two need contiguous 3D labels, which the patch grid of ``GridPatches`` cannot give.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data.normalise import normalize
from ..data.volumes import array_volume
from ..data.store import open_store
from ..infer.predict import Predictor
from ..evaluate.metrics import confusion_matrix
from ..evaluate.microstructure import analyze

log = logging.getLogger(__name__)


@dataclass
class SlabScores:
    matrix: np.ndarray  # (K, K) confusion matrix, rows true class
    tpb_ratio: float  # TPB density of the prediction / of the labels (NaN if the labels have none)
    fraction_error_pp: float  # max over phases of |fraction predicted - fraction true| * 100


class ValidationSlab:
    """The validation slab z in [z0, z1), all of Y and X, normalised with ``stats``."""

    def __init__(self, store_path: str | os.PathLike, region: tuple[int, int], stats: dict[str, Any]):
        store = open_store(store_path)
        z0, z1 = region
        self.image = array_volume(normalize(np.asarray(store.image[z0:z1]), stats), spec=f"{store_path} z {z0}..{z1}")
        self.labels = np.asarray(store.labels[z0:z1]).astype(np.uint8)
        self._truth: dict[str, Any] | None = None

    def truth(self, classes: list[str]) -> dict[str, Any]:
        if self._truth is None:
            self._truth = analyze(self.labels, classes=classes, percolation=False)
        return self._truth

    @torch.no_grad()
    def predict(self, model: nn.Module, in_channels: int, num_classes: int, rank: int = 0,
                world_size: int = 1, device: str | torch.device = "cpu") -> np.ndarray:
        """uint8 labels (Z, Y, X) of the whole slab; rank r predicts z-part r, then all are gathered."""
        was_training = model.training
        nz, ny, nx = self.image.shape
        predictor = Predictor(model, in_channels, num_classes, tile=max(ny, nx), halo=0, axes="z", device=device)
        parts = np.array_split(np.arange(nz), world_size)
        mine = parts[rank]
        local = np.zeros((0, ny, nx), np.uint8)
        if mine.size:
            core = ((int(mine[0]), int(mine[-1]) + 1), (0, ny), (0, nx))
            local = predictor.predict(self.image, core).argmax(axis=0).astype(np.uint8)
        model.train(was_training)
        if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return local
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, local)
        return np.concatenate(gathered, axis=0)

    def evaluate(self, model: nn.Module, in_channels: int, num_classes: int, classes: list[str], rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu") -> SlabScores:
        pred = self.predict(model, in_channels, num_classes, rank, world_size, device)
        matrix = confusion_matrix(pred, self.labels, num_classes)
        if num_classes != 3:  # microstructure is defined for three phases only
            return SlabScores(matrix, float("nan"), float("nan"))
        truth, got = self.truth(classes), analyze(pred, classes=classes, percolation=False)
        t_tpb = truth["tpb"]["density"]
        ratio = got["tpb"]["density"] / t_tpb if t_tpb > 0 else float("nan")
        err = max(abs(got["fractions"][c] - truth["fractions"][c]) for c in classes) * 100.0
        return SlabScores(matrix, float(ratio), float(err))


def selection_score(metrics: dict[str, Any], select: str, tpb_weight: float) -> float:
    """The number model.pt is selected by (higher is better).

    ``dice``: validation mean Dice.  ``dice+tpb``: mean Dice - tpb_weight * |TPB ratio - 1|
    (a TPB 10 % off costs as much as 0.01 Dice with the default weight 0.1).
    """
    score = float(metrics["val_mean_dice"])
    if select == "dice+tpb":
        ratio = float(metrics.get("val_tpb_ratio", float("nan")))
        score -= tpb_weight * abs(ratio - 1.0) if np.isfinite(ratio) else 1.0
    return score
