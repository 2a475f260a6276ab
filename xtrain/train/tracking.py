"""Experiment tracking with the field's tools (``--track``): MLflow and TensorBoard.

    xtrain train ... --track mlflow:./mlruns --track tensorboard:runs/tb
    xtrain tune  ... --track mlflow:http://mlflow.example.org:5000

A run logs its parameters (the resolved config, flattened to dotted keys such as ``optim.lr``),
every epoch's metrics (those of RUN_DIR/metrics.csv: ``train_loss``, ``val_mean_dice``,
``val_dice_<class>``, ``val_tpb_ratio`` and ``val_fraction_error_pp`` with ``data.val_mode: slab``,
``samples_per_s``, ``lr``, ... at step = epoch) and, when it finishes, its model.pt as an artifact.

Which of Ray's integrations does what (Ray 2.60, checked in its source): Ray Train V2 refuses
Tune callbacks in ``ray.train.RunConfig`` ("All callbacks must be instances of
``ray.train.UserCallback``", ray issue 49454), so
  * ``xtrain train``: rank 0 of the worker group calls ``ray.air.integrations.mlflow.setup_mlflow``
    (Ray's MLflow integration for a training function) and logs with the ``mlflow`` module it
    returns; a resumed run (``--resume``, or Ray restarting the worker group) continues the same
    MLflow run (its id is kept in RUN_DIR/mlflow_run_id, handed to MLflow as ``MLFLOW_RUN_ID``).
    Ray has no TensorBoard writer for a training function (``TBXLoggerCallback`` is a Tune
    callback), so rank 0 writes events with ``torch.utils.tensorboard.SummaryWriter`` into
    DIR/<run folder name>.
  * ``xtrain tune`` (tune/sweep.py): Tune's ``MLflowLoggerCallback`` on the Tuner (one MLflow run
    per trial, on the driver) and ``TBXLoggerCallback`` (Tune's view of every trial, with its
    HPARAMS, in TUNE_DIR/experiment/<trial>/: the callback takes no directory); each trial's
    rank 0 writes its epochs into DIR/<trial id> as ``xtrain train`` does, and ``ModelArtifact``
    logs a finished trial's model.pt into its MLflow run (the callback can only upload Tune's
    own trial folder, which does not hold it).

MLflow's file store (a local folder: ``mlflow:./mlruns``, for sites where data cannot leave)
is in maintenance mode in MLflow 3 and refused unless ``MLFLOW_ALLOW_FILE_STORE=true``, which
``allow_file_store`` sets for a ``file:`` URI; ``mlflow:sqlite:///mlflow.db`` is MLflow's
recommended local store and works as well.  A local store must be on a file system every
node sees (as RUN_DIR must); else use a tracking server (``mlflow:http://...``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)

KINDS = ("mlflow", "tensorboard")
# the package each kind imports (torch's SummaryWriter needs tensorboard)
_PACKAGE = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
DEFAULT_EXPERIMENT = "xtrain"  # MLflow experiment of every run unless MLFLOW_EXPERIMENT_NAME says otherwise
MLFLOW_RUN_ID_FILE = "mlflow_run_id"  # RUN_DIR/mlflow_run_id: the MLflow run a resumed run continues
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Tracking:
    """Where a run or sweep is tracked: an MLflow tracking URI (a local store as an absolute
    ``file:`` or ``sqlite:`` URI) and/or a TensorBoard log directory (absolute)."""

    mlflow: str | None = None
    tensorboard: str | None = None
    experiment: str = DEFAULT_EXPERIMENT

    def __bool__(self) -> bool:
        return bool(self.mlflow or self.tensorboard)


def mlflow_uri(target: str) -> str:
    """An MLflow tracking URI from what follows ``mlflow:``: a local path (``./mlruns``) or a
    relative ``file:``/``sqlite:`` URI becomes absolute (Ray workers run in other directories);
    any other URI (``http://``, ``databricks``, ...) is passed on as it is."""
    if target.startswith("file:") or not _SCHEME.match(target):
        path = target[len("file:"):] if target.startswith("file:") else target
        path = path[2:] if path.startswith("//") else path  # file://... -> /...
        return Path(path).expanduser().resolve().as_uri()
    if target.startswith("sqlite:///") and not target.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(target[len("sqlite:///"):]).resolve())
    return target


