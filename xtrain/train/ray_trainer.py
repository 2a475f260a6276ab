"""The Ray Train edge: run ``loop.fit`` on N DistributedDataParallel workers.

    xtrain train --config configs/unet.yaml --data soc.zarr --out runs/unet --workers 2

Everything that is not Ray lives in loop.py, and the run directory's rules in run_dir.py.  This module only
  * prepares RUN_DIR (``run_dir.prepare_run_dir``: refusing to clobber a run; ``--resume`` must be explicit),
  * joins the connected Ray or starts one for the run (``runtime.ray_session``),
  * builds a ``TorchTrainer`` (gloo on CPU, NCCL on GPU) with a ``FailureConfig`` so a dead
    worker is restarted from the last reported checkpoint,
  * turns ``should_stop()`` (the CLI sets it on SIGTERM / SIGUSR1: a Slurm time limit or
    preemption) into a STOP file that every worker checks before each step: they checkpoint
    and return within one step.  No signal handler is installed here.

Ray facts (2.60, checked here): Train v2 is the default; ``storage_path`` must be absolute;
rerunning with the same run name silently resumes the old run, so every launch gets a fresh
name and resumption goes through our own RUN_DIR/last.pt; ``TorchTrainer.restore`` is
deprecated; with ``FailureConfig(max_failures=0)`` ``fit()`` raises ``WorkerGroupError``.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from .. import runtime
from ..io import disk_full_cause, disk_full_error
from ..config import Config, config_from_dict, config_to_dict
from ..errors import DiskFullError, XtrainError
from ..malloc import keep_freed_memory
from ..models.checkpoint import load_checkpoint
from .distributed import all_gather
from .loop import WorkerContext, fit, preflight
from .run_dir import LAST, STOP, TRAIN_LOG, AlreadyComplete, last_metrics, log_to_run, prepare_run_dir, read_status, \
    record_worker, run_lock, write_status

log = logging.getLogger(__name__)

QUIET_RAY_ENV = runtime.QUIET_RAY_ENV
quiet_ray = runtime.quiet_ray  # re-exported: tests and older callers import it from here


# ----------------------------------------------------------------------------- the worker


def log_rank_hosts(rank: int, world_size: int) -> None:
    """Rank 0 logs which host every rank runs on (``ranks on hosts: 0=a 1=b``), so a multi-node
    run's log shows where its workers landed.  Collective: every rank calls it."""
    hosts = all_gather(socket.gethostname(), world_size)
    if rank == 0:
        log.info("ranks on hosts: %s", " ".join(f"{r}={h}" for r, h in enumerate(hosts)))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: plain xtrain ``fit`` plus ``ray.train.report``.  Sets this
    process's allocator thresholds (``keep_freed_memory``: process state belongs to the edges)."""
    import ray.train
    import ray.train.torch

    keep_freed_memory()  # activations reuse their pages each step instead of faulting them in (malloc.py)
    cfg = config_from_dict(config["config"])
    run_dir = Path(config["run_dir"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    record_worker(run_dir, rank)
    if rank == 0:
        log_to_run(run_dir)
    log_rank_hosts(rank, context.get_world_size())

    # A restarted worker group (FailureConfig) resumes from Ray's latest checkpoint;
    # a fresh launch with --resume from RUN_DIR/last.pt; otherwise from scratch.
    resume = None
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            resume = load_checkpoint(Path(d) / LAST)
    elif config.get("resume"):
        resume = load_checkpoint(config["resume"])

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        if path is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(dir=run_dir, prefix=".ckpt-") as tmp:
            os.link(path, Path(tmp) / LAST)  # no copy: Ray persists it into storage_path
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    ctx = WorkerContext(rank=rank, world_size=context.get_world_size(), device=ray.train.torch.get_device(),
                        report=report, should_stop=lambda: (run_dir / STOP).exists())
    fit(cfg, run_dir, ctx, resume)


# ----------------------------------------------------------------------------- the driver


class LogTail(threading.Thread):
    """Re-log the lines rank 0 appends to RUN_DIR/train.log (progress, one line per epoch)."""

    def __init__(self, path: Path, interval: float = 0.5):
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.offset = path.stat().st_size if path.exists() else 0
        self.done = threading.Event()

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            for line in f:
                if not line.endswith("\n"):
                    break  # a line still being written: next time
                self.offset += len(line.encode())
                log.info("%s", line.rstrip())

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.poll()
        self.poll()

    def stop(self) -> None:
        self.done.set()
        self.join()


def worker_error(exc: BaseException) -> BaseException | None:
    """The user-input error (XtrainError) a worker raised, if that is why the run failed."""
    for failure in (getattr(exc, "worker_failures", None) or {}).values():
        cause = getattr(failure, "cause", None) or failure
        if isinstance(cause, XtrainError):
            return cause
    return None


def make_trainer(cfg: Config, run_dir: Path, resume_from: Path | None, callbacks: list | None = None,
                 cpus_per_worker: int | None = None):
    """A ``TorchTrainer`` running ``train_loop_per_worker`` on ``cfg`` into ``run_dir``.

    Every launch gets a fresh run name (Ray silently resumes a reused one); resumption goes
    through RUN_DIR/last.pt.  ``cpus_per_worker`` (default Ray's 1): Ray sets each worker's
    OMP_NUM_THREADS, so torch's thread count, to it.  Returns (trainer, attempt name)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    attempt = time.strftime("attempt-%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_to_dict(cfg), "run_dir": str(run_dir),
                           "resume": str(resume_from) if resume_from else None},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cpus_per_worker} if cpus_per_worker else None),
        run_config=ray.train.RunConfig(
            name=attempt,
            storage_path=str(run_dir / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures, controller_failure_limit=2),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks or [],
        ),
    )
    return trainer, attempt


def fit_trainer(trainer, run_dir: Path, **status: Any) -> dict[str, Any]:
    """``trainer.fit()`` with RUN_DIR/status.json kept truthful: running, then finished,
    interrupted (a STOP request was honoured) or failed.  A worker's user-input error is
    re-raised as itself (one clear line at the CLI).  Returns the last metrics + ``stopped``."""
    write_status(run_dir, state="running", **status)
    try:
        result = trainer.fit()
    except BaseException as exc:
        cause = worker_error(exc)
        if cause is None and disk_full_cause(exc) is not None:
            cause = disk_full_error(exc, run_dir, "the run")
        error = str(cause) if cause is not None else f"{type(exc).__name__}: {exc}"
        try:
            # a Tune trial that the sweep already settled (ended by its scheduler: the training died
            # with its placement group) keeps the sweep's verdict; a plain run is "running" here
            if read_status(run_dir).get("state") not in ("finished", "early-stopped"):
                write_status(run_dir, state="failed", error=error[:2000])
        except DiskFullError:
            log.error("could not record the failure in %s: the disk is full", run_dir / "status.json")
        if cause is not None:
            raise cause from None
        raise
    metrics = dict(result.metrics or {})
    stopped = bool(metrics.get("stopped")) or (run_dir / STOP).exists()
    (run_dir / STOP).unlink(missing_ok=True)
    write_status(run_dir, state="interrupted" if stopped else "finished", epoch=metrics.get("epoch"),
                 best_mean_dice=metrics.get("best_mean_dice"))
    return {**metrics, "stopped": stopped}


def train(cfg: Config, run_dir: str | Path, resume: bool = False,
          should_stop: Callable[[], bool] = runtime.never) -> dict[str, Any]:
    """Train with Ray Train; returns the last reported metrics.

    ``stopped``: ``should_stop()`` turned true (the workers checkpointed and stopped within
    one step; ``resume=True`` continues).  ``already_complete``: ``resume`` of a finished run
    with the same settings (nothing is done).  Installs no signal handler; uses the connected
    Ray or starts (and then stops) one.  ``LockedError`` while another process trains into
    RUN_DIR (the lock file ``.RUN.lock`` beside it)."""
    preflight(cfg)
    run_dir = Path(run_dir).resolve()
    with run_lock(run_dir, "train"):  # one writer per run folder: a second one names this pid
        return _train(cfg, run_dir, resume, should_stop)


def _train(cfg: Config, run_dir: Path, resume: bool, should_stop: Callable[[], bool]) -> dict[str, Any]:
    try:
        run_dir, resume_from = prepare_run_dir(run_dir, cfg, resume)
    except AlreadyComplete:
        return {**last_metrics(run_dir), "stopped": False, "already_complete": True}

    def request_stop() -> None:  # Slurm time limit / preemption: every worker checkpoints and stops
        log.warning("stop requested: asking workers to checkpoint and stop")
        (run_dir / STOP).touch()

    with runtime.ray_session():
        trainer, attempt = make_trainer(cfg, run_dir, resume_from)
        tail = LogTail(run_dir / TRAIN_LOG)
        tail.start()
        try:
            with runtime.when_stopped(should_stop, request_stop):
                return fit_trainer(trainer, run_dir, attempt=attempt, pid=os.getpid())
        finally:
            tail.stop()
