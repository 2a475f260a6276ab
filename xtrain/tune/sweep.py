"""``xtrain tune``: Ray Tune over the Ray Train trainer.

    summary = sweep(load_config("configs/tune.yaml", ["data.store=/abs/soc.zarr"]), "runs/tune")
    summary["best"]          # {"trial_id": ..., "best_val_mean_dice": ..., "optim.lr": ...}

TUNE_DIR holds
  * ``config.yaml``      the sweep's base config (with its ``tune:`` section),
  * ``trials/<id>/``     one ``xtrain train`` run directory per trial (model.pt, last.pt,
                         metrics.csv, config.yaml = the trial's resolved config, status.json),
  * ``results.csv``      one row per trial: parameters, final and best metrics, epochs, status,
  * ``best.yaml``        the resolved config of the best trial (``load_config`` reads it),
  * ``best/model.pt``    the best trial's model, its provenance the sweep's (the trial's kept as ``previous``),
  * ``experiment/``      Ray Tune's own state (what ``--resume`` restores).

How it is built (Ray 2.60, checked here): a ``TorchTrainer`` cannot be handed to a Tuner, so
each trial is a Tune *function* trainable that builds a ``TorchTrainer`` running the same
``train_loop_per_worker`` as ``xtrain train``, with ``TuneReportCallback`` passing every
epoch's metrics on to Tune (ASHA decides on ``val_mean_dice`` per ``epoch``).  The function
itself asks for no CPU, only 1 MiB of the ``memory`` resource: a fractional CPU (0.01) would
leave a 1-CPU node with 0.99 CPUs, where no 1-CPU training worker fits, and the next trial
waited forever (measured on the 2 x 1-CPU test cluster, with and without the dashboard).  The
number of trials running at once is the cluster's CPUs (GPUs) divided by ``train.workers``,
so no trial waits for workers; a trial whose workers still cannot start fails after
``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (and two retries) instead of hanging.

Interruption: when ``should_stop()`` turns true (the CLI sets it on SIGTERM / SIGUSR1 from
Slurm) STOP is written into every trial directory and TUNE_DIR; the running trials checkpoint
within one step and end as "interrupted" (a Tune error), trials not yet started end at once,
and ``--resume`` (``Tuner.restore`` with ``resume_errored``) reruns exactly those: each
continues from its own ``last.pt`` to its full length.  Finished trials are never rerun, and
no ``best.yaml`` is written while any trial is unfinished.  Ctrl+C (SIGINT) does the same.

Signals (Ray 2.60, ``ray/tune/tune.py: _setup_signal_catching``): ``Tuner.fit`` on the main
thread replaces the SIGINT and SIGUSR1 handlers with its own "graceful stop", which ends the
experiment loop and left the running trials looking finished or early-stopped after one epoch
(and the command exited 0).  It installs nothing off the main thread, so ``sweep`` runs
``Tuner.fit`` on a helper thread and the caller's handlers stay in charge
(``fit_without_tune_signal_handlers``; tests/tune/test_sweep.py checks both facts).

Placement groups: each trial's Ray Train controller reserves its workers in a placement
group that Train's ``PlacementGroupCleaner`` frees when Tune ends the trial; that cleaner
asks the state API, so a sweep needs a Ray with its dashboard (``ray_session(dashboard=True)``
starts one; ``ray start`` has it by default).  ``sweep`` refuses a cluster without it: the
next trials would wait forever for CPUs nobody frees.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import runtime
from ..io import atomic_write
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..provenance import command_line, now, provenance
from ..io import write_csv
from ..config import Config, config_from_dict, config_to_dict, load_config, save_config
from ..errors import RunStateError
from ..train.loop import preflight
from ..train.ray_trainer import fit_trainer, make_trainer, quiet_ray
from ..train.run_dir import BEST, CONFIG, METRICS, STOP, check_same_config, failed_start, numeric, prepare_trial_dir, \
    read_metrics, read_status, run_lock, write_status
from ..train.tracking import Tracking, check_tracking
from .space import Param, apply_params, grid_size, parse_space, to_ray
from .tracking import param_space, tune_callbacks

log = logging.getLogger(__name__)

EXPERIMENT = "experiment"
TRIALS = "trials"
RESULTS = "results.csv"
BEST_YAML = "best.yaml"
TRIAL_MEMORY = 1 << 20  # what the Tune function asks for instead of a CPU (see the module docstring)

# Tune's own terminal output off (one line per finished trial comes from ProgressLog instead).
TUNE_QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # the "stopped" report carries no val_mean_dice
    "TUNE_MAX_PENDING_TRIALS_PG": "1",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120"),
}


class TrialInterrupted(RuntimeError):
    """A trial stopped by SIGTERM (it checkpointed): an error to Tune, so --resume reruns it."""


def quiet_tune() -> None:
    quiet_ray()
    for k, v in TUNE_QUIET_ENV.items():
        os.environ.setdefault(k, v)


def check_state_api(wait_s: float = 30.0) -> None:
    """Refuse a Ray without its state API (dashboard): Train could not free ended trials' workers.

    A dashboard that is still starting gets ``wait_s`` seconds.  The address is the connected
    cluster's: left out, the state API guesses from /tmp/ray, which on a shared machine can be
    another user's Ray."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address
    t0 = time.monotonic()
    while True:
        try:
            list_actors(address=address, limit=1, raise_on_missing_output=False)
            return
        except Exception as exc:  # noqa: BLE001 - any failure means the same: no state API
            if time.monotonic() - t0 < wait_s:
                time.sleep(1.0)
                continue
            raise RunStateError("xtrain tune needs the Ray dashboard (state API) to free the workers of ended "
                                f"trials, and this Ray cluster has none ({type(exc).__name__}); start it with "
                                "'ray start --include-dashboard=true' or let xtrain start Ray") from None