def parse_track(specs: list[str] | None) -> Tracking:
    """``--track`` values (``KIND:TARGET``, repeatable, one per kind) -> ``Tracking``.

    Raises ``UnknownNameError`` for a kind other than mlflow/tensorboard, ``ConfigError`` for an
    empty target or a kind given twice."""
    found: dict[str, str] = {}
    for spec in specs or []:
        kind, sep, target = spec.partition(":")
        if kind not in KINDS:
            raise UnknownNameError("tracker", kind, KINDS, where=f"--track {spec} (give mlflow:URI or tensorboard:DIR)")
        if not sep or not target.strip():
            example = "mlflow:./mlruns" if kind == "mlflow" else "tensorboard:runs/tb"
            raise ConfigError(f"--track {spec}: give where to track after '{kind}:', e.g. --track {example}")
        if kind in found:
            raise ConfigError(f"--track {kind} is given twice ({found[kind]} and {target}); give it once")
        found[kind] = target.strip()
    for kind in found:
        if find_spec(_PACKAGE[kind]) is None:  # refuse before any run folder is made, not on a Ray worker
            raise ConfigError(f"--track {kind}: needs the {_PACKAGE[kind]} package; "
                              "install it with pip install 'xtrain[track]'")
    return Tracking(
        mlflow=mlflow_uri(found["mlflow"]) if "mlflow" in found else None,
        tensorboard=str(Path(found["tensorboard"]).expanduser().resolve()) if "tensorboard" in found else None,
        experiment=os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
    )


def tracking_to_dict(tracking: Tracking | None) -> dict[str, Any] | None:
    """What travels to the Ray workers (``train_loop_config``): plain values."""
    return None if not tracking else {"mlflow": tracking.mlflow, "tensorboard": tracking.tensorboard,
                                      "experiment": tracking.experiment}


def check_tracking(track: Tracking | None) -> None:
    """In the driver, before any worker starts: the MLflow store answers (its experiment is made
    here if new) and the TensorBoard folder can be made; else one ``ConfigError`` line naming it.

    A server that does not answer takes MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``)."""
    if not track:
        return
    if track.tensorboard:
        try:
            Path(track.tensorboard).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--track tensorboard:{track.tensorboard}: cannot make the folder ({exc.strerror or exc}); "
                              "give a folder you can write") from None
    if track.mlflow:
        from mlflow import MlflowClient

        allow_file_store(track.mlflow)
        try:
            client = MlflowClient(tracking_uri=track.mlflow)
            if client.get_experiment_by_name(track.experiment) is None:
                client.create_experiment(track.experiment)
        except Exception as exc:  # noqa: BLE001 - whatever MLflow raises, the store cannot be used
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(f"--track mlflow:{track.mlflow}: the MLflow store does not work "
                              f"({type(exc).__name__}: {first[:300]}); check the URI or start the server") from None


def allow_file_store(uri: str | None) -> None:
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE=true`` (see the module
    docstring); set it in this process (the CLI driver or a Ray worker: the edges) for a ``file:`` URI."""
    if uri and uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict -> {"optim.lr": 0.003, "model.kwargs.width": 8, ...}: scalars as they
    are, lists as JSON text (MLflow parameters are text; Tune would read a list as a search space)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        elif isinstance(value, (list, tuple, dict)):
            out[name] = json.dumps(value, default=str)
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def epoch_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of an epoch's report (booleans such as ``stopped`` left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tensorboard_tag(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``val_dice_ni`` -> ``val/dice_ni``: TensorBoard groups charts by
    the part before the slash; other keys (``samples_per_s``, ``lr``) stay as they are."""
    return key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key


# ----------------------------------------------------------------------------- rank 0 of a Ray Train run


