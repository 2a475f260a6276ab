"""The predictor's model preparation (xtrain/infer/predict.py)."""

from __future__ import annotations

import torch
from torch import nn

from xtrain.infer.engines import inference_model
from xtrain.models import create_model


def _trained_bn_unet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, width=4, depth=2, norm="batch")
    model.train()
    with torch.no_grad():  # a few batches give the BatchNorm layers non-trivial running statistics
        for _ in range(3):
            model(torch.randn(2, 1, 21, 19) * 3 + 1)
    return model


def test_inference_model_folds_batchnorm_and_computes_the_same_function():
    model = _trained_bn_unet()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = inference_model(model)
    assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not fused.training
    assert fused.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    # the caller's (live, training) model is untouched: same mode, same layers
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    x = torch.randn(3, 1, 23, 17)
    with torch.inference_mode():
        expected = model.eval()(x)
        got = fused(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == expected.shape == (3, 3, 23, 17)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_inference_model_keeps_groupnorm():
    torch.manual_seed(1)
    model = create_model("unet", in_channels=3, num_classes=3, width=8, depth=1, norm="group")
    fused = inference_model(model)
    assert sum(isinstance(m, nn.GroupNorm) for m in fused.modules()) == sum(
        isinstance(m, nn.GroupNorm) for m in model.modules()) > 0
    x = torch.randn(2, 3, 15, 13)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.eval()(x), rtol=1e-4, atol=1e-5)
