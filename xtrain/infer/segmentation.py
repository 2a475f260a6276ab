"""Segment a whole volume blockwise: options -> inputs -> plan -> output -> run -> finish.

    segment("runs/unet/model.pt", "scan.zarr", "scan_labels.zarr", SegmentOptions(workers=2))
    segment("runs/unet/model.pt", "scan.zarr", "scan_labels.zarr", block=(32, 1024, 1024))  # options by name

    xtrain segment runs/unet/model.pt scan.zarr scan_labels.zarr --workers 2 --probabilities

The pieces: ``options.py`` (what the user asks, checked), ``plan.py`` (settings, blocks with
read and write boxes, the job record: pure), ``write.py`` (the work folder, markers, the final
Zarr / TIFF / HDF5), ``runner.py`` (a block: predict, clean, write, mark; the in-process loop),
``pool.py`` (the Ray actor pool), ``predict.py`` / ``baselines.py`` (the predictors).  This module
wires them; the threshold baselines run through the same plan, runner and writer (``baselines.py``).

* Everything the user can get wrong (options, paths, a corrupt model.pt, a model/volume mismatch,
  an existing OUT) is checked before anything is written.
* Blocks are rounded up to whole output shards (``blocks.align_block``): each block is written
  by exactly one worker, so workers never touch the same shard file.
* ``axes`` and ``clean`` not given: the settings the model was validated with (model.pt's
  ``inference``, ``xtrain.models.checkpoint.validated_inference``), else z without clean-up;
  the mode and why are logged and recorded in the output (``xtrain.source.inference``).
* ``workers == 1`` without ``gpu`` runs in this process; otherwise a pool of Ray actors.
* Every block is deterministic (see predict.py) given the settings in ``job.json``,
  including the per-worker thread count, so the output is bit-identical for any number of
  workers and across ``--resume``, which reuses the recorded settings and redoes only the
  blocks without a marker.  ``--resume`` of a finished OUT with the same settings does
  nothing ("already complete"); with other settings it names the one that differs.
* ``should_stop()`` (the CLI sets it on SIGTERM / SIGUSR1) is checked between blocks and,
  inside a block, before every batch of tiles: the blocks in flight are abandoned unwritten
  (a Ray actor's through ``ray.cancel``), finished blocks keep their markers, then
  ``RunInterrupted`` (exit 3; ``--resume`` redoes the abandoned blocks).  Why not let them
  finish: one ``--axes zyx`` block of a 250x501x501 volume takes ~4 min on 2 cores, and
  Slurm's warning (``--signal=B:TERM@120``) comes 2 min before SIGKILL.
* A Ray worker that dies (kill -9, node lost) is replaced by a new actor and its blocks run
  again there (a block is written whole or redone: the output stays bit-identical).
* A full disk is one ``DiskFullError`` naming OUT; the work folder stays, ``--resume``
  continues once there is space.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..data.normalise import SHIFT_WARN, distribution_shift, normalised_volume
from ..data.store import StoreInfo
from ..data.volumes import Volume, open_volume
from ..errors import RunInterrupted
from ..io import output_lock, writing
from ..models.checkpoint import file_checksum, load_checkpoint, model_from_checkpoint
from ..stop import never
from . import pool
from .blocks import Block
from .options import SegmentOptions
from .plan import Plan, PredictorInfo, Previous, plan
from .runner import Job, ModelSource, local_resources, run_local
from .write import MARKERS, Markers, finish, previous_run, start_work, work_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hooks:
    """Callbacks of a run: ``should_stop()`` (checked between blocks and tile batches), ``on_block(block)``
    after each finished block (progress; tests raise from it to simulate a crash), ``on_actors(actors)``
    whenever the Ray pool changes (tests)."""

    should_stop: Callable[[], bool] = never
    on_block: Callable[[Block], None] | None = None
    on_actors: Callable[[list[Any]], None] | None = None


@dataclass
class Inputs:
    """What the checked inputs give the plan and the run: the predictor (how to build it in a worker,
    and what the plan needs of it), the volume it reads, and the output's ``xtrain`` attributes."""

    source: Any  # ModelSource | baselines.BaselineSource
    info: PredictorInfo
    volume: Volume  # a model's normalised view; a baseline's raw grey values
    provenance: dict[str, Any]  # StoreInfo.source, without the settings (the plan's)
    stats: dict[str, Any] = field(default_factory=dict)  # StoreInfo.stats


