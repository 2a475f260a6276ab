"""Fine-tune a model.pt on sparse labels in this process: the interactive round's one-process path (no Ray).

    new = finetune("scan-labels.zarr", "run/model.pt", "round-1", progress=bar, should_stop=stop.is_set)

Why not ``xtrain train``: a Ray Train start-up costs more than a round's training on 2 CPU cores (issue 23
section 3, ``bench/round_speed.py``), and today's ``fit`` validates on a z-slab of dense labels while a
labels store painted in napari is sparse everywhere (``IGNORE`` outside the painted planes).  So this is the
plain loop: the model's own network, optimiser settings and loss (``create_loss``, which skips ``IGNORE``),
patches drawn only from the planes that hold labels, and no validation (the painted voxels are all there is).

Patches: a plane normal to one of the axes the model was trained on (``data.axis``: z, or z/y/x for "any")
that holds labels, chosen in proportion to its labelled voxels; a P x P window (``data.patch``) around one
of its labelled pixels; 2.5D channels and windows past the border mirrored as the training sampler does
(``xtrain.geometry.reflect``); flips and quarter turns as ``data.augment`` says.  The image is normalised the
way ``segment`` will normalise it for this model (``normalised_volume`` with the model's statistics), so the
fine-tuned model sees at predict time what it saw here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import config_from_dict
from ..data.labels import AXES, IGNORE, LabelCensus, census
from ..data.normalise import normalised_volume
from ..data.store import open_store
from ..data.volumes import open_volume
from ..errors import InvalidInputError, RunInterrupted
from ..geometry import reflect
from ..models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ..provenance import file_sha256, now, provenance
from ..stop import never
from ..train.losses import create_loss

log = logging.getLogger(__name__)

STEPS = 60  # optimiser steps of one round, batches of BATCH patches (time: bench/round_speed.py)
BATCH = 8
MODEL = "model.pt"


@dataclass
class Plane:
    """One labelled plane: normalised image (C, U, V) float32, labels (U, V) uint8, its labelled pixels."""

    axis: str
    index: int
    image: np.ndarray
    labels: np.ndarray
    labelled: np.ndarray  # (n, 2) int: (u, v) of the labelled pixels


def training_planes(store, vol, axes: tuple[str, ...], slices: int) -> list[Plane]:
    """Every plane normal to one of ``axes`` holding a label in ``store`` (an open ``Store``), with the 2.5D
    stack of ``slices`` planes of ``vol`` (a normalised ``Volume``) around it, mirrored at the borders."""
    counts = (LabelCensus.from_dict(store.info.labels) if store.info.labels else census(store.labels[:])).per_plane
    h, out = slices // 2, []
    for axis in axes:
        d = AXES.index(axis)
        for i in (i for i, n in enumerate(counts[axis]) if n):
            box = [(0, n) for n in vol.shape]
            lo, hi = max(0, i - h), min(vol.shape[d], i + h + 1)
            box[d] = (lo, hi)
            stack = np.moveaxis(vol.read(tuple(box)), d, 0)
            stack = stack[reflect(np.arange(i - h, i + h + 1), 0, vol.shape[d]) - lo]
            sl = [slice(None)] * 3
            sl[d] = i
            labels = np.asarray(store.labels[tuple(sl)])
            out.append(Plane(axis, i, np.ascontiguousarray(stack, np.float32), labels,
                             np.argwhere(labels != IGNORE)))
    if not out:
        raise InvalidInputError(f"labels store '{store.path}' holds no labelled voxel on a plane normal to "
                                f"{'/'.join(axes)}: paint some, save, then fine-tune")
    return out


def draw_batch(planes: list[Plane], rng: np.random.Generator, batch: int, patch: int, flips: bool, rot90: bool):
    """``batch`` patches: image (B, C, P, P) float32 and labels (B, P, P) int64 tensors (see the module doc)."""
    weights = np.array([len(p.labelled) for p in planes], np.float64)
    images, labels = [], []
    for k in rng.choice(len(planes), size=batch, p=weights / weights.sum()):
        p = planes[k]
        u, v = p.labelled[rng.integers(len(p.labelled))]
        # a window holding the anchor pixel anywhere inside it, mirrored where it crosses the border
        rows = reflect(np.arange(patch) + u - rng.integers(patch), 0, p.labels.shape[0])
        cols = reflect(np.arange(patch) + v - rng.integers(patch), 0, p.labels.shape[1])
        img, lab = p.image[:, rows][:, :, cols], p.labels[rows][:, cols]
        if flips and rng.random() < 0.5:
            img, lab = img[:, :, ::-1], lab[:, ::-1]
        if flips and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[::-1]
        if rot90:
            q = int(rng.integers(4))
            img, lab = np.rot90(img, q, axes=(1, 2)), np.rot90(lab, q)
        images.append(np.ascontiguousarray(img))
        labels.append(np.ascontiguousarray(lab, np.int64))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def finetune(store: str | os.PathLike, model: str | os.PathLike, run_dir: str | os.PathLike,
             progress: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] = never, *,
             steps: int = STEPS, batch: int = BATCH, lr: float | None = None, seed: int = 0) -> Path:
    """Fine-tune ``model`` (a model.pt) on the labels of ``store`` (an xtrain store: image and sparse labels,
    ``IGNORE`` = unlabelled) for ``steps`` Adam steps of ``batch`` patches; returns ``run_dir/model.pt``.

    ``lr``: the model's ``optim.lr`` when None.  ``progress(step, steps)`` after every step.  Raises
    ``RunInterrupted`` once ``should_stop()`` (nothing is written), ``InvalidInputError`` when the store's
    classes differ from the model's or it holds no labels, and what ``load_checkpoint`` / ``open_store`` raise.
    The new model.pt is the old one with the new weights and a ``finetune`` record (source model and its
    sha256, labels store, steps, lr, the last loss); it is written atomically."""
    t0, started = time.perf_counter(), now()
    ckpt = load_checkpoint(model)
    net, info = model_from_checkpoint(ckpt, model)
    cfg = config_from_dict(ckpt.get("config") or {})
    labels = open_store(store)
    if labels.labels is None or list(labels.info.classes) != info.classes:
        raise InvalidInputError(f"labels store '{store}' has classes {labels.info.classes or 'none'}, the model "
                                f"'{model}' predicts {info.classes}: save labels of the model's classes")
    vol = normalised_volume(open_volume(store), train_stats=ckpt.get("stats") or {})
    axes = AXES if cfg.data.axis == "any" else (cfg.data.axis,)
    planes = training_planes(labels, vol, axes, info.in_channels)
    rng, lr = np.random.default_rng(seed), float(lr if lr is not None else cfg.optim.lr)
    torch.manual_seed(seed)
    segmenter = net.generator if hasattr(net, "generator") and hasattr(net, "discriminator") else net
    opt = torch.optim.Adam(segmenter.parameters(), lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                           weight_decay=cfg.optim.weight_decay)
    loss_fn = create_loss(cfg.loss.name, class_weights=cfg.loss.class_weights)
    segmenter.train()
    loss = math.nan
    for step in range(steps):
        if should_stop():
            raise RunInterrupted(f"fine-tuning stopped at step {step} of {steps}; nothing was written")
        image, target = draw_batch(planes, rng, batch, cfg.data.patch, cfg.data.augment.flips, cfg.data.augment.rot90)
        opt.zero_grad(set_to_none=True)
        value = loss_fn(segmenter(image), target)
        value.backward()
        opt.step()
        loss = float(value.detach())
        if progress is not None:
            progress(step + 1, steps)
    out = Path(run_dir) / MODEL
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    record = {"from": str(model), "from_sha256": file_sha256(model), "labels": str(store), "steps": steps,
              "batch": batch, "lr": lr, "seed": seed, "last_loss": loss,
              "planes": {a: [p.index for p in planes if p.axis == a] for a in axes}}
    # the parent's record stays as "previous": this model was made here, from the painted store and the parent
    made = provenance(started, inputs={"labels": store}, models={"parent": model}, previous=ckpt.get("provenance"))
    save_checkpoint({**ckpt, "model_state": net.state_dict(), "finetune": record, "provenance": made}, out)
    log.info("fine-tuned %s on %d labelled planes of %s: %d steps of %d, last loss %.4f, %.1f s -> %s", model,
             len(planes), store, steps, batch, loss, time.perf_counter() - t0, out)
    return out
