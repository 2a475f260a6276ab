"""The Ray worker pool of ``segment``: the only module of xtrain.infer that imports Ray.

    with session(options.use_ray):                       # the connected Ray, or a local one started and stopped
        resources = cluster_resources()
        run_pool(job, todo, done, workers=2, gpu=False, should_stop=stop)

A pool of ``workers`` actors (one per GPU, or N CPU workers with ``threads`` cores each) pulls
blocks from a queue, ``IN_FLIGHT`` per actor; each actor writes its own blocks (they own whole
shards, so no two write one file).  An actor owns its process, so it sets the process state
there: its torch threads (the recorded count: same bits as in-process) and
``keep_freed_memory()``.  A stop cancels the tasks in flight (``ray.cancel``; the actor sees it
before its next tile batch).  A dead actor (``RayActorError``: its process was killed or its node
lost) is replaced and every block it held runs again on the new one, up to ``MAX_RESTARTS`` times.
Ray is imported where it is used: an in-process ``segment`` never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from .. import runtime
from ..errors import XtrainError
from ..malloc import keep_freed_memory
from .blocks import Block
from .plan import Resources
from .runner import BlockRunner, Job

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # blocks queued per actor: one running, one ready, so no actor waits for the driver
MAX_RESTARTS = 3  # dead Ray workers replaced per run before the run fails
STOP_POLL_S = 0.2  # how often the Ray driver looks at should_stop while blocks run


def session(use_ray: bool) -> contextlib.AbstractContextManager:
    """The connected Ray (or a local one, stopped at the end) when ``use_ray``; else nothing."""
    return runtime.ray_session() if use_ray else contextlib.nullcontext()


def cluster_resources() -> Resources:
    """The CPUs and GPUs of the connected Ray cluster."""
    import ray

    resources = ray.cluster_resources()
    return Resources(cpus=int(resources.get("CPU", 1)), gpus=int(resources.get("GPU", 0)),
                     threads=torch.get_num_threads())


def _task_cancelled() -> bool:
    """An actor's ``should_stop``: has the driver called ``ray.cancel`` on the running task?"""
    import ray

    return ray.get_runtime_context().is_canceled()


class BlockRunnerActor:
    """The body of a Ray segmentation worker: process state, then a ``BlockRunner``."""

    def __init__(self, job: Job):
        torch.set_num_threads(job.settings.threads)
        keep_freed_memory()  # tiles reuse their pages instead of faulting them in (malloc.py)
        self.runner = BlockRunner(job, _task_cancelled)

    def run(self, block: Block) -> Block | None:
        return self.runner.run(block)

    def pid(self) -> int:
        """The worker process id (tests kill it to check recovery)."""
        return os.getpid()


class _Pool:
    """The actors, the queue of blocks and the tasks in flight of one ``run_pool``."""

    def __init__(self, job: Job, todo: list[Block], workers: int, gpu: bool, should_stop: Callable[[], bool],
                 on_actors: Callable[[list[Any]], None] | None):
        import ray

        self.job, self.should_stop, self.on_actors = job, should_stop, on_actors
        self.actor_cls = ray.remote(num_cpus=0 if gpu else job.settings.threads, num_gpus=1 if gpu else 0)(
            BlockRunnerActor)
        self.actors = [self.actor_cls.remote(job) for _ in range(min(workers, len(todo)))]
        self.queue = deque(todo)
        self.pending: dict[Any, tuple[Any, Block]] = {}
        self.restarts = 0
        if on_actors is not None:
            on_actors(self.actors)

    def submit(self, actor: Any, n: int = 1) -> None:
        for _ in range(n):
            if self.queue and not self.should_stop():
                block = self.queue.popleft()
                self.pending[actor.run.remote(block)] = (actor, block)

    def cancel_all(self) -> None:
        import ray

        for ref in self.pending:
            ray.cancel(ref)

    def replace(self, actor: Any, block: Block, exc: Exception) -> None:
        """A dead actor: a new one takes every block the dead one held."""
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise RuntimeError(f"{self.restarts} segmentation workers died (last: {exc}); giving up; "
                               "--resume continues from the finished blocks") from exc
        lost = [block] + [b for a, b in self.pending.values() if a is actor]
        for ref in [ref for ref, (a, _) in self.pending.items() if a is actor]:
            del self.pending[ref]
        log.warning("a segmentation worker died (%s); running its %d block(s) on a new one", type(exc).__name__,
                    len(lost))
        self.actors.remove(actor)
        new = self.actor_cls.remote(self.job)
        self.actors.append(new)
        if self.on_actors is not None:
            self.on_actors(self.actors)
        self.queue.extendleft(reversed(lost))
        self.submit(new, IN_FLIGHT)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def run_pool(job: Job, todo: list[Block], done: Callable[[Block], None], workers: int, gpu: bool,
             should_stop: Callable[[], bool], on_actors: Callable[[list[Any]], None] | None = None) -> None:
    """Run ``todo`` on a pool of ``workers`` Ray actors (see the module docstring); ``done(block)``
    after each finished block.  ``on_actors(actors)``: the actors, whenever the pool changes (tests).
    A worker's ``XtrainError`` is raised here as it is."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

    pool = _Pool(job, todo, workers, gpu, should_stop, on_actors)
    try:
        for actor in pool.actors:
            pool.submit(actor, IN_FLIGHT)
        cancelled = False
        while pool.pending:
            if not cancelled and should_stop():  # abandon the blocks in flight (segmentation.py's docstring)
                pool.cancel_all()
                cancelled = True
            ready, _ = ray.wait(list(pool.pending), num_returns=1, timeout=STOP_POLL_S)
            if not ready:
                continue
            actor, block = pool.pending.pop(ready[0])
            try:
                finished = ray.get(ready[0])
            except TaskCancelledError:  # cancelled before it started, or while it ran
                continue
            except RayTaskError as exc:  # a worker's XtrainError is the user's error: re-raise it as is
                if isinstance(exc.cause, XtrainError):
                    raise exc.cause from None
                raise
            except RayActorError as exc:
                pool.replace(actor, block, exc)
                continue
            if finished is None:  # stopped inside the block
                continue
            pool.submit(actor)
            done(block)
    finally:
        pool.close()
