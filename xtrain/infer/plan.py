"""The plan of a segmentation: options + volume + predictor -> settings, blocks and the job record.

    job = plan(volume, info, options, previous=None, resources=Resources(cpus=2, gpus=0, threads=2))
    job.settings          # Settings: what the output bits depend on (block rounded to shards, threads ...)
    job.blocks            # Block(index, core = write box, read = the predictor's input box), z-major
    job.record            # what job.json holds and --resume compares
    job.notes             # what segment logs: the inference mode and why, the block rounding

Daisy's shape: a task is a list of blocks, each with a read box and a write box, planned
before anything runs.  ``plan`` is pure (no I/O, no logging, no Ray): everything it needs
(the opened volume, the model's ``PredictorInfo``, the machine's ``Resources``, an earlier run's
record) is passed in, so it is tested directly (tests/infer/test_plan.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..data.layout import Layout, default_layout
from ..errors import InvalidInputError, SettingsMismatchError
from ..geometry import Box, grow
from .blocks import Block, align_block, block_grid, input_box
from .options import SegmentOptions, Settings
from .postprocess import CLEAN_HALO
from .predict import AXES

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
DEFAULT_AXES, DEFAULT_CLEAN = "z", False  # for a model that records no validated settings
CHOSEN_WORDS = {"options": "given", "model": "the model's validated setting", "default": "xtrain's default"}
RECORD_KEYS = ("volume", "shape", "model_sha256", "settings")  # what --resume compares, in this order


def default_block(axes: str, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The block ``segment`` uses when none is given (see DEFAULT_BLOCKS, ZYX_WHOLE_VOXELS)."""
    if axes == "zyx" and int(np.prod(shape)) <= ZYX_WHOLE_VOXELS:
        return tuple(int(n) for n in shape)  # type: ignore[return-value]
    return DEFAULT_BLOCKS.get(axes, DEFAULT_BLOCKS["z"])


@dataclass(frozen=True)
class PredictorInfo:
    """What the plan needs to know of a predictor (nothing of its weights).

    ``kind``: "model" (``predict.Predictor``) or "threshold" (``baselines.ThresholdPredictor``).
    ``context``: a model's 2.5D neighbour slices on each side (in_channels // 2); a threshold
    baseline's filter reach in voxels (1 for the 3x3x3 median).  ``sha256``: model.pt's checksum
    (a baseline's: of its parameters).  ``inference``: the settings the model was validated with
    ({"axes", "clean"}, ``xtrain.models.checkpoint.validated_inference``), None when not recorded.
    """

    kind: str
    name: str
    num_classes: int
    classes: tuple[str, ...]
    sha256: str
    context: int
    inference: dict[str, Any] | None = None


@dataclass(frozen=True)
class Resources:
    """What runs the blocks: CPU cores and GPUs (of the Ray cluster when it is used), and the
    torch threads of this process (the in-process default)."""

    cpus: int
    gpus: int = 0
    threads: int = 1


@dataclass(frozen=True)
class Previous:
    """An earlier run into the same output: its job record, and whether it finished."""

    out: str
    record: dict[str, Any]
    complete: bool


@dataclass(frozen=True)
class Plan:
    """A planned segmentation (see the module docstring)."""

    settings: Settings
    layout: Layout
    blocks: tuple[Block, ...]
    record: dict[str, Any]
    workers: int
    use_ray: bool
    inference: dict[str, Any]  # {"axes", "clean", "chosen_by": {"axes": ..., "clean": ...}}
    notes: tuple[str, ...]  # what to log: the inference mode and why, the block rounding
    complete: bool = False  # a finished output with these settings: nothing to do
    resume: bool = False  # continue an interrupted run's work folder (its blocks without a marker)
    gpu: bool = False  # one GPU per Ray worker


