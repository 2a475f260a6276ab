"""The edges of a run: signals turned into stop requests, the Ray session, where Dask graphs run.

    stop = StopRequest()
    with stop_on_signals(stop):                  # the CLI / jobs/ only: SIGTERM, SIGUSR1
        with ray_session():                      # starts Ray only if none is connected
            train(cfg, "runs/unet", should_stop=stop)
    with volume_scheduler():                     # the CLI: Dask graphs on Ray inside a Ray cluster
        evaluate(pred, truth)

Library functions take a ``should_stop`` callable (``xtrain.stop.StopRequest`` is one) and
install no signal handler, so they run on any thread.  ``ray_session`` starts Ray only when
this process is not connected to one, stops exactly what it started, and puts back the
SIGTERM / SIGUSR1 / SIGINT handlers that ``ray.init`` replaces on the main thread (Ray 2.60
``ray._private.worker.init`` sets SIGTERM to ``sys.exit``).  A ``$TMPDIR`` too long for Ray's
socket paths (a Slurm job-scratch path) gives the Ray it starts a short temp root
(``short_ray_tmpdir``).

``volume_scheduler`` is the edges' one decision where volume-wide Dask graphs run (Ray
inside a Ray cluster, else threads); library code only reads it (``xtrain.data.scheduler``).
Only the CLI, ``jobs/`` and the Ray edges (train/ray_trainer.py, tune/, infer/pool.py) import
this module; files and full disks are ``xtrain.io``'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .stop import StopRequest, never  # noqa: F401  (the CLI's stop request; re-exported for the edges)

log = logging.getLogger(__name__)

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # where Ray's state API clients look (ray.dashboard.utils)
SOCKET_PATH_MAX = 107  # Linux sockaddr_un.sun_path (108 bytes with the NUL); Ray checks the same
# the longest socket Ray makes under its temp root (session dir name with a 7-digit pid)
RAY_SOCKET_TAIL = "ray/session_2000-01-01_00-00-00_000000_1234567/sockets/plasma_store"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # Slurm's time-limit warning / preemption, `scancel`

# Keep Ray's own chatter out of the user's terminal (set before ray is imported).
QUIET_RAY_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120"),
}


# ----------------------------------------------------------------------------- stop requests


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Turn ``signals`` into ``stop.set()`` while the block runs; the old handlers come back after.

    Only for the CLI and ``jobs/`` (the main thread); off the main thread it installs nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not stop():
            log.warning("received %s: checkpointing and stopping; rerun with --resume to continue", name)
        stop.set(name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def when_stopped(should_stop: Callable[[], bool], action: Callable[[], None], interval: float = 0.2) -> Iterator[None]:
    """Call ``action()`` once, from a watcher thread, as soon as ``should_stop()`` is true."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            if should_stop():
                try:
                    action()
                except Exception:  # noqa: BLE001 - the watcher must not die silently mid-run
                    log.exception("stop action failed")
                return

    thread = threading.Thread(target=watch, name="xtrain-stop-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


# ----------------------------------------------------------------------------- Ray


def quiet_ray() -> None:
    """Environment that keeps Ray quiet and consistent; call before ``import ray``."""
    for k, v in QUIET_RAY_ENV.items():
        os.environ.setdefault(k, v)
    # Ray >= 2.5x enables token auth when ~/.ray/auth_token exists and says so on every start;
    # saying it explicitly keeps the secure default and the terminal quiet.  It also makes
    # `ray job submit` authenticate (it fails without it once a token exists).
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None, dashboard: bool = False) -> Iterator[bool]:
    """Use the connected Ray, or start one and shut down exactly that one at the end.

    Joins RAY_ADDRESS when set (a Ray job, a Slurm allocation: the cluster's own resources);
    otherwise starts a private single-machine Ray (``address="local"``: never some other
    Ray left running on this machine).  Yields True if this call started Ray.  The signal
    handlers ``ray.init`` replaces on the main thread are put back."""
    quiet_ray()
    import ray

    if ray.is_initialized():
        yield False
        return
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (*STOP_SIGNALS, signal.SIGINT)} if main else {}
    # Worker output is not forwarded (log_to_driver=False): rank 0 logs to RUN_DIR/train.log,
    # which the driver tails, so the terminal shows xtrain's lines and not Ray's.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": False, "log_to_driver": False}
    pinned = None
    previous_tmp = os.environ.get("RAY_TMPDIR")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        short_ray_tmpdir()  # a long Slurm $TMPDIR: Ray's socket paths would not fit
        # Ray Train's PlacementGroupCleaner asks the state API whether its controller lives, at
        # an address it guesses from /tmp/ray: on a shared machine another user's Ray, whose
        # answer "no such actor" made it remove our workers' placement group mid-run (measured).
        # Pin the address for this session's processes: our dashboard, or none (a refused port).
        port = free_port() if dashboard else None
        pinned = f"http://127.0.0.1:{port}" if port else "http://127.0.0.1:9"
        runtime_env = {"env_vars": {API_SERVER_ENV: pinned}}
        if dashboard:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=port, runtime_env=runtime_env, **kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, **kwargs)
    previous_api = os.environ.get(API_SERVER_ENV)
    if pinned:
        os.environ[API_SERVER_ENV] = pinned
    for s, h in saved.items():
        if h is not None:
            signal.signal(s, h)
    try:
        yield True
    finally:
        ray.shutdown()
        _restore_env(API_SERVER_ENV, previous_api if pinned else os.environ.get(API_SERVER_ENV))
        _restore_env("RAY_TMPDIR", previous_tmp)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def short_ray_tmpdir() -> str | None:
    """Give the Ray this process starts a short temp root when the one Ray would pick is too long.

    Ray puts its sockets under ``$RAY_TMPDIR``, else ``$TMPDIR`` (Linux), else /tmp, and fails
    with a traceback when a socket path passes 107 bytes (``RAY_SOCKET_TAIL`` below the root), as
    under a long Slurm job-scratch ``$TMPDIR`` (ray #7945).  A long ``$TMPDIR`` is replaced, for
    Ray only (``RAY_TMPDIR``, put back by ``ray_session``), by ``/tmp/xtrain-ray-UID``; a long
    ``$RAY_TMPDIR`` was chosen on purpose and is refused, naming it (``ConfigError``).  Returns the
    root used when it was changed."""
    from .errors import ConfigError

    name = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR" if os.environ.get("TMPDIR") else None
    root = os.environ.get(name, "/tmp") if name else "/tmp"
    length = len(os.path.join(root, RAY_SOCKET_TAIL).encode())
    if length <= SOCKET_PATH_MAX:
        return None
    if name == "RAY_TMPDIR":
        raise ConfigError(f"RAY_TMPDIR='{root}' is too long for Ray's socket paths ({length} bytes, at most "
                          f"{SOCKET_PATH_MAX}); set RAY_TMPDIR to a folder of at most "
                          f"{SOCKET_PATH_MAX - len(RAY_SOCKET_TAIL) - 1} characters, e.g. /tmp/ray-$USER")
    short = f"/tmp/xtrain-ray-{os.getuid()}"
    try:
        os.makedirs(short, mode=0o700, exist_ok=True)
        if not os.access(short, os.W_OK):
            raise PermissionError(short)
    except OSError as exc:
        raise ConfigError(f"TMPDIR='{root}' is too long for Ray's socket paths ({length} bytes, at most "
                          f"{SOCKET_PATH_MAX}) and '{short}' cannot be used instead ({exc}); set RAY_TMPDIR to a "
                          "short writable folder, e.g. /tmp/ray-$USER") from None
    log.info("TMPDIR is %d bytes long, too long for Ray's socket paths; Ray uses %s instead", len(root), short)
    os.environ["RAY_TMPDIR"] = short
    return short


