"""Checkpoints: one dict of states, written atomically.

    last.pt   everything needed to continue training (model + optimiser states, epoch,
              step, resolved config, normalisation statistics, classes)
    model.pt  everything inference needs and nothing else: model name + kwargs + weights,
              normalisation statistics, classes, config and validation metrics

Both are plain ``torch.save`` dicts of tensors and plain values, loadable without the config
files that made them, and always loaded with ``torch.load(weights_only=True)``: a model file
shared between users cannot run code (a pickle payload is refused naming the file, before
anything in it runs).  No RNG states are stored: resume reseeds every step from (seed, epoch,
rank, step) (``loop.seed_step``), so the numpy / Python states earlier versions saved were never
read back.  Those older last.pt files still load: the numpy array pieces of their RNG states are
allow-listed for the load (``_legacy_safe_globals``; rebuilding an array runs no code).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
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


def _legacy_safe_globals() -> list[Any]:
    """What an older last.pt's ``np.random.get_state()`` needs beyond tensors: an ndarray of uint32."""
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray  # numpy 2 / 1
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


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
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused an object: nothing ran
        try:  # names what the pickle would import, without running it
            found = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - the refusal stands; only its detail is lost
            found = ""
        what = found or next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), "objects")
        raise CorruptFileError(f"checkpoint '{path}' is refused: it holds more than tensors and plain values "
                               f"({what}), which could run code when loaded (a pickle payload); xtrain never "
                               "writes such files: use a model.pt made by 'xtrain train'") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CorruptFileError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {first}); "
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
