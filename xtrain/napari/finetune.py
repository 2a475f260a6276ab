"""Fine-tune a model.pt on sparse labels in this process: the interactive round's one-process path (no Ray).

    new = finetune("scan-labels.zarr", "run/model.pt", "round-1", progress=bar, should_stop=stop.is_set)

Why not ``xtrain train``: a Ray Train start-up costs more than a round's training on 2 CPU cores (issue 23
section 3, ``bench/round_speed.py``).  So this is the training loop of ``xtrain train --init`` without Ray:
``xtrain.train.loop.fit`` in this process, on the config ``xtrain.train.finetune.parent_config`` builds for
fine-tuning the model on the labels store (the model's own network, loss, patch size, 2.5D slices, axis and
augmentation), one epoch of ``steps`` batches.  Its sampler draws patches around the labelled voxels of the
sparse store (``xtrain.data.sampler``, ``IGNORE`` elsewhere), normalised with the store's statistics (a store
``save_painted`` wrote holds the image's, so ``segment`` normalises the volume the same way for the new model).

What the round changes in the model's recipe, and why: no weight EMA (``train.ema_decay=0``: with the
model's decay, e.g. 0.995, a 60-step round would leave model.pt mostly the old weights); a constant lr (the
old round's; a warm-up and decay over a few dozen steps would spend most of them at a fraction of the lr);
no DataLoader worker processes (no fork inside napari's threaded process).  Validation follows the few-label
rule of ``xtrain.data.label_index``: fewer than 6 painted planes (the usual round) hold nothing out and every
painted voxel trains; 6 or more hold some planes out whole (``data.val_fraction``, at least one) and validate
on them after the epoch.

RUN_DIR is a run directory as ``xtrain train`` writes it (metrics.csv, last.pt, model.pt); the round's result
is RUN_DIR/model.pt, written (atomically) only once the epoch is done.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import RunInterrupted
from ..stop import never
from ..train.finetune import parent_config
from ..train.loop import WorkerContext, fit, preflight
from ..train.run_dir import BEST, LAST

log = logging.getLogger(__name__)

STEPS = 60  # optimiser steps of one round, batches of BATCH patches (time: bench/round_speed.py)
BATCH = 8
MODEL = BEST  # the round's result: RUN_DIR/model.pt


def round_overrides(steps: int, batch: int, lr: float | None, seed: int) -> list[str]:
    """The ``--set`` overrides that make the parent's recipe one interactive round (module docstring)."""
    over = ["train.epochs=1", f"data.samples_per_epoch={steps * batch}", f"train.batch_size={batch}",
            f"train.seed={seed}", "train.workers=1", "data.loader_workers=0",
            "train.ema_decay=0",  # the parent's decay over a 60-step round would keep mostly the parent
            "optim.schedule=constant"]  # no warm-up / decay spread over a few dozen steps
    return over + ([f"optim.lr={lr}"] if lr is not None else [])


def finetune(store: str | os.PathLike, model: str | os.PathLike, run_dir: str | os.PathLike,
             progress: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] = never, *,
             steps: int = STEPS, batch: int = BATCH, lr: float | None = None, seed: int = 0) -> Path:
    """Fine-tune ``model`` (a model.pt) on the labels of ``store`` (an xtrain store: image and sparse labels,
    ``IGNORE`` = unlabelled) for ``steps`` Adam steps of ``batch`` patches; returns ``run_dir/model.pt``.

    ``lr``: the model's ``optim.lr`` when None; ``seed``: ``train.seed``.  ``progress(step, steps)`` after every
    step.  Raises ``RunInterrupted`` once ``should_stop()`` (no model.pt is written; last.pt holds the step
    reached), ``ModelMismatchError`` when the store's classes differ from the model's, ``InvalidInputError``
    when it holds no labels, ``ConfigError`` for ``steps`` / ``batch`` below 1, and what ``load_checkpoint`` /
    ``open_store`` raise.  The new model.pt is ``fit``'s: the parent's path and sha256 as ``parent``, the
    round's config (``train.init``: the parent), the store's statistics and a provenance record of this run."""
    t0, run_dir = time.perf_counter(), Path(run_dir)
    cfg = parent_config(model, store, round_overrides(steps, batch, lr, seed))
    preflight(cfg)  # bad input is one line before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    last = {"loss": math.nan}

    def on_step(done: int, losses: dict[str, float]) -> None:
        last.update(losses)
        if progress is not None:
            progress(done, steps)

    metrics = fit(cfg, run_dir, WorkerContext(should_stop=should_stop, on_step=on_step))
    if metrics.get("stopped"):
        raise RunInterrupted(f"fine-tuning stopped at step {metrics['step']} of {steps}; no {MODEL} was written "
                             f"({run_dir / LAST} holds the step reached)")
    log.info("fine-tuned %s on %s: %d steps of %d, lr %g, last loss %.4f, %.1f s -> %s", model, store, steps,
             batch, cfg.optim.lr, last["loss"], time.perf_counter() - t0, run_dir / MODEL)
    return run_dir / MODEL
