"""The block runner: predict, clean, write and mark planned blocks; and the in-process loop.

    job = Job(ModelSource("model.pt"), volume, str(work), plan.settings)
    run_local(job, todo, done=progress, should_stop=stop)     # or pool.run_pool(...) on Ray actors

A ``BlockRunner`` is the body of every worker: this process's loop (``run_local``) and each
Ray actor (``pool.py``).  It sets no process state: the Ray actor, which owns its process,
sets its torch threads and ``keep_freed_memory()``; the CLI calls ``keep_freed_memory()`` for
in-process runs.  The one exception is ``run_local``'s torch thread count, set for the run and
restored after it: the output's bits depend on it (oneDNN, 7th digit) and ``--resume`` reuses
the recorded count, which only the plan knows.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.volumes import Volume
from ..geometry import Box
from ..models.checkpoint import load_checkpoint, model_from_checkpoint
from ..stop import never
from .blocks import Block
from .options import Settings
from .plan import Resources
from .postprocess import CLEAN_HALO, clean_block, grow
from .predict import PredictionStopped, Predictor
from .write import GROUP, MARKERS, Markers, ZarrSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """A model.pt to predict with; each worker loads it (``build``) where its blocks run."""

    path: str

    def build(self, settings: Settings, device: str = "cpu") -> Predictor:
        model, info = model_from_checkpoint(load_checkpoint(self.path, map_location="cpu"), self.path)
        return Predictor(model, info.in_channels, info.num_classes, tile=settings.tile, halo=settings.halo,
                         axes=settings.axes, tta=settings.tta, window=settings.window, batch_size=settings.batch_size,
                         device=device)


@dataclass
class Job:
    """What a worker needs to run blocks (picklable: paths and plain values).

    ``predictor``: what builds the predictor in the worker (``ModelSource``, or a threshold
    baseline's ``baselines.BaselineSource``): ``build(settings, device)`` -> an object with
    ``predict(volume, core, should_stop) -> (K, z, y, x)``, ``input_box(core, shape)`` and ``hard``."""

    predictor: Any
    volume: Volume
    work: str
    settings: Settings
    device: str = "cpu"


def _contains(outer: Box, inner: Box) -> bool:
    return all(a0 <= b0 and b1 <= a1 for (a0, a1), (b0, b1) in zip(outer, inner))


class BlockRunner:
    """Predict and write blocks: used in-process or as the body of a Ray actor."""

    def __init__(self, job: Job, should_stop: Callable[[], bool] = never):
        self.should_stop = should_stop
        self.predictor = job.predictor.build(job.settings, job.device)
        self.volume = job.volume
        self.clean = job.settings.clean
        self.sink = ZarrSink(Path(job.work) / GROUP)
        self.markers = Markers(Path(job.work) / MARKERS)

    def probabilities(self, block: Block) -> Any:
        """(K, z, y, x) float32 of the block core; with ``clean`` predicted one voxel wider each side
        (the filter's context, so the output does not depend on the block) and filtered."""
        shape = self.volume.shape
        box = grow(block.core, CLEAN_HALO, shape) if self.clean else block.core
        if block.read is not None and not _contains(block.read, self.predictor.input_box(box, shape)):
            raise RuntimeError(f"block {block.name}: the planned read box {block.read} does not hold what the "
                               f"predictor reads, {self.predictor.input_box(box, shape)} (plan.read_box is stale)")
        probs = self.predictor.predict(self.volume, box, self.should_stop)
        return clean_block(probs, box, block.core, shape, self.predictor.hard) if self.clean else probs

    def run(self, block: Block) -> Block | None:
        """Predict, write and mark ``block``; None if ``should_stop`` abandoned it (nothing written)."""
        try:
            probs = self.probabilities(block)
        except PredictionStopped as exc:
            log.info("block %s abandoned (%s); --resume redoes it", block.name, exc)
            return None
        self.sink.write(block.core, probs)
        self.markers.mark(block)  # only after the data: a marker means the block is on disk
        return block


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_local(job: Job, todo: list[Block], done: Callable[[Block], None], should_stop: Callable[[], bool]) -> None:
    """Run ``todo`` in this process, in order, with the planned torch threads; ``done(block)`` after each.
    Returns early once ``should_stop()`` (between blocks, or inside one: that block is left undone)."""
    with torch_threads(job.settings.threads):
        runner = BlockRunner(job, should_stop)
        for block in todo:
            if should_stop():
                return
            finished = runner.run(block)
            if finished is None:  # stopped inside the block
                return
            done(finished)


def local_resources() -> Resources:
    """This machine's cores and this process's torch threads (what an in-process run uses)."""
    return Resources(cpus=os.cpu_count() or 1, gpus=0, threads=torch.get_num_threads())
