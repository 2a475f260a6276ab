"""Segment a whole volume blockwise: plan, run the blocks (in-process or on Ray actors), resume.

    segment("runs/unet/model.pt", "scan.zarr", "scan_labels.zarr", block=(32, 1024, 1024), workers=2)

    xtrain segment runs/unet/model.pt scan.zarr scan_labels.zarr --workers 2 --probabilities

The pieces (MONAI-style): blocks.py splits the volume, predict.py predicts one block from
blended tiles, write.py writes cores and completion markers and finishes the output.  This
module only decides *which* blocks run *where*:

* Everything the user can get wrong (paths, a corrupt model.pt, a model/volume mismatch,
  an existing OUT) is checked before anything is written.
* Blocks are rounded up to whole output shards (align_block): each block is written by
  exactly one worker, so workers never touch the same shard file.
* ``workers == 1`` without ``gpu`` runs in this process; otherwise a pool of Ray actors
  (one per GPU, or N CPU workers with ``threads`` cores each) pulls blocks from a queue,
  two in flight per actor.  Only this part knows about Ray.
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

import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from .. import runtime
from ..data.normalise import SHIFT_WARN, distribution_shift, normalised_volume
from ..data.store import StoreInfo, default_layout
from ..data.volumes import Volume, open_volume
from ..io import remove_path, writing
from ..stop import never
from ..errors import InvalidInputError, OutputExistsError, RunInterrupted, SettingsMismatchError, \
    XtrainError
from ..malloc import keep_freed_memory
from ..models.checkpoint import file_checksum, load_checkpoint, model_from_checkpoint
from .blocks import Block, align_block, block_grid
from .postprocess import CLEAN_HALO, grow, majority_filter
from .engines import network_norm, resolve
from .predict import AXES, WINDOWS, PredictionStopped, Predictor
from .write import GROUP, HDF5_SUFFIXES, JOB, MARKERS, TIFF_SUFFIXES, Markers, ZarrSink, finish, is_hdf5, is_tiff, \
    open_segmentation, read_labels_file_provenance, segmentation_attrs, work_dir, write_json

log = logging.getLogger(__name__)

# Default block per --axes (bench/segment.py, 1024^3 uint16, tiny U-Net, 2 cores).  Tiles that
# reach over a block edge are predicted by both blocks, so wider blocks waste less:
#   z:   32 x 1024 x 1024 (one shard layer, whole planes up to 1024^2): 2.19 Mvox/s, 1.1 GB peak RSS;
#        64 x 512 x 512 gave 1.43 Mvox/s.
#   zyx: the y and x passes tile the z axis too, so depth matters and the read box grows with
#        the tile in every direction: 64 x 512 x 512 0.25 Mvox/s at 1.7 GB; 128 deep is 0.46
#        Mvox/s but 2.3 GB, over the 2 GiB a CPU worker is allowed.
DEFAULT_BLOCKS = {"z": (32, 1024, 1024), "zyx": (64, 512, 512)}
# zyx on a volume of at most this many voxels: one block.  The y and x passes tile planes that
# span the volume's z (plan_tiles: one tile up to --tile voxels), so a block shallower than the
# volume recomputes those planes once per block: 250x501x501 in 64-deep blocks did the y and x
# passes 4 times.  One block of 63 M voxels peaks at about 2.2 GB (data + one pass + the sum).
ZYX_WHOLE_VOXELS = 64 * 1024 * 1024


def default_block(axes: str, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The block ``segment`` uses when none is given (see DEFAULT_BLOCKS, ZYX_WHOLE_VOXELS)."""
    if axes == "zyx" and int(np.prod(shape)) <= ZYX_WHOLE_VOXELS:
        return tuple(int(n) for n in shape)  # type: ignore[return-value]
    return DEFAULT_BLOCKS.get(axes, DEFAULT_BLOCKS["z"])
IN_FLIGHT = 2  # blocks queued per actor: one running, one ready, so no actor waits for the driver
MAX_RESTARTS = 3  # dead Ray workers replaced per run before the run fails
STOP_POLL_S = 0.2  # how often the Ray driver looks at should_stop while blocks run


