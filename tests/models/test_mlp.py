"""Patch MLP: exact patches in training, any size (tiled) at inference."""

from __future__ import annotations

import pytest
import torch

from xtrain.errors import ConfigError
from xtrain.models import create_model, num_parameters

# one intra-op thread: see conftest.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_shape_and_size():
    model = create_model("mlp")
    out = model(torch.randn(4, 1, 32, 32))
    assert out.shape == (4, 3, 32, 32)
    # 1024*128 + 128*128 + 128*3072 + 3072 (out bias) + 2 * 2*128 (BatchNorm)
    assert num_parameters(model) == 1024 * 128 + 128 * 128 + 128 * 3072 + 3072 + 4 * 128


def test_training_on_wrong_patch_size_is_a_config_error():
    model = create_model("mlp")
    with pytest.raises(ConfigError, match="32x32.*37x53.*data.patch=32"):
        model(torch.randn(2, 1, 37, 53))


@pytest.mark.parametrize("shape", [(2, 1, 37, 53), (1, 1, 5, 7), (3, 1, 32, 32), (1, 1, 64, 96)])
def test_inference_on_any_size(shape):
    model = create_model("mlp").eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 3, shape[2], shape[3])


def test_tiles_are_segmented_independently():
    # a 64x96 input (no padding) must equal the six 32x32 tiles segmented one by one
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=2, patch=8, hidden=16).eval()
    x = torch.randn(2, 2, 16, 24)
    with torch.no_grad():
        full = model(x)
        for ty in range(2):
            for tx in range(3):
                sl = (slice(None), slice(None), slice(8 * ty, 8 * ty + 8), slice(8 * tx, 8 * tx + 8))
                assert torch.allclose(full[sl], model(x[sl]), atol=1e-6)


def test_overfits_tiny_batch(overfit):
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (4, 32, 32))
    x = (labels.float() - 1 + 0.3 * torch.randn(4, 32, 32)).unsqueeze(1)
    model = create_model("mlp")
    losses = overfit(model, x, labels, lr=1e-3, steps=40)
    assert losses[-1] < 0.5 * losses[0]
