"""Metrics: confusion matrix against a by-hand reference, streaming, Dice by hand, NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xtrain.errors import LabelValueError, ShapeMismatchError
from xtrain.evaluate.metrics import ConfusionMatrix, confusion_matrix, scores


def _dense_reference(pred, truth, k, ignore=None):
    m = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(np.ravel(pred), np.ravel(truth)):
        if t != ignore:
            m[t, p] += 1
    return m


def _random(seed=0, shape=(5, 7, 3), k=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, shape), rng.integers(0, k, shape)


def test_matches_dense_reference():
    pred, truth = _random()
    m = confusion_matrix(pred, truth, 3)
    assert m.dtype == np.int64 and m.shape == (3, 3)
    assert np.array_equal(m, _dense_reference(pred, truth, 3))
    assert m.sum() == pred.size


def test_rows_are_truth_columns_are_prediction():
    m = confusion_matrix(np.array([2]), np.array([0]), 3)
    assert m[0, 2] == 1 and m.sum() == 1


def test_torch_inputs_and_ignore_index():
    pred, truth = _random(1, (2, 9, 11))
    truth[0, :4] = 255
    m = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth).to(torch.uint8), 3, ignore_index=255)
    assert np.array_equal(m, _dense_reference(pred, truth, 3, ignore=255))
    assert m.sum() == pred.size - 4 * 11


def test_accumulating_in_parts_equals_one_shot():
    pred, truth = _random(2, (6, 13, 17))
    whole = confusion_matrix(pred, truth, 3)
    cm = ConfusionMatrix(3)
    for i in range(6):
        cm.update(pred[i], truth[i])
    assert np.array_equal(cm.matrix, whole)
    a, b = ConfusionMatrix(3).update(pred[:2], truth[:2]), ConfusionMatrix(3).update(pred[2:], truth[2:])
    assert np.array_equal((a + b).matrix, whole)
    assert np.array_equal(a.matrix, confusion_matrix(pred[:2], truth[:2], 3))  # + does not modify
    a.merge(b)
    assert np.array_equal(a.matrix, whole)


def test_single_voxel_error_changes_dice_exactly():
    truth = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    pred = truth.copy()
    assert scores(confusion_matrix(pred, truth, 3))["mean_dice"] == 1.0
    pred[5] = 2  # one YSZ voxel predicted as Ni
    s = scores(confusion_matrix(pred, truth, 3), ["pore", "ysz", "ni"])
    c = s["per_class"]
    # YSZ: TP 2, FN 1, FP 0 -> 2*2/(2*2+0+1) = 4/5; Ni: TP 2, FP 1 -> 4/5; pore untouched
    assert c["pore"]["dice"] == 1.0
    assert c["ysz"]["dice"] == pytest.approx(0.8) and c["ni"]["dice"] == pytest.approx(0.8)
    assert c["ysz"]["f1"] == c["ysz"]["dice"]
    assert s["mean_dice"] == pytest.approx(1.0 - 2.0 / 15.0)  # (1 + 0.8 + 0.8) / 3
    assert c["ysz"]["iou"] == pytest.approx(2 / 3) and c["ni"]["iou"] == pytest.approx(2 / 3)
    assert s["mean_iou"] == pytest.approx((1 + 4 / 3) / 3)
    assert c["ysz"]["recall"] == pytest.approx(2 / 3) and c["ysz"]["precision"] == 1.0
    assert c["ni"]["recall"] == 1.0 and c["ni"]["precision"] == pytest.approx(2 / 3)
    assert c["ysz"]["support"] == 3
    assert s["accuracy"] == pytest.approx(0.9)


def test_absent_class_is_nan_and_skipped_in_means():
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])  # class 2 neither present nor predicted
    s = scores(confusion_matrix(pred, truth, 3))
    c = s["per_class"]
    for key in ("dice", "iou", "precision", "recall", "f1"):
        assert math.isnan(c["2"][key])
    assert c["0"]["dice"] == pytest.approx(2 / 3) and c["1"]["dice"] == pytest.approx(0.8)
    assert s["mean_dice"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_predicted_but_absent_class_scores_zero():
    s = scores(confusion_matrix(np.array([2, 0]), np.array([0, 0]), 3))
    c = s["per_class"]
    assert c["2"]["dice"] == 0.0 and c["2"]["precision"] == 0.0 and math.isnan(c["2"]["recall"])
    assert math.isnan(c["1"]["dice"])
    assert s["mean_dice"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_empty_matrix_is_all_nan():
    s = scores(np.zeros((3, 3), dtype=np.int64))
    assert math.isnan(s["accuracy"]) and math.isnan(s["mean_dice"]) and math.isnan(s["mean_iou"])


def test_bad_inputs():
    with pytest.raises(ShapeMismatchError):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 3)
    with pytest.raises(LabelValueError, match="value 3"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(LabelValueError, match="label value 255"):
        confusion_matrix(np.array([0, 1]), np.array([0, 255]), 3)  # 255 not declared ignored
    with pytest.raises(ShapeMismatchError):
        scores(np.zeros((3, 3)), ["a", "b"])
