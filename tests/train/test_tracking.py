"""``--track``: the spec parsing (refusals are one line, exit 2), and a tiny 2-worker ``xtrain train`` run
read back from a real local MLflow store (mlflow's client) and real TensorBoard event files
(tensorboard's EventAccumulator): its parameters, per-epoch metrics equal to metrics.csv with a
falling loss, and model.pt as an artifact."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from xtrain.cli import main
from xtrain.errors import ConfigError, UnknownNameError
from xtrain.train.tracking import DEFAULT_EXPERIMENT, flat_params, parse_track, tensorboard_tag


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_track_specs_resolve_to_absolute_places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    t = parse_track(["mlflow:./mlruns", "tensorboard:tb"])
    assert t.mlflow == (tmp_path / "mlruns").resolve().as_uri() and t.mlflow.startswith("file:///")
    assert t.tensorboard == str((tmp_path / "tb").resolve()) and t.experiment == DEFAULT_EXPERIMENT
    assert parse_track(["mlflow:file:mlruns"]).mlflow == t.mlflow
    assert parse_track(["mlflow:sqlite:///m.db"]).mlflow == f"sqlite:///{(tmp_path / 'm.db').resolve()}"
    assert parse_track(["mlflow:http://mlflow.example.org:5000"]).mlflow == "http://mlflow.example.org:5000"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "soc")
    assert parse_track(["mlflow:./mlruns"]).experiment == "soc"
    assert not parse_track(None) and not parse_track([])


@pytest.mark.parametrize("specs, error, message", [
    (["wandb:proj"], UnknownNameError, "unknown tracker 'wandb' in --track wandb:proj"),
    (["mlfow:./mlruns"], UnknownNameError, "did you mean 'mlflow'"),
    (["mlflow"], ConfigError, "give where to track after 'mlflow:', e.g. --track mlflow:./mlruns"),
    (["tensorboard: "], ConfigError, "e.g. --track tensorboard:runs/tb"),
    (["mlflow:a", "mlflow:b"], ConfigError, "--track mlflow is given twice (a and b)"),
])
def test_a_bad_track_spec_is_refused_naming_it(specs, error, message):
    with pytest.raises(error) as err:
        parse_track(specs)
    assert message in str(err.value)


def test_a_tracker_whose_package_is_missing_is_refused_naming_the_extra(monkeypatch):
    # hide mlflow from the import system as an install without the [track] extra would
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"--track mlflow: needs the mlflow package; install it with pip install "
                                          r"'xtrain\[track\]'"):
        parse_track(["mlflow:./mlruns"])


@pytest.mark.parametrize("command", ["train", "tune"])
def test_the_cli_refuses_a_bad_track_spec_in_one_line_before_starting(command, tmp_path, capsys):
    code = main([command, "--config", "configs/tiny.yaml", "--data", str(tmp_path / "none.zarr"), "--out",
                 str(tmp_path / "out"), "--track", "wandb:proj"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"xtrain {command}: error: unknown tracker 'wandb'") and not (tmp_path / "out").exists()


def test_flat_params_and_tensorboard_tags():
    values = {"optim": {"lr": 0.003, "d_lr": None}, "model": {"kwargs": {"width": 8}}, "data": {"z": [0, 10]},
              "tune": {"space": {}}}
    assert flat_params(values) == {"optim.lr": 0.003, "optim.d_lr": None, "model.kwargs.width": 8,
                                   "data.z": "[0, 10]", "tune.space": "{}"}
    assert [tensorboard_tag(k) for k in ("train_loss", "val_dice_ni", "samples_per_s")] == \
        ["train/loss", "val/dice_ni", "samples_per_s"]


@pytest.mark.slow
def test_a_tracked_train_run_lands_in_mlflow_and_tensorboard(ray_cluster, train_store, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # mlflow:./mlruns is resolved against the working directory
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's own client reads the file store
    out = tmp_path / "run"
    code = main(["train", "--config", str(Path(__file__).parents[2] / "configs/tiny.yaml"), "--data",
                 str(train_store), "--out", str(out), "--workers", "2", "--track", "mlflow:./mlruns",
                 "--track", "tensorboard:tb", "--set", "data.patch=32", "--set", "data.samples_per_epoch=64",
                 "--set", "data.val_mode=slab", "--set", "train.epochs=3"])
    assert code == 0
    csv_rows = rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in csv_rows] == [1, 2, 3]

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])  # two DDP workers, one run: rank 0 logs
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.tags["xtrain_run_dir"] == str(out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert run.data.params == {k: str(v) for k, v in flat_params(saved).items()}
    assert run.data.params["data.val_mode"] == "slab" and run.data.params["train.workers"] == "2"
    for key in ("train_loss", "val_mean_dice", "val_dice_pore", "val_tpb_ratio", "val_fraction_error_pp",
                "samples_per_s"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in csv_rows], rel=1e-9), key
    loss = [float(r["train_loss"]) for r in csv_rows]
    assert loss[-1] < loss[0]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.pt"]
    got = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "download"))
    assert Path(got).read_bytes() == (out / "model.pt").read_bytes()
    assert (out / "mlflow_run_id").read_text().strip() == run.info.run_id  # what a resumed run continues

    events = EventAccumulator(str(tmp_path / "tb" / "run"))
    events.Reload()
    for tag, key in (("train/loss", "train_loss"), ("val/mean_dice", "val_mean_dice"),
                     ("val/tpb_ratio", "val_tpb_ratio"), ("samples_per_s", "samples_per_s")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3], tag
        assert [s.value for s in scalars] == pytest.approx([float(r[key]) for r in csv_rows], rel=1e-6), tag


@pytest.mark.slow
def test_a_stopped_and_resumed_run_continues_its_mlflow_run(ray_cluster, train_store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from conftest import tiny_config
    from xtrain.runtime import StopRequest
    from xtrain.train.ray_trainer import train

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    track = parse_track([f"mlflow:{tmp_path / 'mlruns'}"])
    cfg = tiny_config(train_store, "train.workers=1", "train.epochs=6")
    out = tmp_path / "run"
    stop = StopRequest()

    def stop_after_first_epoch() -> bool:
        if (out / "metrics.csv").exists():
            stop.set("test")
        return stop()

    first = train(cfg, out, should_stop=stop_after_first_epoch, track=track)
    assert first["stopped"] and first["epoch"] < 6
    client = MlflowClient(tracking_uri=track.mlflow)
    (run,) = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    assert run.info.status == "KILLED" and not client.list_artifacts(run.info.run_id)

    assert not train(cfg, out, resume=True, track=track)["stopped"]
    (again,) = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # every epoch once, across both attempts
    assert sorted(m.value for m in history) == sorted(float(r["train_loss"]) for r in rows(out / "metrics.csv"))
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.pt"]


def test_a_store_that_does_not_work_is_refused_in_one_line_before_training(tmp_path, capsys, train_store):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for spec, message in ((f"mlflow:{blocker / 'mlruns'}", "the MLflow store does not work"),
                          (f"tensorboard:{blocker / 'tb'}", "cannot make the folder")):
        code = main(["train", "--config", "configs/tiny.yaml", "--data", str(train_store), "--out",
                     str(tmp_path / "out"), "--track", spec])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "out").exists()
