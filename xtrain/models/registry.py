"""Model registry: a name -> constructor table, in the style of timm.

    @register_model("unet")
    class UNet(nn.Module): ...

    model = create_model("unet", width=16)      # checked keyword arguments
    model_kwargs("unet", width=16)              # {"in_channels": 1, ..., "width": 16, ...}

``model_kwargs`` gives the *resolved* keyword arguments (defaults filled in), which a
checkpoint records so that the model can be rebuilt later even if defaults change.
Constructor keyword arguments are the whole configuration of a model: every one must
have a default and a type annotation (int, float, str, bool), which is what the checks
here rely on.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError, UnknownNameError

_MODELS: dict[str, type[nn.Module]] = {}
BUILTIN = ("xtrain.models.unet", "xtrain.models.pix2pix", "xtrain.models.mlp")  # registered on first lookup


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls`` buildable as ``create_model(name, **kwargs)``."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS and _MODELS[name] is not cls:
            # a programming error, not a user error: two modules claimed the same name
            raise ValueError(f"model name '{name}' is already registered by {_MODELS[name].__qualname__}")
        for pname, p in inspect.signature(cls.__init__).parameters.items():
            if pname != "self" and p.default is inspect.Parameter.empty:
                raise ValueError(f"{cls.__qualname__}.__init__ argument '{pname}' needs a default to be registered")
        _MODELS[name] = cls
        return cls

    return decorate


def _builtin() -> dict[str, type[nn.Module]]:
    """The registry, with xtrain's own models imported (each registers itself with ``register_model``)."""
    for module in BUILTIN:
        importlib.import_module(module)
    return _MODELS


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_builtin())


def _model_class(name: str) -> type[nn.Module]:
    if name not in _builtin():
        raise UnknownNameError("model", name, _MODELS)
    return _MODELS[name]


def _type_ok(value: Any, tp: Any) -> bool:
    """Loose check of a kwarg value against its annotation (only the simple types)."""
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # YAML writes 0 for 0.0: ints are fine where floats are expected
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True  # anything fancier is checked by the constructor itself


def model_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor's keyword arguments of model ``name``: defaults updated by ``overrides``.

    Raises ``UnknownNameError`` for an unknown model and ``ConfigError`` for an unknown
    keyword argument (naming the closest valid one) or a value of the wrong type.
    """
    cls = _model_class(name)
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    hints = typing.get_type_hints(cls.__init__)
    for key, value in overrides.items():
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(sorted(params))}"
            raise ConfigError(f"unknown keyword argument '{key}' for model '{name}'; {hint}")
        if not _type_ok(value, hints.get(key, Any)):
            tp = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(f"model '{name}' keyword argument '{key}' must be {tp}, got {value!r}")
    resolved = {k: p.default for k, p in params.items()}
    resolved.update(overrides)
    return resolved


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with checked keyword arguments."""
    return _model_class(name)(**model_kwargs(name, **kwargs))


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