class RunTracker:
    """Rank 0's trackers for one Ray Train run: ``epoch(metrics)`` after each epoch, ``close(...)``
    at the end.  Built by ``start_run_tracking`` inside the Ray Train worker (never in loop.py)."""

    def __init__(self, mlflow: Any = None, writer: Any = None):
        self.mlflow, self.writer = mlflow, writer

    def epoch(self, metrics: dict[str, Any]) -> None:
        """Log one epoch's report at step = epoch.  A tracker that fails (a tracking server gone) is
        warned about once and dropped: the training, hours of it perhaps, goes on."""
        if metrics.get("stopped"):
            return  # a stop request's report: not an epoch
        values = epoch_metrics(metrics)
        step = int(values.get("epoch", 0))
        if self.mlflow is not None:
            try:
                self.mlflow.log_metrics(values, step=step)
            except Exception as exc:  # noqa: BLE001 - any MLflow failure: the same warning
                log.warning("MLflow logging failed at epoch %d (%s: %s); no more MLflow logging for this run",
                            step, type(exc).__name__, str(exc)[:300])
                self.mlflow = None
        if self.writer is not None:
            for key, value in values.items():
                if key != "epoch":
                    self.writer.add_scalar(tensorboard_tag(key), value, global_step=step)
            self.writer.flush()  # a trial Tune ends kills this process: keep what it wrote

    def close(self, status: str, model: Path | None = None) -> None:
        """End the MLflow run with ``status`` (FINISHED, KILLED: stopped to resume, FAILED),
        logging ``model`` (model.pt) as an artifact when given and present."""
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            try:
                if model is not None and model.exists():
                    self.mlflow.log_artifact(str(model))
                self.mlflow.end_run(status=status)
            except Exception as exc:  # noqa: BLE001 - as in epoch(): warn, never fail a trained run
                log.warning("MLflow could not record the end of the run (%s: %s)", type(exc).__name__,
                            str(exc)[:300])


def start_run_tracking(track: dict[str, Any] | None, config: dict[str, Any], run_dir: Path,
                       tensorboard_name: str | None = None) -> RunTracker | None:
    """Open rank 0's trackers of a Ray Train run (call it on rank 0 only; ``None`` when nothing is tracked).

    MLflow: ``setup_mlflow`` starts (or, after a resume, continues) the run named after RUN_DIR and
    logs ``flat_params(config)``.  TensorBoard: a SummaryWriter into TRACK_DIR/<tensorboard_name or
    RUN_DIR's name>."""
    if not track or not (track.get("mlflow") or track.get("tensorboard")):
        return None
    tracker = RunTracker()
    if track.get("mlflow"):
        try:
            tracker.mlflow = _start_mlflow(track, config, run_dir)
        except Exception as exc:  # noqa: BLE001 - the driver checked the store (check_tracking): warn, train on
            log.warning("MLflow tracking could not start (%s: %s); training without it", type(exc).__name__,
                        str(exc)[:300])
    if track.get("tensorboard"):
        # Ray has no TensorBoard integration inside a Ray Train function (its TBXLoggerCallback is a
        # Tune callback, which Train V2 refuses): torch's own writer, on rank 0 only
        from torch.utils.tensorboard import SummaryWriter

        tracker.writer = SummaryWriter(log_dir=str(Path(track["tensorboard"]) / (tensorboard_name or run_dir.name)))
        tracker.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat_params(config).items()))
    return tracker


def _start_mlflow(track: dict[str, Any], config: dict[str, Any], run_dir: Path):
    from ray.air.integrations.mlflow import setup_mlflow

    allow_file_store(track["mlflow"])
    id_file = run_dir / MLFLOW_RUN_ID_FILE
    previous = id_file.read_text().strip() if id_file.exists() else None
    if previous:
        # mlflow.start_run (which setup_mlflow calls) continues the run MLFLOW_RUN_ID names; this is
        # a dedicated Ray Train worker process, and the variable is removed again right after
        os.environ["MLFLOW_RUN_ID"] = previous
    try:
        mlflow = setup_mlflow(config=None if previous else flat_params(config), tracking_uri=track["mlflow"],
                              experiment_name=track.get("experiment") or DEFAULT_EXPERIMENT,
                              create_experiment_if_not_exists=True, run_name=run_dir.name,
                              tags={"xtrain_command": "train", "xtrain_run_dir": str(run_dir)})
    finally:
        os.environ.pop("MLFLOW_RUN_ID", None)
    run_id = mlflow.active_run().info.run_id
    if previous != run_id:
        from ..io import atomic_write

        atomic_write(id_file, run_id + "\n", what="the MLflow run id")
    log.info("tracking in MLflow %s: experiment '%s', run %s", track["mlflow"], track.get("experiment"), run_id)
    return mlflow
