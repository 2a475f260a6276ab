"""Fine-tuning: start a run from a trained model's weights (``train.init``, ``xtrain train --init MODEL.pt``).

    parent = load_parent(cfg, new_kwargs, classes)    # None without train.init; refuses a model that does not fit
    init_weights(model, parent, cfg.model.name)       # build_run, on every rank, only on a fresh start

    cfg = parent_config("runs/dense/model.pt", "painted.zarr", ["train.epochs=2"])   # the parent's own recipe
    fit(cfg, run_dir, WorkerContext(should_stop=stop))                               # in-process, no Ray

What a fine-tune takes from the parent and what it does not:

* the weights: all of them (a U-Net; a Pix2Pix's generator and discriminator), or a U-Net parent's
  weights as the generator of a new Pix2Pix (its discriminator starts from scratch), or a Pix2Pix
  parent's generator as a new U-Net.  The parent's ``model_state`` is what it was validated with:
  a model.pt holds the EMA weights when the parent trained with ``train.ema_decay``.
* not its normalisation: the patches are normalised with the new store's statistics (the new scan's
  p0.5 / p99.5), as any run's are, and model.pt records those;
* not its optimiser state or learning-rate schedule: the fine-tune's own ``optim.lr``,
  ``optim.schedule`` and ``optim.warmup`` start at step 0 (a fresh Adam; torchvision's
  references/classification/train.py ``--weights`` does the same), so a fine-tune recipe gives its
  own (smaller) lr and warm-up: configs/soc_unet_finetune_cpu.yaml.

Checked before anything is written (``preflight``) and again on every worker (``build_run``): the
architecture (model name and every constructor argument, ``in_channels`` = ``data.slices`` included)
and the classes (names and order) must equal the new run's; otherwise ``ModelMismatchError`` names
what differs, with torch's "size mismatch for ..." detail where the weights do not load.

The parent's path and sha256 go into last.pt and model.pt as ``parent`` ({"path", "sha256"}; the shape
of a provenance record's ``models`` entry); ``model_info`` shows it.  On ``--resume`` the weights come
from last.pt and ``parent`` is carried over from it: the init is not applied again.  ``train.init`` is an
ordinary setting (a resume with another ``train.init`` is refused: it changes what the run computes),
and a ``xtrain tune`` sweep with it starts every trial from the same weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import Config, apply_overrides, config_from_dict
from ..errors import ModelMismatchError
from ..models.checkpoint import load_checkpoint, state_dict_error
from ..provenance import file_sha256

GENERATOR = "generator."  # a Pix2Pix's generator weights in its state dict (models/pix2pix.py)


@dataclass(frozen=True)
class Parent:
    """The model a fine-tune starts from: where it is, its sha256, and what it holds."""

    path: Path  # absolute
    sha256: str
    model_name: str
    model_kwargs: dict[str, Any]
    classes: list[str]
    state: dict[str, Any]  # its model_state (a model.pt: the validated, EMA when on, weights)

    def record(self) -> dict[str, str]:
        """What last.pt and model.pt keep as ``parent``."""
        return {"path": str(self.path), "sha256": self.sha256}


def parent_config(init: str | os.PathLike, store: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """A fine-tune of the model.pt ``init`` on ``store``: the parent's own resolved config (so its architecture
    and patch settings, which the checks require to match) with ``data.store``, ``train.init`` set and the
    parent's z-slabs dropped (``data.train_z`` / ``data.val_z`` belong to the parent's store; a sparse store
    follows the few-label rule instead), then ``overrides`` ("key=value", as ``--set``).  For a one-process
    round (napari): ``fit(parent_config(...), run_dir, WorkerContext(...))``; the recipe's epochs and lr are
    the parent's unless overridden (e.g. ``train.epochs``, ``data.samples_per_epoch``, ``optim.lr``)."""
    ckpt = load_checkpoint(init)
    values = json.loads(json.dumps(ckpt.get("config") or {}))  # a copy; a config-less parent: the defaults
    values.pop("tune", None)
    data = values.setdefault("data", {})
    data.update(store=str(Path(store).resolve()), train_z=None, val_z=None)
    if data.get("val_mode") == "slab":  # a slab of dense labels: the few-label rule validates a sparse store
        data["val_mode"] = "patches"
    train = values.setdefault("train", {})
    train.update(init=str(Path(init).resolve()))
    if train.get("select") == "dice+tpb":
        train["select"] = "dice"
    return config_from_dict(apply_overrides(values, list(overrides)))


