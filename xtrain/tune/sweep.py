"""``xtrain tune``: Ray Tune over the Ray Train trainer.

    summary = sweep(load_config("configs/tune.yaml", ["data.store=/abs/soc.zarr"]), "runs/tune")
    summary["best"]          # {"trial_id": ..., "best_val_mean_dice": ..., "optim.lr": ...}

TUNE_DIR holds
  * ``config.yaml``      the sweep's base config (with its ``tune:`` section),
  * ``trials/<id>/``     one ``xtrain train`` run directory per trial (model.pt, last.pt,
                         metrics.csv, config.yaml = the trial's resolved config, status.json),
  * ``results.csv``      one row per trial: parameters, final and best metrics, epochs, status,
  * ``best.yaml``        the resolved config of the best trial (``load_config`` reads it),
  * ``best/model.pt``    a copy of the best trial's model,
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

Interruption: SIGTERM/SIGUSR1 (Slurm) write STOP into every trial directory and TUNE_DIR; the
running trials checkpoint within one step and end as "interrupted" (a Tune error), trials not
yet started end at once, and ``--resume`` (``Tuner.restore`` with ``resume_errored``) reruns
exactly those: each continues from its own ``last.pt``.  Finished trials are never rerun.
Ctrl+C (SIGINT) is Tune's graceful stop; the unfinished trials are resumed the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from ..csvio import write_csv
from ..config import Config, config_from_dict, config_to_dict, load_config, save_config
from ..errors import ConfigError, RunStateError, UnknownNameError
from ..train.loop import BEST, LAST, METRICS, preflight, read_metrics
from ..train.ray_trainer import STOP, fit_trainer, make_trainer, quiet_ray, read_status, write_status
from .space import Param, apply_params, grid_size, parse_space, to_ray

log = logging.getLogger(__name__)

EXPERIMENT = "experiment"
TRIALS = "trials"
RESULTS = "results.csv"
BEST_YAML = "best.yaml"
SCHEDULERS = ("asha", "fifo")
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


def init_tune_ray() -> bool:
    """Join the cluster of RAY_ADDRESS (a Ray job, Slurm) or start a private local Ray.

    Unlike a bare ``ray.init()``, never attaches to some other Ray that happens to run on
    this machine (``address="local"``): on a shared machine that may be anyone's, or a dead
    one whose address file was left behind (ray.init then waits for its GCS forever).
    Returns True if this call started or joined Ray (so the caller shuts it down)."""
    quiet_tune()
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": False, "log_to_driver": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)  # inside a Ray job or a Slurm allocation: no num_cpus, the cluster's own
    else:
        # The dashboard stays on: Train's PlacementGroupCleaner needs its state API to free the
        # workers of a trial Tune ended (reap_orphan_placement_groups covers clusters without it).
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
    return True


# ----------------------------------------------------------------------------- checks


def check_tune_config(cfg: Config) -> list[Param]:
    """Everything that can be checked before Ray starts: space, scheduler, metric, data, model."""
    t = cfg.tune
    if t.scheduler not in SCHEDULERS:
        raise UnknownNameError("tune scheduler", t.scheduler, SCHEDULERS, where="tune.scheduler")
    if t.mode not in ("max", "min"):
        raise UnknownNameError("tune mode", t.mode, ("max", "min"), where="tune.mode")
    if t.num_samples < 1 or t.grace_period < 1 or t.reduction_factor < 2 or t.max_concurrent < 0:
        raise ConfigError("tune.num_samples and tune.grace_period must be >= 1, tune.reduction_factor >= 2 and "
                          f"tune.max_concurrent >= 0; got {t.num_samples}, {t.grace_period}, {t.reduction_factor}, "
                          f"{t.max_concurrent}")
    metrics = ("val_mean_dice", "val_accuracy", "val_mean_iou", "train_loss", "best_mean_dice")
    if not (t.metric.startswith("val_") or t.metric.startswith("train_") or t.metric in metrics):
        raise UnknownNameError("tune metric", t.metric, metrics, where="tune.metric")
    params = parse_space(t.space, config_to_dict(cfg))
    for p in params:  # every value a trial can get must pass the same checks as `xtrain train`
        for v in p.values or []:
            preflight(config_from_dict(apply_params(config_to_dict(cfg), {p.key: v})))
    preflight(cfg)
    return params


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    return config_from_dict(apply_params(base, params))


# ----------------------------------------------------------------------------- one trial (Tune function)


def run_trial(config: dict[str, Any], base: dict[str, Any], tune_dir: str) -> None:
    """The Tune function trainable: one ``xtrain train`` run in TUNE_DIR/trials/<trial_id>/."""
    quiet_tune()
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    params = {k: v for k, v in config.items()}
    cfg = trial_config(base, params)
    tune_root = Path(tune_dir)
    run_dir = tune_root / TRIALS / trial_id
    if (tune_root / STOP).exists():
        raise TrialInterrupted(f"trial {trial_id}: the sweep is stopping (SIGTERM); --resume runs it")
    state = read_status(run_dir).get("state")
    if state == "finished":  # finished before the sweep was interrupted: report, do not rerun
        rows = read_metrics(run_dir / METRICS)
        ray.tune.report(_numeric(rows[-1]) if rows else {"done_before_resume": 1})
        return
    resume = (run_dir / LAST).exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # started but never checkpointed: start again
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STOP).unlink(missing_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "params.json").write_text(json.dumps(params, indent=2, default=str))

    trainer, attempt = make_trainer(cfg, run_dir, run_dir / LAST if resume else None,
                                    callbacks=[TuneReportCallback()])
    if (tune_root / STOP).exists():  # SIGTERM arrived between the check above and the launch
        (run_dir / STOP).touch()
    metrics = fit_trainer(trainer, run_dir, attempt=attempt, trial_id=trial_id, resumed=resume)
    if metrics["stopped"]:
        raise TrialInterrupted(f"trial {trial_id} stopped at epoch {metrics.get('epoch')} and checkpointed; "
                               "--resume continues it")


def _numeric(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        try:
            out[k] = int(v) if k in ("epoch", "step") else float(v)
        except (TypeError, ValueError):
            pass
    return out


# ----------------------------------------------------------------------------- the sweep (driver)


def _cluster_slots(cfg: Config) -> int:
    """How many trials fit at once: cluster CPUs (GPUs) // workers per trial."""
    import ray

    res = ray.cluster_resources()
    if cfg.train.use_gpu:
        return max(1, int(res.get("GPU", 0) // cfg.train.workers))
    return max(1, int(res.get("CPU", 1) // cfg.train.workers))


def reap_orphan_placement_groups() -> int:
    """Remove placement groups whose creating actor is dead; returns how many.

    Each trial's Ray Train controller (an actor owned by the Tune trial) creates a placement
    group for its workers.  When Tune ends the trial (done, ASHA stop, error) the controller
    dies, but Ray only removes a non-detached group once its creator actor *and* its job (this
    driver) are dead; Train's own PlacementGroupCleaner finds dead controllers through the
    state API, i.e. only with the dashboard running.  Without it the workers' CPUs stayed
    reserved and the next trial waited for them forever (measured, Ray 2.60).  This asks the
    GCS directly (a private accessor: any failure just skips the sweep-up).
    """
    import ray
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        accessor = ray._private.state.state._connect_and_get_accessor()
        removed = 0
        for raw in accessor.get_placement_group_table():
            pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
            if (pg.state != gcs_pb2.PlacementGroupTableData.REMOVED and not pg.is_detached
                    and pg.creator_actor_dead and pg.creator_actor_id
                    and not ray.ActorID(pg.creator_actor_id).is_nil()):  # nil: made by a driver (Tune's own)
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
                removed += 1
        return removed
    except Exception as exc:  # noqa: BLE001 - best effort; Train's cleaner covers clusters with a dashboard
        log.debug("placement group sweep-up skipped: %s", exc)
        return 0


def _train_pgs_alive() -> int:
    """Placement groups, not removed, created by a (Train controller) actor: 0 when all trials let go."""
    import ray
    from ray.core.generated import gcs_pb2

    try:
        accessor = ray._private.state.state._connect_and_get_accessor()
        pgs = [gcs_pb2.PlacementGroupTableData.FromString(raw) for raw in accessor.get_placement_group_table()]
    except Exception:  # noqa: BLE001
        return 0
    return sum(1 for pg in pgs if pg.state != gcs_pb2.PlacementGroupTableData.REMOVED and not pg.is_detached
               and pg.creator_actor_id and not ray.ActorID(pg.creator_actor_id).is_nil())


def release_trial_resources(timeout: float = 10.0) -> None:
    """After the sweep: wait (briefly) for the last trials' controllers to die and free their workers."""
    t0 = time.monotonic()
    while True:
        reap_orphan_placement_groups()
        if not _train_pgs_alive() or time.monotonic() - t0 > timeout:
            return
        time.sleep(0.5)


def _progress_callback(total: int, params: list[Param], tune_dir: Path, metric: str):
    from ray.tune import Callback

    keys = [p.key for p in params if p.kind != "fixed"]

    class ProgressLog(Callback):
        """One line per finished trial instead of Tune's tables; sweeps up dead trials' placement groups."""

        def __init__(self):
            self.done = 0
            self.last_reap = 0.0

        def on_step_begin(self, iteration, trials, **info):
            if time.monotonic() - self.last_reap > 2.0:
                self.last_reap = time.monotonic()
                n = reap_orphan_placement_groups()
                if n:
                    log.debug("removed %d placement group(s) of ended trials", n)

        def _line(self, trial, what: str) -> None:
            self.done += 1
            rows = read_metrics(tune_dir / TRIALS / trial.trial_id / METRICS)
            best = max((float(r.get(metric, "nan")) for r in rows if r.get(metric) not in (None, "")),
                       default=float("nan"))
            shown = "  ".join(f"{k}={_fmt(trial.config.get(k))}" for k in keys)
            log.info("trial %d/%d %s %s: %d epochs, best %s %.4f  %s", self.done, total, trial.trial_id, what,
                     len(rows), metric, best, shown)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "failed" if not _interrupted(trial) else "interrupted")

    return ProgressLog()


def _interrupted(trial) -> bool:
    path = getattr(trial, "error_file", None) or ""
    try:
        return "TrialInterrupted" in Path(path).read_text() if path else False
    except OSError:
        return False


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def prepare_tune_dir(tune_dir: str | Path, cfg: Config, resume: bool) -> tuple[Path, Config]:
    """Create TUNE_DIR (refusing a non-empty one) or check it can be resumed; returns the base config."""
    tune_dir = Path(tune_dir).resolve()
    exp = tune_dir / EXPERIMENT
    if resume:
        from ray.tune import Tuner

        if not (tune_dir / "config.yaml").exists() or not Tuner.can_restore(str(exp)):
            raise RunStateError(f"cannot resume '{tune_dir}': it holds no sweep state; start it without --resume")
        saved = load_config(tune_dir / "config.yaml")
        if config_to_dict(saved) != config_to_dict(cfg):
            log.warning("resuming with the sweep's own config %s (the --config/--set given now are ignored)",
                        tune_dir / "config.yaml")
        (tune_dir / STOP).unlink(missing_ok=True)
        return tune_dir, saved
    if tune_dir.exists() and any(tune_dir.iterdir()):
        hint = ("pass --resume to continue it" if (exp.exists() and not (tune_dir / RESULTS).exists())
                else "choose a new --out")
        raise RunStateError(f"tune directory '{tune_dir}' already exists and is not empty; {hint}")
    (tune_dir / TRIALS).mkdir(parents=True, exist_ok=True)
    save_config(cfg, tune_dir / "config.yaml")
    return tune_dir, cfg


def sweep(cfg: Config, tune_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep described by ``cfg.tune``; returns a summary with the best trial."""
    quiet_tune()
    params = check_tune_config(cfg)
    tune_dir, cfg = prepare_tune_dir(tune_dir, cfg, resume)
    if resume:
        params = check_tune_config(cfg)  # the sweep's own config
    init_started = init_tune_ray()
    import ray
    from ray import tune

    base = config_to_dict(cfg)
    t = cfg.tune
    n_trials = t.num_samples * grid_size(params)
    slots = _cluster_slots(cfg)
    concurrent = min(t.max_concurrent or slots, slots, n_trials)
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, tune_dir=str(tune_dir)),
                                    {"cpu": 0, "memory": TRIAL_MEMORY})
    progress = _progress_callback(n_trials, params, tune_dir, t.metric)
    run_config = tune.RunConfig(name=EXPERIMENT, storage_path=str(tune_dir), verbose=0, callbacks=[progress],
                                failure_config=tune.FailureConfig(max_failures=0))
    if t.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs,
                                                  grace_period=min(t.grace_period, cfg.train.epochs),
                                                  reduction_factor=t.reduction_factor)
    else:
        scheduler = tune.schedulers.FIFOScheduler()
    log.info("tune: %d trials (%s, %d at once, %d training worker(s) each) -> %s", n_trials, t.scheduler,
             concurrent, cfg.train.workers, tune_dir)

    stopping = {"flag": False}

    def on_term(signum, frame):  # Slurm time limit / preemption: every trial checkpoints and stops
        log.warning("received signal %d: stopping the sweep (trials checkpoint; --resume continues)", signum)
        stopping["flag"] = True
        (tune_dir / STOP).touch()
        for d in (tune_dir / TRIALS).iterdir():
            if d.is_dir() and read_status(d).get("state") == "running":
                (d / STOP).touch()

    previous = {s: signal.signal(s, on_term) for s in (signal.SIGTERM,)}
    t0 = time.time()
    try:
        if resume:
            tuner = tune.Tuner.restore(str(tune_dir / EXPERIMENT), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=to_ray(params),
                tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                            scheduler=scheduler, max_concurrent_trials=concurrent,
                                            search_alg=_search_alg(t.seed)),
                run_config=run_config,
            )
        grid = tuner.fit()
        release_trial_resources()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if init_started:
            ray.shutdown()
    (tune_dir / STOP).unlink(missing_ok=True)
    rows = collect_results(grid, tune_dir, cfg, params)
    settle_statuses(rows, tune_dir)
    write_results(rows, tune_dir / RESULTS)
    summary: dict[str, Any] = {"trials": len(rows), "seconds": round(time.time() - t0, 1), "rows": rows,
                               "stopped": stopping["flag"] or any(r["status"] == "interrupted" for r in rows)}
    best = pick_best(rows, t.metric, t.mode)
    summary["best"] = best
    if best is not None:
        export_best(tune_dir, best["trial_id"])
    return summary


def _search_alg(seed: int | None):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed) if seed is not None else None


# ----------------------------------------------------------------------------- results


def collect_results(grid, tune_dir: Path, cfg: Config, params: list[Param]) -> list[dict[str, Any]]:
    """One row per trial from Tune's trial list and each trial's own metrics.csv / status.json."""
    trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [])
    rows = []
    for trial in trials:
        run_dir = tune_dir / TRIALS / trial.trial_id
        metrics = read_metrics(run_dir / METRICS)
        status = read_status(run_dir)
        epochs = len(metrics)
        target = cfg.train.epochs
        try:
            target = config_from_dict(_trial_yaml(run_dir)).train.epochs
        except Exception:  # noqa: BLE001 - a trial that never started has no config.yaml
            pass
        if trial.status == "ERROR":
            state = "interrupted" if _interrupted(trial) else "failed"
        elif status.get("state") == "finished" and epochs >= target:
            state = "finished"
        elif trial.status == "TERMINATED":
            state = "early-stopped" if epochs < target else "finished"
        else:
            state = trial.status.lower()
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": state, "epochs": epochs}
        for p in params:
            row[p.key] = trial.config.get(p.key)
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


def settle_statuses(rows: list[dict[str, Any]], tune_dir: Path) -> None:
    """Tune ends a trial that ASHA stops - early, or at max_t right after its last report - by
    removing its placement group, so the trial's training dies mid-call and its status.json
    says "running" or "failed" (ActorDiedError), which a later look or ``xtrain train
    --resume`` would take for a crash.  Tune's verdict is what happened: write it down."""
    for row in rows:
        run_dir = tune_dir / TRIALS / row["trial_id"]
        state = read_status(run_dir).get("state")
        if row["status"] in ("early-stopped", "finished") and state in ("running", "failed"):
            write_status(run_dir, state=row["status"], epochs=row["epochs"], error=None)


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
    """The trial with the best (max/min) per-epoch ``metric`` that has a model.pt."""
    key = f"best_{metric}" if metric != "val_mean_dice" else "best_val_mean_dice"
    if metric == "best_mean_dice":
        key = "best_val_mean_dice"
    cands = [r for r in rows if r.get("model_path") and r.get(key) is not None]
    if not cands:
        return None
    return (max if mode == "max" else min)(cands, key=lambda r: r[key])


def export_best(tune_dir: Path, trial_id: str) -> None:
    """TUNE_DIR/best.yaml (resolved config of the best trial) and TUNE_DIR/best/model.pt."""
    run_dir = tune_dir / TRIALS / trial_id
    cfg = load_config(run_dir / "config.yaml")
    save_config(cfg, tune_dir / BEST_YAML)
    (tune_dir / "best").mkdir(exist_ok=True)
    tmp = tune_dir / "best" / f".{BEST}.tmp"
    shutil.copy2(run_dir / BEST, tmp)
    tmp.replace(tune_dir / "best" / BEST)
    (tune_dir / "best" / "trial").write_text(trial_id + "\n")