@dataclass(frozen=True)
class Settings:
    """Everything that determines the output bits; recorded in job.json and checked on --resume."""

    block: tuple[int, int, int]  # after rounding up to the output shards
    tile: int
    halo: int
    axes: str
    tta: bool
    probabilities: bool
    window: str
    batch_size: int | None
    threads: int  # torch threads per worker: oneDNN results depend on it in the 7th digit
    chunks: tuple[int, int, int] | None
    shard: bool
    clean: bool = False  # 3D majority filter over the probabilities (postprocess.py)
    engine: str = "eager"  # the inference engine (engines.py): its kernels round differently


@dataclass
class Job:
    """What a worker needs to run blocks (picklable: paths and plain values)."""

    model: str
    volume: Volume
    work: str
    settings: Settings
    device: str = "cpu"


# ----------------------------------------------------------------------------- one worker


class BlockRunner:
    """Predict and write blocks: used in-process or as the body of a Ray actor."""

    def __init__(self, job: Job, should_stop: Callable[[], bool] = never):
        self.should_stop = should_stop
        self.previous_threads = torch.get_num_threads()
        torch.set_num_threads(job.settings.threads)
        keep_freed_memory()  # tiles reuse their pages instead of faulting them in (malloc.py)
        model, info = model_from_checkpoint(load_checkpoint(job.model, map_location="cpu"), job.model)
        s = job.settings
        self.predictor = Predictor(model, info.in_channels, info.num_classes, tile=s.tile, halo=s.halo, axes=s.axes,
                                   tta=s.tta, window=s.window, batch_size=s.batch_size, device=job.device,
                                   engine=s.engine)
        self.volume = job.volume
        self.clean = s.clean
        self.sink = ZarrSink(Path(job.work) / GROUP)
        self.markers = Markers(Path(job.work) / MARKERS)

    def run(self, block: Block) -> Block | None:
        """Predict, write and mark ``block``; None if ``should_stop`` abandoned it (nothing written)."""
        try:
            if self.clean:  # predict one voxel more each side: the filter's context (output block-independent)
                box = grow(block.core, CLEAN_HALO, self.volume.shape)
                probs = majority_filter(self.predictor.predict(self.volume, box, self.should_stop), box, block.core,
                                        self.volume.shape)
            else:
                probs = self.predictor.predict(self.volume, block.core, self.should_stop)  # (K, z, y, x)
        except PredictionStopped as exc:
            log.info("block %s abandoned (%s); --resume redoes it", block.name, exc)
            return None
        self.sink.write(block.core, probs)
        self.markers.mark(block)  # only after the data: a marker means the block is on disk
        return block

    def pid(self) -> int:
        """The worker process id (tests kill it to check recovery)."""
        return os.getpid()

    def close(self) -> None:
        torch.set_num_threads(self.previous_threads)


def _run_local(job: Job, todo: list[Block], done: Callable[[Block], None], should_stop: Callable[[], bool]) -> None:
    runner = BlockRunner(job, should_stop)
    try:
        for block in todo:
            if should_stop():
                return
            finished = runner.run(block)
            if finished is None:  # stopped inside the block
                return
            done(finished)
    finally:
        runner.close()


def _ray_task_cancelled() -> bool:
    """An actor's ``should_stop``: has the driver called ``ray.cancel`` on the running task?"""
    import ray

    return ray.get_runtime_context().is_canceled()