DASK_ON_RAY_ENV = "XTRAIN_DASK_ON_RAY"  # "0": volume-wide Dask graphs stay on local threads inside a Ray cluster


def dask_on_ray_wanted() -> bool:
    """Whether volume-wide Dask graphs should run on Ray: inside a Ray cluster (``RAY_ADDRESS`` set:
    Slurm jobs, ``ray job submit``) unless ``XTRAIN_DASK_ON_RAY=0``."""
    return bool(os.environ.get("RAY_ADDRESS")) and os.environ.get(DASK_ON_RAY_ENV, "1") != "0"


@contextlib.contextmanager
def volume_scheduler() -> Iterator[Any]:
    """Decide, once, where volume-wide Dask graphs run while the block runs; yields the scheduler.

    Only for the CLI and ``jobs/`` (the edges).  When ``dask_on_ray_wanted()``: join the
    cluster (``ray_session``: RAY_ADDRESS, left connected to the end of the block) and give
    Ray's ``ray.util.dask.ray_dask_get`` to ``xtrain.data.volumes.compute``
    (``xtrain.data.scheduler.use_scheduler``), so a volume-wide pass spreads over the nodes.
    Otherwise nothing changes: Dask's threaded scheduler.  Asked for but unusable (an
    unreachable cluster, a Dask that ``ray.util.dask`` cannot drive): one warning naming the
    error and how to silence it, and the graphs run on local threads.
    """
    from .data.scheduler import use_scheduler

    if not dask_on_ray_wanted():
        yield "threads"
        return
    with contextlib.ExitStack() as stack:
        sched: Any = "threads"
        try:
            stack.enter_context(ray_session())
            from ray.util.dask import ray_dask_get

            sched = ray_dask_get
        except Exception as exc:  # noqa: BLE001 - said once, then the graphs run where they can
            log.warning("Dask-on-Ray unavailable (%s: %s); volume-wide work runs on local threads (set %s=0 to "
                        "choose that without this warning)", type(exc).__name__, exc, DASK_ON_RAY_ENV)
        stack.enter_context(use_scheduler(sched))
        yield sched


def free_port() -> int:
    """A TCP port nobody listens on now (8265, Ray's default dashboard port, may be another Ray's)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