# ----------------------------------------------------------------------------- checks


def check_tune_config(cfg: Config) -> list[Param]:
    """Everything that can be checked before Ray starts: the space, and the data and model of every value a
    trial can get (scheduler, mode, metric and counts are checked by ``TuneConfig`` itself)."""
    t = cfg.tune
    params = parse_space(t.space, config_to_dict(cfg))
    for p in params:  # every value a trial can get must pass the same checks as `xtrain train`
        for v in p.values or []:
            preflight(config_from_dict(apply_params(config_to_dict(cfg), {p.key: v})))
    preflight(cfg)
    return params


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    return config_from_dict(apply_params(base, params))


# ----------------------------------------------------------------------------- one trial (Tune function)


def run_trial(config: dict[str, Any], base: dict[str, Any], tune_dir: str, keys: list[str] | None = None,
              tensorboard: str | None = None, command: str | None = None) -> None:
    """The Tune function trainable: one ``xtrain train`` run in TUNE_DIR/trials/<trial_id>/.

    ``keys``: the searched keys of ``config`` (with MLflow tracking it also holds the rest of the
    config as constants, tune/tracking.py); ``tensorboard``: rank 0 writes the epochs into
    TENSORBOARD/<trial_id>; ``command``: the sweep's command line, for the checkpoints' provenance."""
    quiet_tune()
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    params = {k: v for k, v in config.items() if keys is None or k in keys}
    cfg = trial_config(base, params)
    tune_root = Path(tune_dir)
    run_dir = tune_root / TRIALS / trial_id
    if (tune_root / STOP).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        if read_status(run_dir).get("state") != "finished":
            write_status(run_dir, state="interrupted", trial_id=trial_id)
            raise TrialInterrupted(f"trial {trial_id}: the sweep is stopping; --resume runs it")
    state = read_status(run_dir).get("state")
    if state == "finished":  # finished before the sweep was interrupted: report, do not rerun
        rows = read_metrics(run_dir / METRICS)
        ray.tune.report(numeric(rows[-1]) if rows else {"done_before_resume": 1})
        return
    resume = prepare_trial_dir(run_dir, cfg)
    atomic_write(run_dir / "params.json", json.dumps(params, indent=2, default=str), what="trial parameters")

    # MLflow is the Tune callback's (one run per trial, on the driver); TensorBoard curves come from rank 0
    trainer, attempt = make_trainer(cfg, run_dir, resume, callbacks=[TuneReportCallback()],
                                    track=Tracking(tensorboard=tensorboard), track_name=trial_id, command=command)
    if (tune_root / STOP).exists():  # SIGTERM arrived between the check above and the launch
        (run_dir / STOP).touch()
    metrics = fit_trainer(trainer, run_dir, attempt=attempt, trial_id=trial_id, resumed=resume is not None)
    if metrics["stopped"]:
        raise TrialInterrupted(f"trial {trial_id} stopped at epoch {metrics.get('epoch')} and checkpointed; "
                               "--resume continues it")