def _run_ray(job: Job, todo: list[Block], done: Callable[[Block], None], workers: int, gpu: bool,
             should_stop: Callable[[], bool], on_actors: Callable[[list[Any]], None] | None = None) -> None:
    """A pool of ``workers`` Ray actors pulling blocks; each actor writes its own blocks.

    A dead actor (``RayActorError``: its process was killed or its node lost) is replaced and
    every block it held runs again on the new one, up to ``MAX_RESTARTS`` times per run."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

    actor_cls = ray.remote(num_cpus=0 if gpu else job.settings.threads, num_gpus=1 if gpu else 0)(BlockRunner)
    actors = [actor_cls.remote(job, _ray_task_cancelled) for _ in range(min(workers, len(todo)))]
    if on_actors is not None:
        on_actors(actors)
    queue = deque(todo)
    pending: dict[Any, tuple[Any, Block]] = {}
    restarts = 0

    def submit(actor: Any) -> None:
        if queue and not should_stop():
            block = queue.popleft()
            pending[actor.run.remote(block)] = (actor, block)

    try:
        for actor in actors:
            for _ in range(IN_FLIGHT):
                submit(actor)
        cancelled = False
        while pending:
            if not cancelled and should_stop():  # abandon the blocks in flight (see the module docstring)
                for ref in pending:
                    ray.cancel(ref)
                cancelled = True
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=STOP_POLL_S)
            if not ready:
                continue
            actor, block = pending.pop(ready[0])
            try:
                finished = ray.get(ready[0])
            except TaskCancelledError:  # cancelled before it started, or while it ran
                continue
            except RayTaskError as exc:  # a worker's XtrainError is the user's error: re-raise it as is
                if isinstance(exc.cause, XtrainError):
                    raise exc.cause from None
                raise
            except RayActorError as exc:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise RuntimeError(f"{restarts} segmentation workers died (last: {exc}); giving up; "
                                       "--resume continues from the finished blocks") from exc
                lost = [block] + [b for ref, (a, b) in list(pending.items()) if a is actor]
                for ref in [ref for ref, (a, _) in pending.items() if a is actor]:
                    del pending[ref]
                log.warning("a segmentation worker died (%s); running its %d block(s) on a new one",
                            type(exc).__name__, len(lost))
                actors.remove(actor)
                actor = actor_cls.remote(job, _ray_task_cancelled)
                actors.append(actor)
                if on_actors is not None:
                    on_actors(actors)
                queue.extendleft(reversed(lost))
                for _ in range(IN_FLIGHT):
                    submit(actor)
                continue
            if finished is None:  # stopped inside the block
                continue
            submit(actor)
            done(block)
    finally:
        for actor in actors:
            ray.kill(actor)


# ----------------------------------------------------------------------------- the command


def _check_args(out: Path, block, tile: int, halo: int, axes: str, window: str, workers: int | None,
                probabilities: bool, batch_size: int | None, threads: int | None) -> None:
    if out.suffix.lower() not in (".zarr", *TIFF_SUFFIXES, *HDF5_SUFFIXES):
        raise InvalidInputError(f"output '{out}' must end in .zarr (OME-Zarr), .tif/.tiff (ImageJ TIFF) or "
                                ".h5/.hdf5/.nxs (NeXus HDF5)")
    if probabilities and (is_tiff(out) or is_hdf5(out)):
        raise InvalidInputError(f"--probabilities needs a .zarr output (a TIFF or HDF5 file holds labels only); "
                                f"use e.g. '{out.with_suffix('.zarr')}'")
    if len(block) != 3 or min(block) < 1:
        raise InvalidInputError(f"block {block} must be three positive sizes Z,Y,X, e.g. 64,512,512")
    if tile < 8:
        raise InvalidInputError(f"tile {tile} is too small; use at least 8 (default 256)")
    if not 0 <= 2 * halo < tile:
        raise InvalidInputError(f"halo {halo} must be >= 0 and less than half the tile ({tile}); e.g. --halo 16")
    if axes not in AXES:
        raise InvalidInputError(f"axes '{axes}' is not one of {', '.join(AXES)}")
    if window not in WINDOWS:
        raise InvalidInputError(f"window '{window}' is not one of {', '.join(WINDOWS)}")
    for name, value in (("workers", workers), ("batch size", batch_size), ("threads", threads)):
        if value is not None and value < 1:
            raise InvalidInputError(f"{name} {value} must be at least 1")


def finished_record(out: Path) -> dict[str, Any]:
    """What a finished OUT was made from, in ``job.json``'s terms (volume, shape, model, settings)."""
    if is_tiff(out) or is_hdf5(out):
        provenance, shape = read_labels_file_provenance(out)
        info = provenance.get("xtrain", {})
    else:
        store = open_segmentation(out)
        info = dict(store.attrs).get("xtrain", {})
        shape = list(store.labels.shape)
    source = info.get("source", {})
    return {"volume": source.get("volume"), "shape": shape, "model_sha256": source.get("model_sha256"),
            "settings": source.get("settings")}