def segment(model: str | os.PathLike, volume: str | os.PathLike, out: str | os.PathLike,
            options: SegmentOptions | None = None, *, should_stop: Callable[[], bool] = never,
            on_block: Callable[[Block], None] | None = None, on_actors: Callable[[list[Any]], None] | None = None,
            **changes: Any) -> Path:
    """Segment ``volume`` (any input ``open_volume`` reads) with ``model`` (model.pt) into ``out``
    (.zarr OME-Zarr / .tif ImageJ / .h5 NeXus, see ``write.py``).

    ``options``: a ``SegmentOptions`` (default: all defaults); ``changes``: options by name, applied
    on top (``block=(16, 64, 64)``; a name that is no option is a ``TypeError``).  Hooks: see ``Hooks``.

    Raises ``InvalidInputError`` (and its subclasses) for bad options or inputs, before anything is
    written; ``RunInterrupted`` once ``should_stop()`` is true (``resume=True`` continues);
    ``SettingsMismatchError`` for ``resume`` of an output made with other settings; ``DiskFullError``
    when OUT's file system is full; ``LockedError`` while another process writes OUT (the lock file
    ``.OUT.lock`` beside it).  ``resume`` of a finished OUT with the same settings returns OUT
    at once.  Uses the connected Ray (workers > 1 or gpu) or starts one and stops it before returning.
    """
    options = replace(options or SegmentOptions(), **changes)
    out = Path(out)
    options.validate(out)
    # one writer per output: a second segment (or --resume) into OUT refuses naming this one's pid
    with output_lock(out, "segment"), writing(out, "the segmentation"), pool.session(options.use_ray):
        previous = previous_run(out, options.resume, options.overwrite)
        inputs = model_inputs(model, volume, options, previous)
        resources = pool.cluster_resources() if options.use_ray else local_resources()
        job = plan(inputs.volume, inputs.info, options, previous, resources)
        return execute(job, inputs, out, Hooks(should_stop, on_block, on_actors))


