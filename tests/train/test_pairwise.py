"""The image-aware pairwise (CRF) loss: its value against a brute-force sum, what it prefers, a run with it."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import torch

from conftest import make_store, planes, tiny_config
from xtrain.errors import ConfigError
from xtrain.train.loop import fit
from xtrain.train.pairwise import pairwise_potts


def _brute(logits: np.ndarray, image: np.ndarray, r: int, s_i: float, s_xy: float) -> float:
    """sum w_pq (1 - s_p . s_q) / sum w_pq over every ordered pair p != q with |dy|, |dx| <= r, in float64."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    guide = image[:, image.shape[1] // 2]
    b, _, h, w = p.shape
    num = den = 0.0
    for n, y, x, dy, dx in itertools.product(range(b), range(h), range(w), range(-r, r + 1), range(-r, r + 1)):
        qy, qx = y + dy, x + dx
        if (dy, dx) == (0, 0) or not (0 <= qy < h and 0 <= qx < w):
            continue
        wpq = np.exp(-(guide[n, y, x] - guide[n, qy, qx]) ** 2 / (2 * s_i ** 2) - (dy * dy + dx * dx) / (2 * s_xy ** 2))
        num += wpq * (1 - p[n, :, y, x] @ p[n, :, qy, qx])
        den += wpq
    return num / den


@pytest.mark.parametrize("r, s_i, s_xy", [(1, 0.1, 6.0), (2, 0.3, 1.5)])
def test_the_term_equals_a_brute_force_sum_over_ordered_pairs(r, s_i, s_xy):
    gen = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(2, 3, 9, 7, generator=gen)
    image = torch.rand(2, 3, 9, 7, generator=gen)  # 3 input slices: the centre one guides
    got = float(pairwise_potts(logits, image, r, s_i, s_xy))
    assert got == pytest.approx(_brute(logits.double().numpy(), image.double().numpy(), r, s_i, s_xy), rel=1e-5)


def test_a_boundary_on_the_intensity_edge_costs_less_than_one_across_a_flat_region():
    image = torch.zeros(1, 1, 16, 16)
    image[..., 8:] = 1.0  # an edge between x 7 and 8
    def split_at(x: int) -> torch.Tensor:
        logits = torch.full((1, 2, 16, 16), -30.0)
        logits[:, 0, :, :x] = 30.0
        logits[:, 1, :, x:] = 30.0
        return logits
    one_class = torch.zeros(1, 2, 16, 16)
    one_class[:, 0] = 30.0
    on_edge, off_edge = (float(pairwise_potts(split_at(x), image)) for x in (8, 4))
    assert float(pairwise_potts(one_class, image)) < 1e-6  # a constant prediction costs nothing
    assert on_edge < 1e-6 < off_edge  # sigma_I 0.1: pairs across a step of 1 weigh exp(-50)


def test_the_gradient_reaches_the_logits_and_not_the_image():
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    image = torch.rand(1, 1, 8, 8, requires_grad=True)
    pairwise_potts(logits, image).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert image.grad is None or image.grad.abs().sum() == 0  # differentiable in the logits only


SHAPE = (21, 40, 37)


def test_a_run_with_it_logs_crf_loss_and_one_without_does_not(tmp_path, caplog):
    """On scribbles (strokes, no painted plane): the run without the term suggests it, the one with it does not."""
    strokes = np.zeros(SHAPE, bool)
    strokes[10, 4:36, 5:9] = strokes[10, 4:36, 20:24] = True
    store = make_store(tmp_path / "s.zarr", shape=SHAPE, labelled=strokes)
    hint = "the pairwise loss helps: --set loss.crf_weight=1.0"
    for name, extra in (("on", ("loss.crf_weight=1.0",)), ("off", ())):
        (tmp_path / name).mkdir()
        caplog.clear()
        with caplog.at_level("INFO", logger="xtrain"):
            fit(tiny_config(store, "train.epochs=1", *extra), tmp_path / name)
        assert (hint in caplog.text) == (name == "off"), name
    with open(tmp_path / "on" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert 0.0 < float(row["train_crf_loss"]) < 1.0
    with open(tmp_path / "off" / "metrics.csv") as f:
        assert "train_crf_loss" not in next(csv.DictReader(f))


@pytest.mark.parametrize("overrides, words", [
    (("loss.crf_weight=1.0", "model.name=pix2pix"), "is for segmenters .unet, mlp., not model.name=pix2pix"),
    (("loss.crf_sigma=0",), r"'loss.crf_sigma'=0.0 must be in \(0.0, inf\)"),
    (("loss.crf_radius=0",), r"'loss.crf_radius'=0 must be in \[1, 8\]"),
    (("loss.crf_weight=-1",), r"'loss.crf_weight'=-1.0 must be in \[0.0, inf\)"),
])
def test_bad_pairwise_settings_are_refused(tmp_path, overrides, words):
    store = make_store(tmp_path / "s.zarr", shape=SHAPE, labelled=planes(SHAPE, at=(10,)))
    with pytest.raises(ConfigError, match=words):
        tiny_config(store, *overrides)
