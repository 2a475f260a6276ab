"""U-Net: any input size, all norms, and it can learn (overfit a tiny batch)."""

from __future__ import annotations

import pytest
import torch

from xtrain.models import create_model
from xtrain.models.unet import crop, pad_to_multiple

# one intra-op thread: see conftest.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 5, 61, 45)])
def test_odd_sizes_keep_spatial_size(shape):
    torch.manual_seed(0)
    model = create_model("unet", in_channels=shape[1], width=8).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 3, shape[2], shape[3])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_norms(norm):
    model = create_model("unet", width=4, depth=2, norm=norm, dropout=0.2)
    out = model(torch.randn(2, 1, 21, 19))  # train mode
    out.sum().backward()
    assert out.shape == (2, 3, 21, 19)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 9, 13)).shape == (1, 3, 9, 13)


def test_group_norm_with_few_channels():
    model = create_model("unet", width=4, depth=1, norm="group")
    groups = [m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert groups and min(groups) == 4 and max(groups) == 8


def test_pad_and_crop_roundtrip():
    x = torch.arange(2 * 3 * 7 * 5, dtype=torch.float32).reshape(2, 3, 7, 5)
    padded, box = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8)
    assert torch.equal(crop(padded, box), x)
    tiny, box = pad_to_multiple(x[:, :, :2, :2], 16)  # too small to reflect: replicate
    assert tiny.shape[-2:] == (16, 16) and torch.equal(crop(tiny, box), x[:, :, :2, :2])


def test_overfits_tiny_batch(overfit):
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 19, 23))
    x = (labels.float() - 1 + 0.3 * torch.randn(2, 19, 23)).unsqueeze(1)  # (B, 1, Y, X)
    model = create_model("unet", width=8, depth=2)
    losses = overfit(model, x, labels, lr=1e-2, steps=60)
    assert losses[-1] < 0.5 * losses[0]
