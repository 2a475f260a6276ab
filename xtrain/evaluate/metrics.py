"""Segmentation metrics from a streamed confusion matrix.

    cm = ConfusionMatrix(num_classes=3, ignore_index=255)
    for pred, truth in batches:              # label arrays (numpy or torch), any equal shapes
        cm.update(pred, truth)
    s = scores(cm.matrix, ["pore", "ysz", "ni"])
    s["mean_dice"], s["per_class"]["ni"]["iou"]

Rows of the (K, K) matrix are the true class, columns the predicted class.  Every score
is a function of the matrix alone, so summing matrices (over batches, slabs or workers)
and scoring once gives exactly the scores of the whole volume -- unlike averaging
per-batch scores (DDP workers sum theirs with ``xtrain.train.distributed.allreduce_confusion``).

Absent classes: a per-class score whose denominator is 0 (e.g. the Dice of a class that
is neither in the truth nor in the prediction, or the recall of a class missing from
the truth) is NaN, not 0 or 1, because it is undefined.  ``mean_dice`` and ``mean_iou``
average over the classes whose score is defined (NaN are skipped); they are NaN only if
no class is defined (an empty matrix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import LabelValueError, ShapeMismatchError


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def confusion_matrix(pred: Any, truth: Any, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(K, K) int64 counts: ``m[t, p]`` = voxels of true class t predicted as p.

    ``pred`` and ``truth`` are integer label arrays of the same shape (numpy or torch).
    Voxels whose truth equals ``ignore_index`` are not counted.
    """
    pred, truth = _to_numpy(pred), _to_numpy(truth)
    if pred.shape != truth.shape:
        raise ShapeMismatchError(f"prediction shape {pred.shape} differs from label shape {truth.shape}")
    pred, truth = pred.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    if ignore_index is not None:
        keep = truth != ignore_index
        pred, truth = pred[keep], truth[keep]
    for what, a in (("label", truth), ("prediction", pred)):
        # bincount would silently put an out-of-range value into a neighbouring cell
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            bad = a[(a < 0) | (a >= num_classes)][0]
            raise LabelValueError(f"{what} value {bad} is not a class index 0..{num_classes - 1}")
    # one pass: the pair (t, p) becomes the flat index t*K + p
    counts = np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


class ConfusionMatrix:
    """Accumulates ``confusion_matrix`` over batches; ``a + b`` or ``a.merge(b)`` combine two."""

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, truth: Any) -> ConfusionMatrix:
        self.matrix += confusion_matrix(pred, truth, self.num_classes, self.ignore_index)
        return self

    def merge(self, other: ConfusionMatrix | np.ndarray) -> ConfusionMatrix:
        """Add another accumulator (or a raw (K, K) matrix) into this one, in place."""
        m = other.matrix if isinstance(other, ConfusionMatrix) else np.asarray(other)
        if m.shape != self.matrix.shape:
            raise ShapeMismatchError(f"cannot merge a {m.shape} confusion matrix into a {self.matrix.shape} one")
        self.matrix += m.astype(np.int64)
        return self

    def __add__(self, other: ConfusionMatrix | np.ndarray) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        return out.merge(self).merge(other)

    def reset(self) -> None:
        self.matrix[:] = 0

    def scores(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return scores(self.matrix, class_names)


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def scores(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores of a (K, K) confusion matrix (rows truth, columns prediction).

    Returns ``{"accuracy", "mean_dice", "mean_iou", "per_class": {name: {"dice", "iou",
    "precision", "recall", "f1", "support"}}}`` with plain floats (NaN where undefined,
    see the module docstring) and ``support`` = true voxels of the class.  ``class_names``
    default to "0", "1", ...  Dice and F1 are the same number; both keys are kept because
    reports quote both.
    """
    m = np.asarray(matrix, dtype=np.int64)
    k = m.shape[0]
    if m.shape != (k, k):
        raise ShapeMismatchError(f"confusion matrix must be square, got shape {m.shape}")
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ShapeMismatchError(f"{len(names)} class names for a {k}-class confusion matrix")
    per_class = {}
    for i, name in enumerate(names):
        tp = int(m[i, i])
        fn = int(m[i, :].sum()) - tp  # true i, predicted something else
        fp = int(m[:, i].sum()) - tp  # predicted i, truly something else
        dice = _div(2 * tp, 2 * tp + fp + fn)
        per_class[name] = {
            "dice": dice,
            "iou": _div(tp, tp + fp + fn),
            "precision": _div(tp, tp + fp),
            "recall": _div(tp, tp + fn),
            "f1": dice,
            "support": tp + fn,
        }
    return {
        "accuracy": _div(np.trace(m), m.sum()),
        "mean_dice": _nanmean([c["dice"] for c in per_class.values()]),
        "mean_iou": _nanmean([c["iou"] for c in per_class.values()]),
        "per_class": per_class,
    }


# ----------------------------------------------------------------------------- per-slice scores


def confusion_per_slice(pred: Any, truth: Any, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(Z, K, K) confusion matrices, one per z-slice of (Z, Y, X) label blocks.

    Their sum over z is ``confusion_matrix(pred, truth, ignore_index=...)``: use it to stream both the
    whole-volume matrix and the per-slice scores from one pass.  Voxels whose truth equals
    ``ignore_index`` (unlabelled) are not counted.
    """
    pred, truth = _to_numpy(pred), _to_numpy(truth)
    if pred.shape != truth.shape:
        raise ShapeMismatchError(f"prediction shape {pred.shape} differs from label shape {truth.shape}")
    if pred.ndim != 3:
        raise ShapeMismatchError(f"per-slice confusion needs (Z, Y, X) blocks, got shape {pred.shape}")
    k, depth = num_classes, pred.shape[0]
    known = truth != ignore_index if ignore_index is not None else None
    if known is not None and known.all():
        known = None  # dense labels: nothing to leave out
    for what, a in (("label", truth if known is None else truth[known]), ("prediction", pred)):
        if a.size and (a.min() < 0 or a.max() >= k):
            bad = a[(a < 0) | (a >= k)].ravel()[0]
            raise LabelValueError(f"{what} value {bad} is not a class index 0..{k - 1}")
    out = np.zeros((depth, k, k), dtype=np.int64)
    for z in range(depth):  # slice by slice: temporaries stay one slice big
        pair = truth[z].astype(np.intp) * k + pred[z]  # (truth, pred) -> flat index
        if known is not None:
            pair = pair[known[z]]
        out[z] = np.bincount(pair.ravel(), minlength=k * k).reshape(k, k)
    return out


def dice_per_class(matrices: np.ndarray) -> np.ndarray:
    """Dice of every class of (..., K, K) confusion matrices -> (..., K); NaN where 2TP+FP+FN = 0."""
    m = np.asarray(matrices, dtype=np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    denom = m.sum(axis=-1) + m.sum(axis=-2)  # (TP + FN) + (TP + FP)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