def model_inputs(model: str | os.PathLike, volume: str | os.PathLike, options: SegmentOptions,
                 previous: Previous | None) -> Inputs:
    """model.pt and the volume, read and checked; the volume normalised as the model needs it
    (``choose_mapping``; on ``--resume`` with the recorded statistics)."""
    ckpt = load_checkpoint(model)
    _, info = model_from_checkpoint(ckpt, model)  # the weights fit the architecture
    train_stats = ckpt.get("stats") or {}
    raw = open_volume(volume, dataset=options.dataset, channel=options.channel, time=options.time,
                      allow_missing=options.allow_missing)
    vol = normalised_volume(raw, train_stats=train_stats, mode=options.normalisation,
                            mask=open_volume(options.mask) if options.mask is not None else None,
                            stats=previous.record.get("stats") if previous else None)
    shift = _check_normalisation(vol, train_stats, model, volume)
    sha = file_checksum(model)
    predictor = PredictorInfo("model", ckpt["model_name"], info.num_classes, tuple(info.classes), sha,
                              info.in_channels // 2, info.inference)
    provenance = {
        "kind": "segmentation", "volume": vol.spec, "volume_kind": vol.kind, "model": str(Path(model).resolve()),
        "model_name": ckpt["model_name"], "model_sha256": sha, "model_config": ckpt.get("config"),
        "model_stats": train_stats, "distribution_shift": shift, "normalisation": vol.mapping,
        "volume_provenance": vol.provenance,
    }
    return Inputs(ModelSource(str(Path(model).resolve())), predictor, vol, provenance, vol.stats)


def _check_normalisation(vol: Volume, train_stats: dict[str, Any], model: Any, volume: Any) -> float | None:
    """Log the mapping chosen (a warning when uncertain) and the distance to the training data's
    intensities (a warning above ``SHIFT_WARN``); returns that distance (None: no histogram)."""
    m = vol.mapping
    log.info("normalisation: %s statistics, p0.5 %.6g -> 0, p99.5 %.6g -> 1 (%s)%s", m["mode"], m["lo"], m["hi"],
             m["reason"], f"; fill value {m['fill']} ({m['fill_fraction']:.1%} of the voxels) left out"
             if m["fill"] is not None else "")
    if m["uncertain"]:
        log.warning("volume '%s': the choice of normalisation is uncertain (%s); compare with --normalisation "
                    "train / own and check the segmentation", volume, m["reason"])
    shift = distribution_shift(train_stats, vol.stats)
    if shift is None:
        log.warning("model '%s' or volume '%s' has no intensity histogram; the check against the training data "
                    "is skipped", model, volume)
    elif shift > SHIFT_WARN:
        log.warning("volume '%s' looks unlike the training data: normalised intensity histograms differ by %.3f "
                    "(Wasserstein-1; warning above %.2f); check the segmentation", volume, shift, SHIFT_WARN)
    return shift


def output_info(job: Plan, inputs: Inputs) -> dict[str, Any]:
    """The output's ``xtrain`` attributes (``StoreInfo``): classes, voxel size, statistics and the
    provenance with the settings (and, for a model, the inference mode and why)."""
    source = {**inputs.provenance, "settings": job.record["settings"]}
    if inputs.info.kind == "model":
        source["inference"] = job.inference
    source["xtrain_version"] = __version__
    return StoreInfo(classes=list(inputs.info.classes), voxel_size_nm=inputs.volume.voxel_size_nm,
                     stats=inputs.stats, source=source).to_dict()


def execute(job: Plan, inputs: Inputs, out: Path, hooks: Hooks = Hooks()) -> Path:
    """Run a plan into ``out``: the work folder (fresh, or the one ``--resume`` continues), the blocks
    without a marker (in-process or on the Ray pool), then the final output.  Returns ``out``."""
    for note in job.notes:
        log.info("%s", note)
    if job.complete:
        log.info("already complete: '%s' was made from this volume and model with the same settings", out)
        return out
    if job.resume:
        work = work_dir(out)
    else:
        work = start_work(out, job, inputs.volume, inputs.info.num_classes, output_info(job, inputs))
    finished = Markers(work / MARKERS).done()
    todo = [b for b in job.blocks if b.name not in finished]
    _run(job, inputs, out, work, todo, hooks)
    if hooks.should_stop():
        left = len(job.blocks) - len(Markers(work / MARKERS).done())
        if left:
            raise RunInterrupted(f"segmentation of '{out}' stopped with {left} of {len(job.blocks)} blocks to do; "
                                 "rerun the same command with --resume to finish it")
    finish(work, out, slab=job.layout.slab, volume=inputs.volume, layout=job.layout)
    log.info("wrote %s", out)
    return out


def _run(job: Plan, inputs: Inputs, out: Path, work: Path, todo: list[Block], hooks: Hooks) -> None:
    """The blocks ``todo``, in-process or on Ray, with a progress bar."""
    s = job.settings
    log.info("segmenting %s %s with %s: %d blocks of %s (%d done), %s", "x".join(map(str, inputs.volume.shape)),
             inputs.volume.raw_dtype, inputs.info.name, len(job.blocks), ",".join(map(str, s.block)),
             len(job.blocks) - len(todo),
             f"{job.workers} Ray workers x {s.threads} threads" if job.use_ray else f"in-process, {s.threads} threads")
    run = Job(inputs.source, inputs.volume, str(work), s, "cuda" if job.gpu else "cpu")
    total = int(np.prod(inputs.volume.shape))
    with tqdm(total=total, initial=total - sum(b.voxels for b in todo), desc=f"segment {out.name}", unit="vox",
              unit_scale=True, disable=None, smoothing=0.1) as bar:

        def done(b: Block) -> None:
            bar.update(b.voxels)
            if hooks.on_block is not None:
                hooks.on_block(b)

        if job.use_ray:
            pool.run_pool(run, todo, done, job.workers, job.gpu, hooks.should_stop, hooks.on_actors)
        else:
            run_local(run, todo, done, hooks.should_stop)
