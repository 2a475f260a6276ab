"""Ray Tune sweeps on the 2-node test cluster: a 2-trial ASHA sweep end to end; a sweep stopped
(should_stop, called off the main thread) after its first trial and resumed without rerunning
it; ``xtrain tune`` getting SIGUSR1 mid-trial (exit 3, "interrupted", no best.yaml, --resume to
full length, a second --resume "already complete"); Tune's own SIGUSR1 handler kept out."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from xtrain.cli import main
from xtrain.config import load_config
from xtrain.errors import RunStateError
from xtrain.runtime import StopRequest
from xtrain.train.run_dir import read_status
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
    summary = sweep(cfg, out)
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
    ckpt = torch.load(out / "best" / "model.pt", weights_only=True)
    assert ckpt["config"]["optim"]["lr"] == best.optim.lr
    with pytest.raises(RunStateError, match="already exists"):  # never clobbered without --resume
        sweep(cfg, out)


def test_a_stop_request_ends_the_sweep_and_resume_does_not_rerun_finished_trials(ray_cluster, train_store, tmp_path,
                                                                                  caplog):
    caplog.set_level("INFO", logger="xtrain")
    out = tmp_path / "tune"
    cfg = tiny(train_store, "tune.space={optim.lr: {grid: [0.001, 0.01]}}", "tune.scheduler=fifo",
               "tune.max_concurrent=1", "tune.num_samples=1")

    def finished_trials():
        trials = out / "trials"
        return [d for d in trials.iterdir() if read_status(d).get("state") == "finished"] if trials.exists() else []

    stop, box = StopRequest(), {}

    def run():  # off the main thread: a library call installs no signal handler, so this works
        box["summary"] = sweep(cfg, out, should_stop=stop)

    t = threading.Thread(target=run)
    t.start()
    while t.is_alive() and not finished_trials():
        time.sleep(0.2)
    stop.set("test")
    t.join()
    stopped = box["summary"]
    ended = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]
    assert not any("nan" in line for line in ended), ended  # "interrupted: before its first epoch" instead
    assert stopped["stopped"] and not (out / "best.yaml").exists()
    rows = {r["trial_id"]: r for r in results(out)}
    done = [k for k, r in rows.items() if r["status"] == "finished"]
    assert len(rows) == 2 and len(done) == 1, rows
    assert all(r["status"] == "interrupted" for k, r in rows.items() if k not in done)
    first = out / "trials" / done[0]
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}

    caplog.clear()
    resumed = sweep(cfg, out, resume=True)
    assert not resumed["stopped"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]
    resumed_id = next(k for k in rows if k not in done)
    # the progress line of the resumed trial: counted after the one finished before, with its epochs
    assert len(lines) == 1 and lines[0].startswith(f"trial 2/2 {resumed_id} finished: 2 epochs, best val_mean_dice 0."), \
        lines
    assert "nan" not in lines[0]
    rows = results(out)
    assert len(rows) == 2 and all(r["status"] == "finished" and r["epochs"] == "2" for r in rows), rows
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()} == before  # not rerun
    assert (out / "best" / "model.pt").exists()
    assert sorted(float(r["optim.lr"]) for r in rows) == [0.001, 0.01]


def test_tune_signal_handling_is_what_sweep_works_around():
    """Ray 2.60 ``tune.tune._setup_signal_catching`` turns SIGUSR1 into a graceful experiment
    stop on the main thread and installs nothing on others; sweep relies on the second fact.
    If a Ray upgrade changes this, this test says so before a sweep silently misbehaves."""
    import ray
    from ray.tune import tune as tune_module

    assert hasattr(tune_module, "_setup_signal_catching"), f"Ray {ray.__version__}: recheck sweep's signal workaround"
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        tune_module._setup_signal_catching()
        assert signal.getsignal(signal.SIGUSR1) is not saved[signal.SIGUSR1]  # main thread: Tune takes SIGUSR1
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    seen = {}

    def off_main():
        tune_module._setup_signal_catching()
        seen["usr1"] = signal.getsignal(signal.SIGUSR1)

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert seen["usr1"] is saved[signal.SIGUSR1]  # helper thread: nothing installed


def test_sigusr1_to_xtrain_tune_interrupts_and_resume_runs_trials_to_full_length(ray_cluster, train_store, tmp_path,
                                                                                  capsys, caplog, harmless_signals):
    """The fault: SIGUSR1 (Slurm's time-limit warning) made Tune mark running trials
    early-stopped after one epoch, write best.yaml from them, and exit 0."""
    out = tmp_path / "tune"
    config = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    args = ["tune", "--config", config, "--data", str(train_store), "--out", str(out),
            "--set", "data.patch=32", "--set", "data.samples_per_epoch=64", "--set", "data.val_patches=16",
            "--set", "train.workers=1", "--set", "train.epochs=4", "--set", "tune.scheduler=fifo",
            "--set", "tune.num_samples=1", "--set", "tune.space={optim.lr: {grid: [0.001, 0.003]}}"]

    def epochs_done():
        trials = out / "trials"
        return sum(len(list(csv.DictReader(open(d / "metrics.csv")))) for d in trials.iterdir()
                   if (d / "metrics.csv").exists()) if trials.exists() else 0

    def send_usr1():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300 and epochs_done() < 1:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    t = threading.Thread(target=send_usr1)
    t.start()
    code = main(args)
    t.join()
    assert code == 3, capsys.readouterr().err
    rows = results(out)
    assert len(rows) == 2 and all(r["status"] == "interrupted" for r in rows), rows
    assert all(int(r["epochs"]) < 4 for r in rows)
    assert not (out / "best.yaml").exists() and not (out / "best" / "model.pt").exists()

    assert main([*args, "--resume"]) == 0
    rows = results(out)
    assert all(r["status"] == "finished" and r["epochs"] == "4" for r in rows), rows
    assert load_config(out / "best.yaml").train.epochs == 4 and (out / "best" / "model.pt").exists()

    with caplog.at_level("INFO"):
        assert main([*args, "--resume"]) == 0  # a requeued job after the end: nothing to do
    assert "already complete" in caplog.text
    capsys.readouterr()
    assert main([*args, "--resume", "--set", "train.epochs=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.epochs was 4, now 5" in err and "\n" not in err, err


def test_a_tune_folder_from_a_failed_start_blocks_nothing_and_resume_checks_the_settings(train_store, tmp_path):
    from xtrain.errors import SettingsMismatchError
    from xtrain.tune.sweep import prepare_tune_dir

    out = tmp_path / "tune"
    cfg = tiny(train_store, "tune.space={optim.lr: {grid: [0.001]}}")
    prepare_tune_dir(out, cfg, resume=False)  # config.yaml and an empty trials/: a start that failed after this
    assert prepare_tune_dir(out, cfg, resume=False)[2] is False
    assert prepare_tune_dir(out, cfg, resume=True)[2] is False  # nothing to restore: a fresh start
    (out / "results.csv").write_text("trial_id,status,epochs\nt1,finished,2\n")
    with pytest.raises(SettingsMismatchError, match="train.epochs was 2, now 3"):
        prepare_tune_dir(out, tiny(train_store, "tune.space={optim.lr: {grid: [0.001]}}", "train.epochs=3"),
                         resume=True)


def test_a_second_tune_into_the_same_folder_is_refused_naming_the_pid(train_store, tmp_path, capsys):
    from conftest import LockHolder

    out = tmp_path / "tune"
    args = ["tune", "--config", "configs/tiny.yaml", "--data", str(train_store), "--out", str(out), "--resume"]
    with LockHolder(out.resolve(), "tune") as holder:
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"another 'xtrain tune' is writing '{out.resolve()}' (pid {holder.pid} on " in err and "\n" not in err


def test_a_tune_folder_from_a_failed_start_blocks_neither_a_fresh_start_nor_resume(train_store, tmp_path):
    from xtrain.config import save_config
    from xtrain.tune.sweep import prepare_tune_dir

    cfg = tiny(train_store)
    out = tmp_path / "tune"
    (out / "trials").mkdir(parents=True)
    save_config(cfg, out / "config.yaml")  # Ray never came up: nothing else was written
    assert prepare_tune_dir(out, cfg, resume=True)[2] is False  # a fresh start, not Tune's restore
    assert prepare_tune_dir(out, cfg, resume=False)[0] == out.resolve()