# ----------------------------------------------------------------------------- the sweep (driver)


def _cluster_slots(cfg: Config) -> int:
    """How many trials fit at once: cluster CPUs (GPUs) // workers per trial."""
    import ray

    res = ray.cluster_resources()
    if cfg.train.use_gpu:
        return max(1, int(res.get("GPU", 0) // cfg.train.workers))
    return max(1, int(res.get("CPU", 1) // cfg.train.workers))


SETTLED = ("finished", "early-stopped")  # trial states (status.json) a resumed sweep does not rerun


def _settled_trials(tune_dir: Path) -> set[str]:
    """The trials of TUNE_DIR that ended before (finished or early-stopped): what --resume does not rerun."""
    trials = tune_dir / TRIALS
    if not trials.is_dir():
        return set()
    return {d.name for d in trials.iterdir() if d.is_dir() and read_status(d).get("state") in SETTLED}


def _progress_callback(total: int, params: list[Param], tune_dir: Path, metric: str, mode: str = "max"):
    """Tune callback: one line per trial that ends, "trial K/N": K counts the trials ended so far,
    those a resumed sweep finished before included; a trial that ended before its first epoch says
    so instead of "0 epochs, best nan".

    The count starts from the trial folders in ``setup`` (called at the start of every run, also
    after ``Tuner.restore``, which brings back the callback pickled with the sweep's first start,
    not a new one)."""
    from ray.tune import Callback

    keys = [p.key for p in params if p.kind != "fixed"]

    class ProgressLog(Callback):
        """One line per finished trial instead of Tune's tables."""

        def __init__(self):
            self.ended: set[str] = set()

        def setup(self, **info):
            self.ended = _settled_trials(tune_dir)

        def _line(self, trial, what: str) -> None:
            self.ended.add(trial.trial_id)
            rows = read_metrics(tune_dir / TRIALS / trial.trial_id / METRICS)
            values = [float(r[metric]) for r in rows if r.get(metric) not in (None, "")]
            values = [v for v in values if not math.isnan(v)]
            if not rows:
                result = "before its first epoch"
            elif values:
                best = (max if mode == "max" else min)(values)
                result = f"{len(rows)} epoch{'s' if len(rows) != 1 else ''}, best {metric} {best:.4f}"
            else:
                result = f"{len(rows)} epoch{'s' if len(rows) != 1 else ''}, no {metric} yet"
            shown = "  ".join(f"{k}={_fmt(trial.config.get(k))}" for k in keys)
            log.info("trial %d/%d %s %s: %s  %s", len(self.ended), total, trial.trial_id, what, result, shown)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "interrupted" if _interrupted(tune_dir, trial.trial_id) else "failed")

    return ProgressLog()


def _interrupted(tune_dir: Path, trial_id: str) -> bool:
    """The trial stopped on request: its run directory says so (fit_trainer / run_trial wrote it)."""
    return read_status(tune_dir / TRIALS / trial_id).get("state") == "interrupted"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class SweepComplete(Exception):
    """Raised by ``prepare_tune_dir`` for ``--resume`` of a finished sweep with the same settings."""


def sweep_finished(tune_dir: Path) -> bool:
    """results.csv lists every trial as finished or early-stopped (by the scheduler)."""
    from ..io import read_csv

    rows = read_csv(tune_dir / RESULTS)
    return bool(rows) and all(r.get("status") in ("finished", "early-stopped") for r in rows)


def prepare_tune_dir(tune_dir: str | Path, cfg: Config, resume: bool) -> tuple[Path, Config, bool]:
    """Create TUNE_DIR or check it can be resumed, by the run directory's rules (train/run_dir.py):
    returns (TUNE_DIR, the base config, whether Tune's state is restored).

    A folder holding only what a failed start left (config.yaml, an empty trials/) blocks neither a
    fresh start nor ``resume`` (a fresh start then).  ``resume`` with settings other than the sweep's
    (beyond ``RUN_ONLY_KEYS``) raises ``SettingsMismatchError`` naming the key; of a finished sweep with
    the same settings, ``SweepComplete``."""
    tune_dir = Path(tune_dir).resolve()
    exp = tune_dir / EXPERIMENT
    empty = failed_start(tune_dir, frozenset({TRIALS}))
    if resume and tune_dir.exists() and empty:
        log.info("nothing to resume in '%s' (a start that failed left only %s); starting the sweep", tune_dir,
                 CONFIG)
    elif resume:
        from ray.tune import Tuner

        check_same_config(tune_dir, cfg, what="sweep")
        if sweep_finished(tune_dir) and (tune_dir / CONFIG).exists():
            raise SweepComplete(str(tune_dir))
        if not (tune_dir / CONFIG).exists() or not Tuner.can_restore(str(exp)):
            raise RunStateError(f"cannot resume '{tune_dir}': it holds no sweep state; start it without --resume")
        (tune_dir / STOP).unlink(missing_ok=True)
        return tune_dir, load_config(tune_dir / CONFIG), True
    elif not empty:
        hint = "pass --resume to continue it" if exp.exists() and not sweep_finished(tune_dir) else "choose a new --out"
        raise RunStateError(f"tune directory '{tune_dir}' already exists and is not empty; {hint}")
    (tune_dir / TRIALS).mkdir(parents=True, exist_ok=True)
    save_config(cfg, tune_dir / CONFIG)
    return tune_dir, cfg, False


def fit_without_tune_signal_handlers(tuner, should_stop: Callable[[], bool]):
    """``tuner.fit()`` on a helper thread, so Tune installs no SIGINT/SIGUSR1 handler (see the
    module docstring); this thread waits, and Ctrl+C here asks for a stop (twice: gives up)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["grid"] = tuner.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="xtrain-tune-fit", daemon=True)
    thread.start()
    interrupts = 0
    while thread.is_alive():
        try:
            thread.join(0.2)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1 or not hasattr(should_stop, "set"):
                raise
            log.warning("Ctrl+C: stopping the sweep (trials checkpoint; --resume continues); again to abort")
            should_stop.set("SIGINT")  # type: ignore[attr-defined]
    if "error" in box:
        raise box["error"]
    return box["grid"]


def sweep(cfg: Config, tune_dir: str | Path, resume: bool = False,
          should_stop: Callable[[], bool] | None = None, track: Tracking | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep described by ``cfg.tune``; returns a summary with the best trial.

    ``should_stop()`` true: the running trials checkpoint and end "interrupted" (summary
    ``stopped``), ``resume=True`` runs them to their full length.  ``already_complete``:
    ``resume`` of a finished sweep with the same settings.  Installs no signal handler.
    ``LockedError`` while another process sweeps into TUNE_DIR (the lock file ``.TUNE.lock`` beside it).
    ``track``: one MLflow run per trial and/or TensorBoard events (tune/tracking.py); a resumed sweep
    keeps the MLflow/TensorBoard callbacks of its first start (Tune restores them)."""
    quiet_tune()
    params = check_tune_config(cfg)
    check_tracking(track)
    tune_dir = Path(tune_dir).resolve()
    with run_lock(tune_dir, "tune"):  # one sweep per folder: a second one names this pid
        return _sweep(cfg, tune_dir, resume, should_stop, params, track)


def _sweep(cfg: Config, tune_dir: Path, resume: bool, should_stop: Callable[[], bool] | None,
           params: list[Param], track: Tracking | None = None) -> dict[str, Any]:
    stop = runtime.StopRequest()
    outer = should_stop or runtime.never
    try:
        tune_dir, cfg, resume = prepare_tune_dir(tune_dir, cfg, resume)
    except SweepComplete:
        return _already_complete(Path(tune_dir).resolve())
    if resume:
        params = check_tune_config(cfg)  # the sweep's own config
    from ray import tune

    base = config_to_dict(cfg)
    t = cfg.tune

    def request_stop() -> None:  # every running trial checkpoints and stops; the others do not start
        log.warning("stopping the sweep: running trials checkpoint; --resume continues them")
        stop.set("requested")
        (tune_dir / STOP).touch()
        for d in (tune_dir / TRIALS).iterdir():
            if d.is_dir() and read_status(d).get("state") == "running":
                (d / STOP).touch()

    t0, started = time.time(), now()
    with runtime.ray_session(dashboard=True):
        check_state_api()
        n_trials = t.num_samples * grid_size(params)
        slots = _cluster_slots(cfg)
        concurrent = min(t.max_concurrent or slots, slots, n_trials)
        tensorboard = track.tensorboard if track else None
        trial_fn = tune.with_parameters(run_trial, base=base, tune_dir=str(tune_dir), keys=[p.key for p in params],
                                        tensorboard=tensorboard, command=command_line())
        trainable = tune.with_resources(trial_fn, {"cpu": 0, "memory": TRIAL_MEMORY})
        progress = _progress_callback(n_trials, params, tune_dir, t.metric, t.mode)
        run_config = tune.RunConfig(name=EXPERIMENT, storage_path=str(tune_dir), verbose=0,
                                    callbacks=[progress, *tune_callbacks(track, tune_dir, tune_dir / TRIALS)],
                                    failure_config=tune.FailureConfig(max_failures=0))
        log.info("tune: %d trials (%s, %d at once, %d training worker(s) each) -> %s", n_trials, t.scheduler,
                 concurrent, cfg.train.workers, tune_dir)
        tuner = _make_tuner(cfg, tune_dir, resume, trainable, run_config, params, base, track, concurrent)
        ctrl_c = runtime.StopRequest()
        with runtime.when_stopped(lambda: outer() or ctrl_c(), request_stop):
            grid = fit_without_tune_signal_handlers(tuner, ctrl_c)
    (tune_dir / STOP).unlink(missing_ok=True)
    rows = collect_results(grid, tune_dir, cfg, params)
    settle_statuses(rows, tune_dir)
    write_results(rows, tune_dir / RESULTS)
    unfinished = [r["trial_id"] for r in rows if r["status"] not in ("finished", "early-stopped")]
    summary: dict[str, Any] = {"trials": len(rows), "seconds": round(time.time() - t0, 1), "rows": rows,
                               "stopped": stop() or any(r["status"] == "interrupted" for r in rows)}
    best = pick_best(rows, t.metric, t.mode)
    summary["best"] = best
    if best is not None and not summary["stopped"]:
        export_best(tune_dir, best["trial_id"], started)
    elif summary["stopped"]:
        log.warning("no best.yaml: trial(s) %s did not finish; --resume runs them", ", ".join(unfinished))
    return summary


def _already_complete(tune_dir: Path) -> dict[str, Any]:
    """The summary of a sweep that finished before (its results.csv and best trial), run again without --resume."""
    from ..io import read_csv

    rows = read_csv(tune_dir / RESULTS)
    trial = (tune_dir / "best" / "trial").read_text().strip() if (tune_dir / "best" / "trial").exists() else None
    best = next((r for r in rows if r.get("trial_id") == trial), None)
    return {"trials": len(rows), "rows": rows, "stopped": False, "best": best, "already_complete": True}


def _make_tuner(cfg: Config, tune_dir: Path, resume: bool, trainable: Any, run_config: Any, params: list[Param],
                base: dict[str, Any], track: Tracking | None, concurrent: int):
    """A new ``tune.Tuner`` (the scheduler of ``tune.scheduler``), or the interrupted one restored on --resume."""
    from ray import tune

    t = cfg.tune
    if resume:
        return tune.Tuner.restore(str(tune_dir / EXPERIMENT), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    if t.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs,
                                                  grace_period=min(t.grace_period, cfg.train.epochs),
                                                  reduction_factor=t.reduction_factor)
    else:
        scheduler = tune.schedulers.FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space(to_ray(params), base, track),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                    scheduler=scheduler, max_concurrent_trials=concurrent,
                                    search_alg=_search_alg(t.seed)),
        run_config=run_config,
    )


def _search_alg(seed: int | None):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed) if seed is not None else None


