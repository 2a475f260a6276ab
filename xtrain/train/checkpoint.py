"""Checkpoints: one dict of states, written atomically.

    last.pt   everything needed to continue training (model + optimiser states, epoch,
              step, RNG states, resolved config, normalisation statistics, classes)
    model.pt  everything inference needs and nothing else: model name + kwargs + weights,
              normalisation statistics, classes, config and validation metrics

Both are plain ``torch.save`` dicts, loadable without the config files that made them.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import CorruptFileError, InputNotFoundError
from ..runtime import atomic_write

FORMAT = 1
INFERENCE_KEYS = ("format", "kind", "model_name", "model_kwargs", "model_state", "config", "stats", "classes",
                  "epoch", "metrics", "xtrain_version")


def rng_states() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write to a temporary sibling and rename: a crash never leaves a truncated checkpoint.

    Serialised in memory first, so a full disk is an ``OSError`` (ENOSPC) that
    ``atomic_write`` turns into ``DiskFullError`` naming the file, not torch's
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``."""
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return atomic_write(path, buffer.getbuffer(), what="a checkpoint")


def inference_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model.pt subset of a training checkpoint."""
    out = {k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt}
    out["kind"] = "model"
    return out


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint '{path}' does not exist; train a model first with 'xtrain train'")
    try:
        # weights_only=False: our own files hold numpy RNG states and config dicts.
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CorruptFileError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); "
                               "it is truncated or not an xtrain checkpoint") from exc
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_name" not in ckpt:
        raise CorruptFileError(f"'{path}' is not an xtrain checkpoint (no model_name/model_state)")
    return ckpt


def file_checksum(path: str | os.PathLike) -> str:
    """sha256 of a file (model provenance in segmentation outputs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_checkpoint(**fields: Any) -> dict[str, Any]:
    return {"format": FORMAT, "kind": "train", "xtrain_version": __version__, **fields}