def _prepare_output(out: Path, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """Check OUT and its work folder; returns (work folder, whether to continue it)."""
    if not out.parent.is_dir():
        raise InvalidInputError(f"output folder '{out.parent}' does not exist; create it first")
    work = work_dir(out)
    if out.exists() and resume and not overwrite and not work.exists():
        return work, False  # finished: segment() checks the settings and reports "already complete"
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output '{out}' already exists; pass --overwrite to replace it or choose another path")
    if work.exists():
        if resume:
            return work, True
        if not overwrite:
            raise OutputExistsError(f"an interrupted run left '{work}'; pass --resume to continue it or --overwrite "
                                    "to start over")
    elif resume:
        log.info("nothing to resume for '%s'; starting from the beginning", out)
    return work, False


def _ray_workers(workers: int | None, gpu: bool) -> tuple[int, int]:
    """(workers, cpus of the connected Ray cluster)."""
    import ray

    resources = ray.cluster_resources()
    if gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise InvalidInputError("--gpu was given but the Ray cluster has no GPUs; drop --gpu or run on a GPU node")
        workers = workers or gpus
    return int(workers or 1), int(resources.get("CPU", 1))


def _uses_ray(workers: int | None, gpu: bool) -> bool:
    """Ray workers for more than one worker, or one per GPU of the cluster (--gpu without --workers)."""
    return (workers or 1) > 1 or (gpu and workers is None)


def _engine_for(engine: str, previous: dict[str, Any] | None, device: str, norm: str | None) -> str:
    """The concrete engine (``engines.resolve``): with ``auto``, a resumed run keeps the recorded one
    (like the threads: the same bits); a run recorded before engines existed ran eager."""
    auto = engine == "auto"
    recorded = (previous or {}).get("settings")
    if isinstance(recorded, dict):
        recorded.setdefault("engine", "eager")
        if auto:
            engine = recorded["engine"]
    chosen = resolve(engine, device, norm)
    log.info("engine: %s%s", chosen, " (auto, as recorded)" if auto and isinstance(recorded, dict) else
             " (auto)" if auto else "")
    return chosen


def segment(
    model: str | os.PathLike,
    volume: str | os.PathLike,
    out: str | os.PathLike,
    *,
    block: tuple[int, int, int] | None = None,
    tile: int = 512,
    halo: int = 16,
    axes: str = "z",
    tta: bool = False,
    probabilities: bool = False,
    workers: int | None = None,
    gpu: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    window: str = "gaussian",
    batch_size: int | None = None,
    threads: int | None = None,
    chunks: tuple[int, int, int] | None = None,
    shard: bool = True,
    on_block: Callable[[Block], None] | None = None,
    dataset: str | None = None,
    channel: int | None = None,
    time: int | None = None,
    mask: str | os.PathLike | None = None,
    normalisation: str = "auto",
    should_stop: Callable[[], bool] = never,
    on_actors: Callable[[list[Any]], None] | None = None,
    clean: bool = False,
    engine: str = "eager",
) -> Path:
    """Segment ``volume`` (store or TIFF stack) with ``model`` (model.pt) into ``out`` (.zarr / .tif / .h5).

    The output formats are described in ``write.py``: an OME-Zarr image with a ``prediction``
    label image (and the input image, copied, so napari shows both), an ImageJ TIFF, or NeXus HDF5.

    ``block``: the unit of work and memory (default ``default_block(axes, shape)``), rounded up to
    whole output shards.  ``tile``/``halo``: 2D tile edge and half the overlap of adjacent tiles.  ``threads``:
    torch threads per worker (default: all cores in-process, cores / workers on Ray).
    ``chunks``/``shard``: output layout as ``default_layout``.  ``on_block(block)`` is called
    after each finished block (progress hooks; tests raise from it to simulate a crash).
    ``dataset``/``channel``/``time``: which volume of the input (``xtrain.data.volumes.open_volume``);
    ``mask``: a volume of the same shape, non-zero = sample; ``normalisation``: auto, train, own or peaks
    (``xtrain.data.normalise.choose_mapping``; recorded in the output's attributes).
    ``on_actors(actors)``: the Ray worker actors, whenever the pool changes (tests).
    ``clean``: a 3D majority filter over the probabilities (postprocess.py); --probabilities
    then writes the filtered ones.  ``engine``: the inference engine (``xtrain.infer.engines``;
    ``auto``: the fastest that keeps eager's labels, else eager; on ``resume`` the recorded one).
    ``gpu`` with ``workers=1`` runs in this process on the first GPU, without Ray.

    Raises ``RunInterrupted`` once ``should_stop()`` is true (after the blocks in flight are
    written; ``resume=True`` continues), ``SettingsMismatchError`` for ``resume`` of an
    output made with other settings, ``DiskFullError`` when OUT's file system is full.
    ``resume`` of a finished OUT with the same settings returns OUT at once.  Uses the
    connected Ray (workers > 1, or gpu without workers) or starts one and stops it before returning.
    """
    out = Path(out)
    use_ray = _uses_ray(workers, gpu)
    with writing(out, "the segmentation"), (runtime.ray_session() if use_ray else contextlib.nullcontext()):
        return _segment(model, volume, out, block, tile, halo, axes, tta, probabilities, workers, gpu, resume,
                        overwrite, window, batch_size, threads, chunks, shard, on_block, should_stop, on_actors,
                        dataset=dataset, channel=channel, time=time, mask=mask, normalisation=normalisation,
                        clean=clean, engine=engine)


def _segment(model, volume, out: Path, block, tile, halo, axes, tta, probabilities, workers, gpu, resume, overwrite,
             window, batch_size, threads, chunks, shard, on_block, should_stop, on_actors, *, dataset, channel, time,
             mask, normalisation, clean, engine="eager") -> Path:
    given = tuple(int(b) for b in block) if block else None
    _check_args(out, given or (1, 1, 1), tile, halo, axes, window, workers, probabilities, batch_size, threads)
    work, continuing = _prepare_output(out, resume, overwrite)
    job_file = work / JOB
    previous = json.loads(job_file.read_text()) if continuing and job_file.exists() else None
    complete = resume and not overwrite and out.exists() and not continuing
    if complete:
        previous = finished_record(out)

    # the model and the volume: read and checked before anything is written
    ckpt = load_checkpoint(model)
    network, info = model_from_checkpoint(ckpt, model)
    num_classes, classes = info.num_classes, info.classes
    train_stats = ckpt.get("stats") or {}
    vol = normalised_volume(open_volume(volume, dataset=dataset, channel=channel, time=time), train_stats=train_stats,
                            mode=normalisation, mask=open_volume(mask) if mask is not None else None,
                            stats=previous.get("stats") if previous else None)
    block = given or default_block(axes, vol.shape)
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

    use_ray = _uses_ray(workers, gpu)
    if gpu and not use_ray and not torch.cuda.is_available():
        raise InvalidInputError("--gpu was given but torch sees no CUDA device; drop --gpu or run on a GPU node")
    engine = _engine_for(engine, previous, "cuda" if gpu else "cpu", network_norm(network))
    cpus = os.cpu_count() or 1
    if use_ray:
        workers, cpus = _ray_workers(workers, gpu)
    workers = workers or 1
    if threads is None and previous:
        threads = previous["settings"]["threads"]  # resume with the recorded threads: same bits
    threads = threads or (torch.get_num_threads() if not use_ray else max(1, cpus // workers))

    layout = default_layout(vol.shape, chunks, shard)
    aligned = align_block(block, layout.shards or layout.chunks, vol.shape)
    if aligned != tuple(min(b, n) for b, n in zip(block, vol.shape)):
        log.info("block %s rounded up to %s: whole output shards %s, so no two workers write one shard",
                 ",".join(map(str, block)), ",".join(map(str, aligned)), ",".join(map(str, layout.shards or layout.chunks)))
    settings = Settings(aligned, tile, halo, axes, tta, probabilities, window, batch_size, threads,
                        tuple(layout.chunks), shard, clean, engine)
    record = {"kind": vol.kind, "volume": vol.spec, "shape": list(vol.shape), "model_sha256": file_checksum(model),
              "settings": json.loads(json.dumps(asdict(settings))), "stats": vol.stats,
              "normalisation": vol.mapping}
    if previous:
        for key in ("volume", "shape", "model_sha256", "settings"):
            if previous.get(key) == record[key]:
                continue
            if key == "settings" and isinstance(previous.get(key), dict):
                names = [k for k in record[key] if previous[key].get(k) != record[key][k]]
                what = "; ".join(f"{k} was {previous[key].get(k)!r}, now {record[key][k]!r}" for k in names)
            else:
                what = f"{key} was {previous.get(key)!r}, now {record[key]!r}"
            state = "finished output" if complete else "interrupted run"
            raise SettingsMismatchError(f"cannot resume the {state} '{out}' with other settings: {what}; rerun "
                                        "with the same arguments, or use --overwrite or another output")
        if complete:
            log.info("already complete: '%s' was made from this volume and model with the same settings", out)
            return out

    blocks = block_grid(vol.shape, aligned)
    if not previous:  # fresh start (or an unusable leftover with --overwrite)
        if work.exists():
            remove_path(work)
        work.mkdir()
        info = StoreInfo(classes=classes, voxel_size_nm=vol.voxel_size_nm, stats=vol.stats, source={
            "kind": "segmentation", "volume": vol.spec, "volume_kind": vol.kind, "model": str(Path(model).resolve()),
            "model_name": ckpt["model_name"], "model_sha256": record["model_sha256"],
            "model_config": ckpt.get("config"), "model_stats": train_stats, "distribution_shift": shift,
            "normalisation": vol.mapping, "volume_provenance": vol.provenance,
            "settings": record["settings"], "xtrain_version": __version__,
        })
        attrs = json.loads(json.dumps(segmentation_attrs(out.stem, info.to_dict(), vol.voxel_size_nm), default=str))
        image_dtype = None if is_tiff(out) or is_hdf5(out) else vol.raw_dtype.name  # a .zarr output holds the image too
        ZarrSink.create(work / GROUP, vol.shape, num_classes, layout, probabilities, attrs, image_dtype)
        write_json(job_file, record)

    finished = Markers(work / MARKERS).done()
    todo = [b for b in blocks if b.name not in finished]
    total = int(np.prod(vol.shape))
    log.info("segmenting %s %s with %s: %d blocks of %s (%d done), %s", "x".join(map(str, vol.shape)), vol.raw_dtype,
             ckpt["model_name"], len(blocks), ",".join(map(str, aligned)), len(blocks) - len(todo),
             f"{workers} Ray workers x {threads} threads" if use_ray else f"in-process, {threads} threads")
    job = Job(str(Path(model).resolve()), vol, str(work), settings, "cuda" if gpu else "cpu")
    with tqdm(total=total, initial=total - sum(b.voxels for b in todo), desc=f"segment {out.name}", unit="vox",
              unit_scale=True, disable=None, smoothing=0.1) as bar:

        def done(b: Block) -> None:
            bar.update(b.voxels)
            if on_block is not None:
                on_block(b)

        if use_ray:
            _run_ray(job, todo, done, workers, gpu, should_stop, on_actors)
        else:
            _run_local(job, todo, done, should_stop)

    if should_stop():
        left = len(blocks) - len(Markers(work / MARKERS).done())
        if left:
            raise RunInterrupted(f"segmentation of '{out}' stopped with {left} of {len(blocks)} blocks to do; "
                                 "rerun the same command with --resume to finish it")
    finish(work, out, slab=layout.slab, volume=vol, layout=layout)
    log.info("wrote %s", out)
    return out
