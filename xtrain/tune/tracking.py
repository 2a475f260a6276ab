"""``xtrain tune --track``: Tune's own MLflow and TensorBoard logger callbacks on the Tuner.

What each does and why it is split so (Train V2 refuses Tune callbacks; no directory for
``TBXLoggerCallback``): see xtrain/train/tracking.py.  Here:
  * ``MLflowLoggerCallback`` (``ray.air.integrations.mlflow``) on the driver: one MLflow run per
    trial, named after the trial and tagged ``trial_name``, ``xtrain_tune_dir``; its parameters are
    ``trial.config``, which ``param_space`` makes the whole resolved config (the sweep's base config,
    flattened, as constants beside the searched keys); its metrics every result Tune gets (each
    epoch, through ``TuneReportCallback``) at step = Tune's iteration = the epoch;
  * ``ModelArtifact``: logs a trial's model.pt into that run when the trial completes (finished or
    stopped by the scheduler); the logger callback's ``save_artifact`` uploads Tune's own trial
    folder, which does not hold the model (it is in TUNE_DIR/trials/<id>/);
  * ``TBXLoggerCallback`` (``ray.tune.logger``): Tune's events of each trial, with HPARAMS, in
    TUNE_DIR/experiment/<trial>/ (``tensorboard --logdir TUNE_DIR/experiment``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..train.loop import BEST
from ..train.tracking import Tracking, allow_file_store, flat_params

log = logging.getLogger(__name__)

TRIAL_NAME_TAG = "trial_name"  # the tag MLflowLoggerCallback gives each trial's run (str(trial))
TUNE_DIR_TAG = "xtrain_tune_dir"


def param_space(space: dict[str, Any], base: dict[str, Any], track: Tracking | None) -> dict[str, Any]:
    """Tune's ``param_space``: the searched keys, and with MLflow tracking every other key of the
    resolved config as a constant, so that the logger callback logs the whole config as the trial's
    parameters.  Constants are not part of a trial's name (Tune names trials by sampled values)."""
    if not track or not track.mlflow:
        return space
    fixed = {k: v for k, v in flat_params(base).items()
             if k not in space and not any(k.startswith(s + ".") for s in space)}
    return {**fixed, **space}


def tune_callbacks(track: Tracking | None, tune_dir: Path, trials_dir: Path) -> list:
    """The Tune callbacks ``--track`` asks for (none without it)."""
    if not track:
        return []
    callbacks: list = []
    if track.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        allow_file_store(track.mlflow)  # this process is the driver: the callbacks log from here
        callbacks.append(model_artifact_callback(track.mlflow, track.experiment, tune_dir, trials_dir))
        callbacks.append(MLflowLoggerCallback(tracking_uri=track.mlflow, experiment_name=track.experiment,
                                              tags={"xtrain_command": "tune", TUNE_DIR_TAG: str(tune_dir)}))
    if track.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())  # Tune adds one by default too; here it is explicit
    return callbacks


def trial_run_id(uri: str, experiment: str, tune_dir: Path, trial_name: str) -> str | None:
    """The id of the MLflow run MLflowLoggerCallback made for ``trial_name`` in the sweep ``tune_dir``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.{TRIAL_NAME_TAG} = '{trial_name}'")
    runs = [r for r in runs if r.data.tags.get(TUNE_DIR_TAG) == str(tune_dir)]
    return runs[0].info.run_id if runs else None


def model_artifact_callback(uri: str, experiment: str, tune_dir: Path, trials_dir: Path):
    """A Tune callback logging TRIALS_DIR/<id>/model.pt into the trial's MLflow run when the trial
    completes (defined here so that Ray is imported only when a sweep runs, as in sweep.py)."""
    from ray.tune import Callback

    class ModelArtifact(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            model = trials_dir / trial.trial_id / BEST
            run_id = trial_run_id(uri, experiment, tune_dir, str(trial)) if model.exists() else None
            if run_id is None:
                log.warning("trial %s: no model.pt or no MLflow run to log it into", trial.trial_id)
                return
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).log_artifact(run_id, str(model))

    return ModelArtifact()