# ----------------------------------------------------------------------------- results


def collect_results(grid, tune_dir: Path, cfg: Config, params: list[Param]) -> list[dict[str, Any]]:
    """One row per trial from Tune's ``ResultGrid`` and each trial's own metrics.csv / status.json.

    status: ``finished`` (all epochs), ``early-stopped`` (the scheduler ended it), ``interrupted``
    (stopped on request and checkpointed: ``--resume`` continues it), ``failed``."""
    rows = []
    for result in grid:
        trial_id = result.metrics["trial_id"]
        config = result.config or {}
        run_dir = tune_dir / TRIALS / trial_id
        metrics = read_metrics(run_dir / METRICS)
        status = read_status(run_dir)
        epochs = len(metrics)
        target = cfg.train.epochs
        try:
            target = config_from_dict(_trial_yaml(run_dir)).train.epochs
        except Exception:  # noqa: BLE001 - a trial that never started has no config.yaml
            pass
        if status.get("state") == "interrupted":
            state = "interrupted"
        elif result.error is not None:
            state = "failed"
        elif status.get("state") == "finished" and epochs >= target:
            state = "finished"
        else:
            state = "early-stopped" if epochs < target else "finished"
        row: dict[str, Any] = {"trial_id": trial_id, "status": state, "epochs": epochs}
        for p in params:
            row[p.key] = config.get(p.key)
        last = metrics[-1] if metrics else {}
        metric_keys = [k for k in last if k.startswith("train_") or k in ("val_mean_dice", "val_mean_iou", "val_accuracy")
                       or k.startswith("val_dice_")]
        for k in metric_keys:
            row[f"final_{k}"] = _num(last.get(k))
        dice = [_num(r.get("val_mean_dice")) for r in metrics]
        dice = [d for d in dice if d is not None and not math.isnan(d)]
        row["best_val_mean_dice"] = max(dice) if dice else None
        if cfg.tune.metric != "val_mean_dice":
            vals = [_num(r.get(cfg.tune.metric)) for r in metrics]
            vals = [v for v in vals if v is not None]
            row[f"best_{cfg.tune.metric}"] = (max if cfg.tune.mode == "max" else min)(vals) if vals else None
        row["model_path"] = str(run_dir / BEST) if (run_dir / BEST).exists() else ""
        rows.append(row)
    return rows


