"""Checkpoints: one dict of states, written atomically, and the network they hold.

    last.pt   everything needed to continue training (model + optimiser states, epoch,
              step, resolved config, normalisation statistics, classes)
    model.pt  everything inference needs and nothing else: model name + kwargs + weights,
              normalisation statistics, classes, config, validation metrics and the
              inference settings the model is meant to be run with (``validated_inference``)

Both hold ``provenance``: the record of the training run (``xtrain.provenance.provenance``: the
command line, version and commit, host, start and end, the training store's sha256).

Both are plain ``torch.save`` dicts of tensors and plain values, loadable without the config
files that made them, and always loaded with ``torch.load(weights_only=True)``: a model file
shared between users cannot run code (a pickle payload is refused naming the file, before
anything in it runs).  No RNG states are stored: resume reseeds every step from (seed, epoch,
rank, step) (``train.distributed.seed_step``), so the numpy / Python states earlier versions saved were never
read back.  Those older last.pt files still load: the numpy array pieces of their RNG states are
allow-listed for the load (``_legacy_safe_globals``; rebuilding an array runs no code).
Checkpoints belong to the models: inference (``model_from_checkpoint``) needs nothing of training.

    ckpt = load_checkpoint("runs/unet/model.pt")
    model, info = model_from_checkpoint(ckpt, "runs/unet/model.pt")   # nn.Module with its weights
    info.in_channels, info.num_classes, info.classes
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import CorruptFileError, InputNotFoundError, InvalidInputError, XtrainError
from ..io import atomic_write
from .registry import create_model

FORMAT = 1
INFERENCE_KEYS = ("format", "kind", "model_name", "model_kwargs", "model_state", "config", "stats", "classes",
                  "epoch", "metrics", "xtrain_version", "inference", "voxel_size_nm", "provenance", "parent")
# ``segment`` settings a model is run with unless the user says otherwise (validated_inference)
INFERENCE_ALL_AXES = {"axes": "zyx", "clean": True}
INFERENCE_Z = {"axes": "z", "clean": False}


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


def validated_inference(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``segment`` settings ({"axes", "clean"}) a model trained with the resolved ``config`` is run with.

    The rule: a model trained on planes of all three axes (``data.axis: any``) gets ``--axes zyx
    --clean``; any other (z, y or x planes only) gets ``--axes z`` without clean-up, today's
    default.  Why: the y and x passes of ``zyx`` feed the network planes of the kind it only saw
    when it was trained on every axis, and on the real volume that model (``configs/soc_unet_cpu.yaml``)
    reached mean Dice 0.9932 and a TPB ratio of 0.963 with ``zyx --clean``, against 0.9911 and
    1.215 with ``z`` (docs/measurements.md, "The CPU recipe for the real volume": ``bench/quality.py``).
    A z-trained model has never seen a y or x plane, so ``z`` stays its setting.  None for a
    checkpoint without a config (``segment`` then uses its own default, z without clean-up).
    """
    if not config:
        return None
    axis = (config.get("data") or {}).get("axis", "z")
    return dict(INFERENCE_ALL_AXES if axis == "any" else INFERENCE_Z)


def inference_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model.pt subset of a training checkpoint, with the inference settings its config implies
    (``validated_inference``)."""
    out = {k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt}
    out["kind"] = "model"
    inference = validated_inference(ckpt.get("config"))
    if inference is not None:
        out["inference"] = inference
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


def base_checkpoint(**fields: Any) -> dict[str, Any]:
    return {"format": FORMAT, "kind": "train", "xtrain_version": __version__, **fields}


@dataclass(frozen=True)
class ModelInfo:
    """What a model.pt says about its input and output: (in_channels, num_classes, classes)."""

    in_channels: int  # 2.5D: the centre slice and (in_channels - 1) / 2 neighbours on each side
    num_classes: int
    classes: list[str]
    inference: dict[str, Any] | None = None  # the settings it is run with ({"axes", "clean"}); None: not recorded
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
    return ModelInfo(c, k, classes, _inference_record(ckpt.get("inference"), path),
                     _parent_record(ckpt.get("parent"), path))


def _parent_record(record: Any, path: str | os.PathLike) -> dict[str, str] | None:
    """model.pt's ``parent`` entry (the model a fine-tune started from, train/finetune.py), checked."""
    if record is None:
        return None
    if not isinstance(record, dict) or not {"path", "sha256"} <= set(record):
        raise CorruptFileError(f"model '{path}' records its parent model as {record!r}, not "
                               "{'path': ..., 'sha256': ...}; export it again")
    return {"path": str(record["path"]), "sha256": str(record["sha256"])}


def _inference_record(record: Any, path: str | os.PathLike) -> dict[str, Any] | None:
    """model.pt's ``inference`` entry, checked: {"axes": "z" | "zyx", "clean": bool}, or None."""
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("axes") not in ("z", "zyx") \
            or not isinstance(record.get("clean"), bool):
        raise CorruptFileError(f"model '{path}' records inference settings {record!r}, not "
                               "{'axes': 'z' or 'zyx', 'clean': true or false}; export it again")
    return {"axes": record["axes"], "clean": record["clean"]}


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
        raise CorruptFileError(f"model '{path}' does not load into a {ckpt['model_name']} network "
                               f"({state_dict_error(exc)}); it is damaged or from another xtrain version, export "
                               "it again") from exc
    return model, info


def state_dict_error(exc: BaseException, details: int = 3) -> str:
    """torch's ``load_state_dict`` error on one line, keeping what differs (the first ``details``):
    "Error(s) in loading state_dict for UNet: size mismatch for stem.0.weight: copying a param with
    shape torch.Size([8, 1, 3, 3]) from checkpoint, the shape in current model is torch.Size([16, 1,
    3, 3]); ...; and 52 more"."""
    lines = [line.strip().rstrip(".") for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    head, rest = lines[0], lines[1:]
    more = f"; and {len(rest) - details} more" if len(rest) > details else ""
    return " ".join([head, "; ".join(rest[:details])]).strip() + more