def inference_mode(options: SegmentOptions, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The axes and clean-up to run, each from the options when given, else the model's validated
    setting, else xtrain's default (z, no clean); ``chosen_by`` says which, ``reason`` in words."""
    given = {"axes": options.axes, "clean": options.clean}
    default = {"axes": DEFAULT_AXES, "clean": DEFAULT_CLEAN}
    mode: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    for key in ("axes", "clean"):
        if given[key] is not None:
            mode[key], chosen[key] = given[key], "options"
        elif recorded is not None:
            mode[key], chosen[key] = recorded[key], "model"
        else:
            mode[key], chosen[key] = default[key], "default"
    words = f"axes {mode['axes']}, {'clean' if mode['clean'] else 'no clean'}"
    other = f"--axes {'z' if mode['axes'] == 'zyx' else 'zyx'}"
    if set(chosen.values()) == {"model"}:
        why = f"the model's validated settings; {other} or --{'no-' if mode['clean'] else ''}clean to override"
    elif set(chosen.values()) == {"default"}:
        why = "xtrain's default: the model records no validated settings"
    else:
        why = "; ".join(f"{k}: {CHOSEN_WORDS[c]}" for k, c in chosen.items())
    return {**mode, "chosen_by": chosen, "reason": f"{words} ({why})"}


def workers_and_threads(options: SegmentOptions, resources: Resources, previous: Previous | None) -> tuple[int, int]:
    """(workers, torch threads per worker): the options', else one per GPU (``gpu``) or 1; threads
    the recorded ones on --resume (same bits), else this process's (in-process) or cores / workers."""
    workers = options.workers
    if options.gpu:
        if resources.gpus < 1:
            raise InvalidInputError("--gpu was given but the Ray cluster has no GPUs; drop --gpu or run on a GPU node")
        workers = workers or resources.gpus
    workers = int(workers or 1)
    threads = options.threads
    if threads is None and previous is not None:
        threads = previous.record["settings"]["threads"]
    if threads is None:
        threads = max(1, resources.cpus // workers) if options.use_ray else resources.threads
    return workers, int(threads)


def read_box(core: Box, shape: tuple[int, int, int], settings: Settings, info: PredictorInfo) -> Box:
    """The box a block with ``core`` reads: the predictor's input box (``Predictor.input_box``,
    ``ThresholdPredictor.input_box``) of the core, grown by ``CLEAN_HALO`` first with ``clean``."""
    box = grow(core, CLEAN_HALO, shape) if settings.clean else core
    if info.kind == "threshold":
        return grow(box, info.context, shape)
    return input_box(box, shape, AXES[settings.axes], settings.tile, settings.tile - 2 * settings.halo, info.context)


def mismatch(previous: Previous, record: dict[str, Any]) -> str | None:
    """What differs between an earlier run's record and this one's ("tile was 32, now 48"), or None."""
    old = previous.record
    for key in RECORD_KEYS:
        if old.get(key) == record[key]:
            continue
        if key == "settings" and isinstance(old.get(key), dict):
            names = [k for k in record[key] if old[key].get(k) != record[key][k]]
            return "; ".join(f"{k} was {old[key].get(k)!r}, now {record[key][k]!r}" for k in names)
        return f"{key} was {old.get(key)!r}, now {record[key]!r}"
    return None


def plan(volume: Any, model_info: PredictorInfo, options: SegmentOptions, previous: Previous | None = None,
         resources: Resources = Resources(cpus=1)) -> Plan:
    """The plan of segmenting ``volume`` (a ``Volume``: its normalised view for a model) with the
    predictor described by ``model_info``.  Pure: reads nothing, writes nothing.

    Raises ``SettingsMismatchError`` when ``previous`` (``--resume``) was made from another volume,
    model or settings (naming the first that differs), ``InvalidInputError`` for ``gpu`` without GPUs.
    """
    mode = inference_mode(options, model_info.inference)
    shape = tuple(int(n) for n in volume.shape)
    workers, threads = workers_and_threads(options, resources, previous)
    layout = default_layout(shape, options.chunks, options.shard)
    requested = options.block or default_block(mode["axes"], shape)
    aligned = align_block(requested, layout.shards or layout.chunks, shape)
    settings = Settings(aligned, options.tile, options.halo, mode["axes"], options.tta, options.probabilities,
                        options.window, options.batch_size, threads, tuple(layout.chunks), options.shard,
                        mode["clean"])
    record = {"kind": volume.kind, "volume": volume.spec, "shape": list(shape), "model_sha256": model_info.sha256,
              "settings": json.loads(json.dumps(asdict(settings))), "stats": volume.stats,
              "normalisation": volume.mapping}
    complete = resume = False
    if previous is not None:
        what = mismatch(previous, record)
        if what is not None:
            state = "finished output" if previous.complete else "interrupted run"
            raise SettingsMismatchError(f"cannot resume the {state} '{previous.out}' with other settings: {what}; "
                                        "rerun with the same arguments, or use --overwrite or another output")
        complete, resume = previous.complete, not previous.complete
    blocks = tuple(replace(b, read=read_box(b.core, shape, settings, model_info)) for b in block_grid(shape, aligned))
    notes = []
    if model_info.kind == "model":
        notes.append(f"inference: {mode['reason']}")
    if aligned != tuple(min(b, n) for b, n in zip(requested, shape)):
        unit = layout.shards or layout.chunks
        notes.append(f"block {','.join(map(str, requested))} rounded up to {','.join(map(str, aligned))}: whole "
                     f"output shards {','.join(map(str, unit))}, so no two workers write one shard")
    return Plan(settings, layout, blocks, record, workers, options.use_ray, mode, tuple(notes), complete, resume,
                options.gpu)
