"""Lazy package exports (PEP 562): ``from xtrain.evaluate import evaluate`` imports only ``core``.

    __getattr__, __dir__ = lazy_exports(__name__, {"evaluate": ".core", "analyze": ".microstructure"})

Why: a Ray Train worker imports ``xtrain.train.loop``; eager package ``__init__`` s used to
pull in most of the package (scikit-image and matplotlib included) on every worker start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose name ``name`` lives in module ``table[name]``."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name], package), name)

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
