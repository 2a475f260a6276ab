"""create_model / model_kwargs / num_parameters: names, keyword checks, defaults."""

from __future__ import annotations

import pytest
import torch

from xtrain.errors import ConfigError, UnknownNameError
from xtrain.models import create_model, list_models, model_kwargs, num_parameters


@pytest.mark.parametrize("name", ["unet", "pix2pix", "mlp"])
def test_create_each_model(name):
    model = create_model(name, num_classes=3)
    assert isinstance(model, torch.nn.Module)
    assert num_parameters(model) > 0


def test_list_models():
    assert {"unet", "pix2pix", "mlp"} <= set(list_models())


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as exc:
        create_model("transformer")
    msg = str(exc.value)
    assert "'transformer'" in msg and "mlp" in msg and "unet" in msg and "pix2pix" in msg
    assert "\n" not in msg


def test_unknown_name_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'unet'"):
        create_model("unett")


def test_unknown_kwarg_suggests_closest():
    with pytest.raises(ConfigError) as exc:
        create_model("unet", widht=16)
    msg = str(exc.value)
    assert "'widht'" in msg and "'width'" in msg and "'unet'" in msg and "\n" not in msg


def test_unknown_kwarg_without_close_match_lists_valid():
    with pytest.raises(ConfigError, match="valid: .*hidden"):
        create_model("mlp", zzzz=1)


def test_wrong_kwarg_type():
    with pytest.raises(ConfigError, match="'width' must be int"):
        create_model("unet", width="32")
    create_model("unet", width=4, depth=1, dropout=0)  # an int where a float is expected is fine


def test_bad_kwarg_values():
    with pytest.raises(UnknownNameError, match="did you mean 'group'"):
        create_model("unet", norm="grup")
    with pytest.raises(ConfigError, match="dropout"):
        create_model("unet", dropout=1.5)


def test_model_kwargs_defaults_and_overrides():
    assert model_kwargs("unet") == dict(in_channels=1, num_classes=3, width=32, depth=4, norm="batch", dropout=0.0)
    assert model_kwargs("mlp", patch=16)["patch"] == 16
    assert model_kwargs("pix2pix")["disc_width"] == 64 and model_kwargs("pix2pix")["disc_layers"] == 3
    with pytest.raises(ConfigError):
        model_kwargs("mlp", hiden=3)


def test_num_parameters_trainable_only():
    model = create_model("mlp", patch=4, hidden=8)
    total = num_parameters(model)
    model.net[0].weight.requires_grad_(False)
    assert num_parameters(model, trainable_only=True) == total - model.net[0].weight.numel()
