"""``xtrain tune --track``: a 2-trial sweep shows one MLflow run per trial (Tune's MLflowLoggerCallback)
with the whole resolved config as parameters, every epoch's metrics equal to the trial's metrics.csv
and the trial's model.pt as an artifact; TensorBoard events hold each trial's epochs (rank 0, in
DIR/<trial id>) and Tune's own view (TBXLoggerCallback, in TUNE_DIR/experiment/<trial>/)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from xtrain.train.tracking import DEFAULT_EXPERIMENT, flat_params, parse_track
from xtrain.tune.sweep import sweep
from xtrain.tune.tracking import TUNE_DIR_TAG, param_space

pytestmark = pytest.mark.slow


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_param_space_adds_the_config_as_constants_only_with_mlflow():
    base = {"optim": {"lr": 0.1, "beta1": 0.9}, "model": {"kwargs": {"width": 8}}}
    space = {"optim.lr": "SEARCHED", "model.kwargs": "SEARCHED"}
    assert param_space(space, base, None) == space
    assert param_space(space, base, parse_track(["tensorboard:tb"])) == space
    assert param_space(space, base, parse_track(["mlflow:./mlruns"])) == {"optim.beta1": 0.9, **space}


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(tag)]


def test_a_tracked_sweep_from_a_model_has_one_mlflow_run_per_trial_and_tensorboard_events(ray_cluster, train_store,
                                                                                        tiny_model, tmp_path,
                                                                                        monkeypatch):
    """Also the few-labels issue's "a sweep can start from a model": every trial fine-tunes ``tiny_model``
    (``train.init``) and records it as its parent (one sweep for both: each costs the suite ~30 s)."""
    from mlflow import MlflowClient

    from xtrain.models.checkpoint import load_checkpoint
    from xtrain.provenance import file_sha256

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "tune"
    cfg = tiny_config(train_store, "train.workers=1", "train.epochs=2", "tune.space={optim.lr: {grid: [0.001, 0.01]}}",
                      "tune.scheduler=fifo", "tune.num_samples=1", "data.slices=3", f"train.init={tiny_model}")
    track = parse_track([f"mlflow:{tmp_path / 'mlruns'}", f"tensorboard:{tmp_path / 'tb'}"])
    summary = sweep(cfg, out, track=track)
    assert summary["trials"] == 2 and not summary["stopped"]
    trials = {r["trial_id"]: r for r in rows(out / "results.csv")}

    client = MlflowClient(tracking_uri=track.mlflow)
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.data.tags[TUNE_DIR_TAG] for r in runs} == {str(out)}
    seen = set()
    for run in runs:
        (trial_id,) = [t for t in trials if run.data.tags["trial_name"].endswith(t)]
        seen.add(trial_id)
        trial_dir = out / "trials" / trial_id
        assert run.info.status == "FINISHED"
        # the whole resolved config of the trial: its searched lr, and every other key as a constant
        saved = flat_params(yaml.safe_load((trial_dir / "config.yaml").read_text()))
        assert float(run.data.params["optim.lr"]) == float(trials[trial_id]["optim.lr"]) == saved["optim.lr"]
        assert {k: run.data.params[k] for k in saved} == {k: str(v) for k, v in saved.items()}
        csv_rows = rows(trial_dir / "metrics.csv")
        for key in ("train_loss", "val_mean_dice", "samples_per_s"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in history] == [1, 2], key
            assert [m.value for m in history] == pytest.approx([float(r[key]) for r in csv_rows], rel=1e-9), key
        got = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "download" / trial_id))
        assert Path(got).read_bytes() == (trial_dir / "model.pt").read_bytes()
        parent = {"path": str(tiny_model.resolve()), "sha256": file_sha256(tiny_model)}
        assert load_checkpoint(trial_dir / "model.pt")["parent"] == parent  # started from the init model

        curve = scalars(tmp_path / "tb" / trial_id, "train/loss")
        assert curve == [(e, pytest.approx(float(r["train_loss"]), rel=1e-6)) for e, r in enumerate(csv_rows, 1)]
    assert seen == set(trials)

    tune_view = [d for d in (out / "experiment").iterdir() if d.is_dir() and list(d.glob("events.out.tfevents.*"))]
    assert len(tune_view) == 2
    for d in tune_view:
        assert [step for step, _ in scalars(d, "ray/tune/train_loss")] == [1, 2]