SETTLE_WATCH_S = 10.0  # how long settle_statuses guards a settled trial against a late write from its process


def settle_statuses(rows: list[dict[str, Any]], tune_dir: Path) -> None:
    """Tune ends a trial that ASHA stops - early, or at max_t right after its last report - by
    removing its placement group, so the trial's training dies mid-call and its status.json
    says "running" or "failed" (ActorDiedError), which a later look or ``xtrain train
    --resume`` would take for a crash.  Tune's verdict is what happened: write it down."""
    settled: dict[Path, dict[str, Any]] = {}
    for row in rows:
        run_dir = tune_dir / TRIALS / row["trial_id"]
        state = read_status(run_dir).get("state")
        if row["status"] in ("early-stopped", "finished") and state in ("running", "failed"):
            settled[run_dir] = {"state": row["status"], "epochs": row["epochs"], "error": None}
            write_status(run_dir, **settled[run_dir])
    # Tuner.fit can return before such a trial's own process has written its ActorDiedError
    # ("failed") on the way out: watch the settled ones for a few seconds and write the verdict
    # again over a late write.  Bounded, and only when a trial needed settling.
    deadline = time.monotonic() + (SETTLE_WATCH_S if settled else 0)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for run_dir, verdict in settled.items():
            if read_status(run_dir).get("state") != verdict["state"]:
                write_status(run_dir, **verdict)


