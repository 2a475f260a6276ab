"""Ray Train DDP across two Ray nodes: training, refusal to clobber runs, SIGTERM stop + exact
resume, and recovery from a killed worker."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import threading
import time

import pytest
import torch

from conftest import tiny_config
from xtrain.errors import RunStateError
from xtrain.train.checkpoint import load_checkpoint
from xtrain.train.ray_trainer import read_status, train

pytestmark = pytest.mark.slow



def tiny(store, *overrides):
    return tiny_config(store, "train.workers=2", *overrides)


def rows(run_dir):
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def when(predicate, timeout=120.0, poll=0.2):
    """Wait in a thread until predicate() holds, then return True (False on timeout)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(poll)
    return False


def test_two_node_ddp_run_then_sigterm_resume_is_exact(ray_cluster, train_store, tmp_path):
    import ray

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    # 8 short epochs (~0.3 s each): the SIGTERM sent after epoch 1 reaches the driver ~2
    # epochs later (measured: it stopped after epoch 3 of 3 once in CI), and must land mid-run
    cfg = tiny(train_store, "train.epochs=8")

    # Uninterrupted reference run: 2 DDP workers, one per node.
    full = train(cfg, tmp_path / "full")
    assert not full["stopped"] and full["epoch"] == 8
    assert read_status(tmp_path / "full")["state"] == "finished"
    assert [r["epoch"] for r in rows(tmp_path / "full")] == [str(e) for e in range(1, 9)]
    assert float(rows(tmp_path / "full")[-1]["train_loss"]) < float(rows(tmp_path / "full")[0]["train_loss"])

    # A finished run is never clobbered or silently resumed.
    with pytest.raises(RunStateError, match="already exists"):
        train(cfg, tmp_path / "full")
    with pytest.raises(RunStateError, match="already finished"):
        train(cfg, tmp_path / "full", resume=True)

    # SIGTERM (Slurm time limit) after the first epoch: checkpoint and stop, then resume.
    run = tmp_path / "interrupted"

    def send_term():
        if when(lambda: len(rows(run)) >= 1, poll=0.05):
            os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=send_term)
    t.start()
    t0 = time.time()
    stopped = train(cfg, run)
    t.join()
    assert stopped["stopped"]
    assert read_status(run)["state"] == "interrupted"
    assert len(rows(run)) < 8
    resumed = train(cfg, run, resume=True)
    assert not resumed["stopped"] and read_status(run)["state"] == "finished"
    assert [r["epoch"] for r in rows(run)] == [str(e) for e in range(1, 9)]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    b = load_checkpoint(run / "last.pt")["model_state"]
    for k in a:  # gloo all-reduce of two workers is deterministic: bit-exact
        assert torch.equal(a[k], b[k]), k
    assert time.time() - t0 < 300


def test_killed_worker_is_restarted_from_checkpoint(ray_cluster, train_store, tmp_path):
    """FailureConfig: kill -9 one training worker after epoch 1; the run still finishes."""
    run = tmp_path / "run"
    cfg = tiny(train_store, "train.epochs=3", "train.max_failures=2")
    killed = []

    def kill_one():
        if when(lambda: len(rows(run)) >= 1):
            out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout.split()
            if out:
                os.kill(int(out[-1]), signal.SIGKILL)
                killed.append(int(out[-1]))

    t = threading.Thread(target=kill_one)
    t.start()
    result = train(cfg, run)
    t.join()
    assert killed, "no RayTrainWorker process was found to kill"
    assert not result["stopped"] and result["epoch"] == 3
    assert [r["epoch"] for r in rows(run)] == ["1", "2", "3"]
    assert read_status(run)["state"] == "finished"
