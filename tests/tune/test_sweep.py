"""Ray Tune sweeps on the 2-node test cluster: a 2-trial ASHA sweep end to end, and a sweep
stopped by SIGTERM after its first trial, resumed without rerunning that trial."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import pytest
import torch

from conftest import tiny_config
from xtrain.config import load_config
from xtrain.errors import RunStateError
from xtrain.train.ray_trainer import read_status
from xtrain.tune.sweep import sweep

pytestmark = pytest.mark.slow



def tiny(store, *overrides):
    return tiny_config(store, "train.workers=1", "train.epochs=2", *overrides)


def results(tune_dir):
    with open(tune_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def test_two_trial_asha_sweep_writes_results_best_config_and_model(ray_cluster, train_store, tmp_path):
    out = tmp_path / "tune"
    cfg = tiny(train_store, "tune.space={optim.lr: {grid: [0.0003, 0.01]}, optim.beta1: {uniform: [0.5, 0.9]}}",
               "tune.scheduler=asha", "tune.grace_period=1", "tune.num_samples=1")
    t0 = time.time()
    summary = sweep(cfg, out)
    elapsed = time.time() - t0
    rows = results(out)
    assert len(rows) == 2 and summary["trials"] == 2 and not summary["stopped"]
    assert sorted(float(r["optim.lr"]) for r in rows) == [0.0003, 0.01]
    for r in rows:
        assert 0.5 <= float(r["optim.beta1"]) <= 0.9
        assert r["status"] in ("finished", "early-stopped"), r  # ASHA may stop the worse one after epoch 1
        assert int(r["epochs"]) == (2 if r["status"] == "finished" else 1)
        assert 0.0 <= float(r["best_val_mean_dice"]) <= 1.0 and r["final_val_mean_dice"] != ""
        trial_dir = out / "trials" / r["trial_id"]
        assert (trial_dir / "model.pt").exists() and (trial_dir / "metrics.csv").exists()
        assert json.loads((trial_dir / "status.json").read_text())["state"] == r["status"], (trial_dir / "status.json").read_text()
        assert load_config(trial_dir / "config.yaml").optim.lr == float(r["optim.lr"])
    best_row = max(rows, key=lambda r: float(r["best_val_mean_dice"]))
    best = load_config(out / "best.yaml")
    assert best.optim.lr == float(best_row["optim.lr"]) and best.optim.beta1 == float(best_row["optim.beta1"])
    assert best.train.epochs == 2 and best.data.store == str(train_store)
    assert summary["best"]["trial_id"] == best_row["trial_id"]
    ckpt = torch.load(out / "best" / "model.pt", weights_only=False)
    assert ckpt["config"]["optim"]["lr"] == best.optim.lr
    with pytest.raises(RunStateError, match="already exists"):  # never clobbered without --resume
        sweep(cfg, out)
    assert elapsed < 150


def test_sigterm_stops_the_sweep_and_resume_does_not_rerun_finished_trials(ray_cluster, train_store, tmp_path):
    out = tmp_path / "tune"
    cfg = tiny(train_store, "tune.space={optim.lr: {grid: [0.001, 0.003, 0.01]}}", "tune.scheduler=fifo",
               "tune.max_concurrent=1", "tune.num_samples=1")

    def finished_trials():
        trials = out / "trials"
        return [d for d in trials.iterdir() if read_status(d).get("state") == "finished"] if trials.exists() else []

    def send_term():
        t0 = time.time()
        while time.time() - t0 < 150 and not finished_trials():
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=send_term)
    t.start()
    stopped = sweep(cfg, out)
    t.join()
    assert stopped["stopped"]
    rows = {r["trial_id"]: r for r in results(out)}
    done = [k for k, r in rows.items() if r["status"] == "finished"]
    assert len(rows) == 3 and len(done) == 1, rows
    assert all(r["status"] == "interrupted" for k, r in rows.items() if k not in done)
    first = out / "trials" / done[0]
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}

    resumed = sweep(cfg, out, resume=True)
    assert not resumed["stopped"]
    rows = results(out)
    assert len(rows) == 3 and all(r["status"] == "finished" and r["epochs"] == "2" for r in rows), rows
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()} == before  # not rerun
    assert (out / "best" / "model.pt").exists()
    assert sorted(float(r["optim.lr"]) for r in rows) == [0.001, 0.003, 0.01]