def load_parent(cfg: Config, new_kwargs: dict[str, Any], classes: list[str]) -> Parent | None:
    """The checked ``train.init`` model, or None when the run starts from scratch.

    ``new_kwargs``: the new model's resolved constructor arguments (``resolved_model_kwargs``);
    ``classes``: the new store's class names.  Raises ``InputNotFoundError`` / ``CorruptFileError`` for
    a file that is missing or no checkpoint, ``ModelMismatchError`` for another architecture or classes."""
    if not cfg.train.init:
        return None
    path = Path(cfg.train.init).expanduser().resolve()
    ckpt = load_checkpoint(path)  # weights_only: a model file runs no code
    parent = Parent(path, file_sha256(path), str(ckpt["model_name"]), dict(ckpt.get("model_kwargs") or {}),
                    list(ckpt.get("classes") or []), ckpt["model_state"])
    check_parent(parent, cfg.model.name, new_kwargs, classes)
    return parent


def check_parent(parent: Parent, new_name: str, new_kwargs: dict[str, Any], classes: list[str]) -> None:
    """Refuse (``ModelMismatchError``, one line naming what differs) a parent that is not this run's model."""
    where = f"--init model '{parent.path}'"
    if parent.classes and parent.classes != list(classes):
        raise ModelMismatchError(f"{where} predicts classes {parent.classes} but the store has {list(classes)}; "
                                 "fine-tune a model of the same classes in the same order, or train from scratch")
    if new_name != parent.model_name and {new_name, parent.model_name} != {"unet", "pix2pix"}:
        raise ModelMismatchError(f"{where} is a {parent.model_name} and this run trains a {new_name}; set "
                                 f"model.name={parent.model_name} (only a unet and a pix2pix's generator map onto "
                                 "each other)")
    shared = [k for k in new_kwargs if k in parent.model_kwargs]
    if new_name != parent.model_name:  # unet <-> pix2pix: the generator's arguments (a UNet's) must agree
        shared = [k for k in shared if not k.startswith("disc_")]
    differ = [k for k in shared if parent.model_kwargs[k] != new_kwargs[k]]
    if differ:
        what = ", ".join(f"{k}={parent.model_kwargs[k]!r} (this run: {new_kwargs[k]!r})" for k in differ)
        fixes = [f"data.slices={parent.model_kwargs['in_channels']}"] if "in_channels" in differ else []
        fixes += ["the run's model.kwargs to the parent's"] if set(differ) - {"in_channels"} else []
        raise ModelMismatchError(f"{where} has another architecture: {what}; set {' and '.join(fixes)}, or train "
                                 "from scratch")


def _target(model: nn.Module, parent: Parent, new_name: str) -> tuple[nn.Module, dict[str, Any]]:
    """Which module of the new ``model`` takes which weights of ``parent``."""
    if new_name == parent.model_name:
        return model, parent.state
    if new_name == "pix2pix":  # a U-Net parent: the generator; the discriminator starts from scratch
        return model.generator, parent.state
    return model, {k[len(GENERATOR):]: v for k, v in parent.state.items() if k.startswith(GENERATOR)}


def init_weights(model: nn.Module, parent: Parent, new_name: str) -> str:
    """Load ``parent``'s weights into ``model`` (strict: every weight, every shape) and say into what
    (``new_name`` or "generator"); a state dict that does not fit is a ``ModelMismatchError`` with
    torch's detail (``state_dict_error``)."""
    target, state = _target(model, parent, new_name)
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelMismatchError(f"--init model '{parent.path}' does not load into this run's {new_name} "
                                 f"({state_dict_error(exc)}); set model.kwargs to the parent's, or train from "
                                 "scratch") from exc
    return "generator" if target is not model else new_name
