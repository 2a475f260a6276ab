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

Sparse labels (``xtrain.data.label_index``): ``PlaneValidation`` predicts whole held-out labelled
planes, normal to any axis, each as one tile, and scores their labelled voxels (no TPB: it
is a 3D measure).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.labels import AXES, IGNORE
from ..data.normalise import normalize
from ..data.volumes import array_volume, open_volume
from ..geometry import reflect
from ..data.store import open_store
from ..infer.predict import Predictor
from ..evaluate.metrics import confusion_matrix
from ..evaluate.microstructure import analyze
from .distributed import all_gather, allreduce_confusion

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
        return np.concatenate(all_gather(local, world_size), axis=0)

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


class PlaneValidation:
    """Whole held-out planes ``(axis, index)`` of a sparse store, normalised with ``stats``: each plane
    with its 2.5D neighbours along its axis (mirrored at the volume's border, as in training)."""

    def __init__(self, store_path: str | os.PathLike, planes: tuple[tuple[str, int], ...], stats: dict[str, Any],
                 slices: int):
        image, labels = open_volume(store_path), open_volume(store_path, dataset="labels")
        h = slices // 2
        self.planes = planes
        self.items: list[tuple[np.ndarray, np.ndarray]] = []  # (image (C, U, V) float32, labels (U, V) uint8)
        for axis_name, i in planes:
            a = AXES.index(axis_name)
            idx = reflect(np.arange(i - h, i + h + 1), 0, image.shape[a])
            box = [(0, n) for n in image.shape]
            box[a] = (int(idx.min()), int(idx.max()) + 1)
            stack = np.take(image.read(tuple(box)), idx - box[a][0], axis=a)
            box[a] = (i, i + 1)
            plane = np.moveaxis(labels.read(tuple(box)), a, 0)[0]
            self.items.append((normalize(np.moveaxis(stack, a, 0), stats), plane.astype(np.uint8)))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, in_channels: int, num_classes: int, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu") -> np.ndarray:
        """(K, K) confusion matrix of the labelled voxels of all planes (rank r predicts planes r::world_size)."""
        was_training = model.training
        matrix = np.zeros((num_classes, num_classes), np.int64)
        for stack, truth in self.items[rank::world_size]:
            c, nu, nv = stack.shape
            predictor = Predictor(model, in_channels, num_classes, tile=max(nu, nv), halo=0, axes="z", device=device)
            probs = predictor.predict(array_volume(stack), ((c // 2, c // 2 + 1), (0, nu), (0, nv)))
            matrix += confusion_matrix(probs.argmax(axis=0)[0].astype(np.uint8), truth, num_classes,
                                       ignore_index=IGNORE)
        model.train(was_training)
        return allreduce_confusion(matrix)


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
