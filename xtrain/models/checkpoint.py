"""Checkpoints: one dict of states, written atomically, and the network they hold.

    last.pt   everything needed to continue training (model + optimiser states, epoch,
              step, resolved config, normalisation statistics, classes; no RNG states: resume
              reseeds every step from (seed, epoch, rank, step), train/distributed.seed_step)
    model.pt  everything inference needs and nothing else: model name + kwargs + weights,
              normalisation statistics, classes, config and validation metrics

Both are plain ``torch.save`` dicts, loadable without the config files that made them.
Checkpoints belong to the models: inference (``model_from_checkpoint``) needs nothing of training.

    ckpt = load_checkpoint("runs/unet/model.pt")
    model, info = model_from_checkpoint(ckpt, "runs/unet/model.pt")   # nn.Module with its weights
    info.in_channels, info.num_classes, info.classes
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CorruptFileError, InputNotFoundError, InvalidInputError, XtrainError
from ..io import atomic_write
from .registry import create_model

FORMAT = 1
INFERENCE_KEYS = ("format", "kind", "model_name", "model_kwargs", "model_state", "config", "stats", "classes",
                  "epoch", "metrics", "xtrain_version", "parent")


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
        # weights_only=False: older last.pt files hold numpy RNG states (no longer written)
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


@dataclass(frozen=True)
class ModelInfo:
    """What a model.pt says about its input and output: (in_channels, num_classes, classes)."""

    in_channels: int  # 2.5D: the centre slice and (in_channels - 1) / 2 neighbours on each side
    num_classes: int
    classes: list[str]
    parent: dict[str, str] | None = None  # a fine-tune's parent model {"path", "sha256"}; None: trained from scratch


def model_info(ckpt: dict[str, Any], path: str | os.PathLike) -> ModelInfo:
    """The channels and classes of a checkpoint, checked for consistency (``InvalidInputError`` for an
    even channel count, ``CorruptFileError`` for class names that do not match the class count)."""
    kwargs = ckpt.get("model_kwargs", {})
    c, k = int(kwargs.get("in_channels", 1)), int(kwargs.get("num_classes", 3))
    classes = list(ckpt.get("classes") or [str(i) for i in range(k)])
    if c < 1 or c % 2 == 0:
        raise InvalidInputError(f"model '{path}' expects {c} input channels, but segment feeds a centre slice and "
                                "equal neighbours on each side (an odd count); retrain with data.slices odd")
    if len(classes) != k:
        raise CorruptFileError(f"model '{path}' predicts {k} classes but names {len(classes)} ({classes}); "
                               "it is inconsistent, export it again")
    return ModelInfo(c, k, classes, parent=_parent_record(ckpt.get("parent"), path))


def _parent_record(record: Any, path: str | os.PathLike) -> dict[str, str] | None:
    """model.pt's ``parent`` entry (the model a fine-tune started from, train/finetune.py), checked."""
    if record is None:
        return None
    if not isinstance(record, dict) or not {"path", "sha256"} <= set(record):
        raise CorruptFileError(f"model '{path}' records its parent model as {record!r}, not "
                               "{'path': ..., 'sha256': ...}; export it again")
    return {"path": str(record["path"]), "sha256": str(record["sha256"])}


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> tuple[torch.nn.Module, ModelInfo]:
    """The network of a model.pt with its weights, and its ``ModelInfo``; a state dict that does not fit
    the recorded architecture is a ``CorruptFileError`` naming the file."""
    info = model_info(ckpt, path)
    try:
        model = create_model(ckpt["model_name"], **ckpt.get("model_kwargs", {}))
        model.load_state_dict(ckpt["model_state"])
    except XtrainError:
        raise
    except Exception as exc:  # wrong keys / shapes in the state dict
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"model '{path}' does not load into a {ckpt['model_name']} network ({first}); "
                               "it is damaged or from another xtrain version, export it again") from exc
    return model, info


def state_dict_error(exc: BaseException, details: int = 3) -> str:  # TEMP: main's, until train merges main
    lines = [line.strip().rstrip(".") for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    head, rest = lines[0], lines[1:]
    more = f"; and {len(rest) - details} more" if len(rest) > details else ""
    return " ".join([head, "; ".join(rest[:details])]).strip() + more