def _trial_yaml(run_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    write_csv(path, rows, default_fields=["trial_id", "status", "epochs"])


def pick_best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The trial with the best (max/min) per-epoch ``metric`` that has a model.pt, among the
    trials that finished or that the scheduler stopped (never an interrupted or failed one)."""
    key = f"best_{metric}" if metric != "val_mean_dice" else "best_val_mean_dice"
    if metric == "best_mean_dice":
        key = "best_val_mean_dice"
    cands = [r for r in rows if r.get("model_path") and r.get(key) is not None
             and r.get("status") in ("finished", "early-stopped")]
    if not cands:
        return None
    return (max if mode == "max" else min)(cands, key=lambda r: r[key])


def export_best(tune_dir: Path, trial_id: str, started: str | None = None) -> None:
    """TUNE_DIR/best.yaml (resolved config of the best trial) and TUNE_DIR/best/model.pt: the trial's
    model.pt with the sweep's provenance record (the training store, the trial's model.pt as ``models.trial``,
    ``started``: when the sweep began) holding the trial's own as ``previous``."""
    run_dir = tune_dir / TRIALS / trial_id
    cfg = load_config(run_dir / "config.yaml")
    (tune_dir / "best").mkdir(exist_ok=True)
    ckpt = load_checkpoint(run_dir / BEST)
    ckpt["provenance"] = provenance(started or now(), inputs={"store": cfg.data.store},
                                    models={"trial": run_dir / BEST}, previous=ckpt.get("provenance"))
    save_checkpoint(ckpt, tune_dir / "best" / BEST)
    atomic_write(tune_dir / "best" / "trial", trial_id + "\n", what="the best trial id")
    save_config(cfg, tune_dir / BEST_YAML)  # last: best.yaml present means the export is complete


