"""slurm/*.sh across two Slurm nodes on one machine (`.ci/slurm_setup.sh --two-node`).

The second node is a slurmd in its own network and UTS namespaces (its own hostname and a veth
address on a private subnet), so a job's Ray head and its Ray worker node really talk over the
network, as on a cluster.  Skipped, with the set-up's reason, when fewer than two nodes are up.

Each job asks 1 CPU per node, so Ray has one CPU on each: two training workers, two trials or
two segmentation workers can only run one per node.  Every Ray process of a job is found by its
temp dir and its node by its network namespace; none may be left once the job is over.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_store
from test_slurm import RayProcesses, finish, job_info, ray_temp, release_requeued, rows, submit, up_nodes, wait_job

pytestmark = pytest.mark.slow

TWO_NODE_ERR = Path("/run/xtrain-two-node.err")  # written by .ci/slurm_setup.sh
TWO = ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1")
TINY = ["--set", "data.patch=32", "--set", "data.val_patches=16", "--set", "data.samples_per_epoch=64"]


def _skip_reason() -> str:
    why = TWO_NODE_ERR.read_text().strip() if TWO_NODE_ERR.exists() else ""
    return f"no two-node Slurm ({why or 'run .ci/slurm_setup.sh --two-node as root'})"


NODES = up_nodes()
requires_two_nodes = pytest.mark.skipif(len(NODES) < 2, reason=_skip_reason())


def assert_both_nodes_ran_ray(watch: RayProcesses, log: str) -> None:
    for node in NODES:
        assert any("raylet" in c for c in watch.on(node)), f"no raylet of the job on {node}\n{log}"


@requires_two_nodes
def test_train_ddp_one_worker_per_node_sigterm_requeues_and_resumes(train_store, tmp_path):
    """Ray Train DDP with one worker on each node; XTRAIN_RAY_IFACE/PORTS/TMP are obeyed on both
    nodes; the time-limit SIGTERM checkpoints, the job requeues itself on two nodes again and
    resumes to the last epoch; no Ray process of either run outlives it."""
    run, out, tmp = tmp_path / "run", tmp_path / "job.out", ray_temp(tmp_path)
    lo, hi = 31000, 31999
    epochs = 6
    watch = RayProcesses(tmp)
    watch.start()
    job = submit("train.sh", {"XTRAIN_CONFIG": "configs/tiny.yaml", "XTRAIN_DATA": str(train_store),
                              "XTRAIN_OUT": str(run), "XTRAIN_RAY_IFACE": "xtv0", "XTRAIN_RAY_PORTS": f"{lo}-{hi}",
                              "XTRAIN_RAY_TMP": tmp}, out,
                 *TINY, "--set", "train.workers=2", "--set", f"train.epochs={epochs}", sbatch=TWO)
    t0 = time.time()
    while time.time() - t0 < 300 and not rows(run) and job_info(job).get("JobState") in ("PENDING", "RUNNING"):
        time.sleep(0.5)
    assert rows(run), out.read_text()
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True)
    release_requeued(job)
    info, log = finish(job, watch, out, 420)

    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, log
    assert "xtrain exited with 3" in log and "requeueing job" in log and "--resume" in log.split("restart 1")[-1], log
    assert [int(r["epoch"]) for r in rows(run)] == list(range(1, epochs + 1)), log
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    # both runs: two nodes, the DDP ranks on two different hosts
    assert log.count("2 node(s) up") == 2, log
    hosts = re.findall(r"ranks on hosts: 0=(\S+) 1=(\S+)", log)
    assert len(hosts) == 2 and all(sorted(h) == NODES for h in hosts), log
    # the settings from the environment: the interface's addresses and the port range, on both nodes
    head = re.findall(r"head (\S+):(\d+) on", log)
    assert len(head) == 2 and all(ip.startswith("10.213.77.") and lo <= int(p) < lo + 100 for ip, p in head), log
    assert_both_nodes_ran_ray(watch, log)
    for node in NODES:
        for cmd in watch.on(node):
            if "raylet" in cmd.split()[0]:
                ports = [int(p) for p in re.findall(r"_port=(\d+)", cmd) if p != "0"]
                assert ports and all(lo <= p <= hi for p in ports), cmd
                ip = re.search(r"--node_ip_address=(\S+)", cmd).group(1)
                assert ip == ("10.213.77.1" if node == socket.gethostname() else "10.213.77.2"), cmd
    assert not Path(tmp).exists(), "the job's Ray temp dir was not removed"


@requires_two_nodes
def test_tune_trials_run_on_both_nodes(train_store, tmp_path):
    out, tmp = tmp_path / "job.out", ray_temp(tmp_path)
    tune_dir = tmp_path / "tune"
    watch = RayProcesses(tmp)
    watch.start()
    job = submit("tune.sh", {"XTRAIN_CONFIG": "configs/tiny.yaml", "XTRAIN_DATA": str(train_store),
                             "XTRAIN_OUT": str(tune_dir), "XTRAIN_RAY_TMP": tmp}, out,
                 *TINY, "--set", "train.workers=1", "--set", "train.epochs=1",
                 "--set", "tune.space={optim.lr: {grid: [0.001, 0.01]}}", "--set", "tune.scheduler=fifo",
                 "--set", "tune.num_samples=1", sbatch=TWO)
    info, log = finish(job, watch, out, 420)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert "2 node(s) up" in log and "2 at once" in log, log
    trial_logs = sorted((tune_dir / "trials").glob("*/train.log"))
    hosts = sorted(re.search(r"ranks on hosts: 0=(\S+)", p.read_text()).group(1) for p in trial_logs)
    assert hosts == NODES, log  # one trial's training worker on each node
    assert (tune_dir / "best.yaml").exists() and len((tune_dir / "results.csv").read_text().splitlines()) == 3
    assert_both_nodes_ran_ray(watch, log)


@requires_two_nodes
def test_segment_one_worker_per_node_is_bit_identical_to_one_node(tiny_model, tmp_path):
    """slurm/segment.sh with a Ray worker on each node writes exactly the one-node result."""
    from xtrain.infer import open_segmentation, segment

    vol = make_store(tmp_path / "scan.zarr", shape=(67, 40, 36), seed=3)  # 3 blocks of whole shards
    args = dict(block=(32, 40, 36), tile=32, halo=4, threads=1, probabilities=True)
    one = segment(tiny_model, vol, tmp_path / "one.zarr", **args)
    out, tmp, seg = tmp_path / "job.out", ray_temp(tmp_path), tmp_path / "two.zarr"
    watch = RayProcesses(tmp)
    watch.start()
    job = submit("segment.sh", {"XTRAIN_MODEL": str(tiny_model), "XTRAIN_DATA": str(vol), "XTRAIN_OUT": str(seg),
                                "XTRAIN_RAY_TMP": tmp}, out,
                 "--workers", "2", "--block", "32,40,36", "--tile", "32", "--halo", "4", "--threads", "1",
                 "--probabilities", sbatch=TWO)
    info, log = finish(job, watch, out, 300)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert "2 node(s) up" in log, log
    for node in NODES:  # one segmentation worker (a BlockRunner actor) on each node
        assert len(watch.on(node, "ray::BlockRunner")) == 1, (node, watch.on(node), log)
    a, b = open_segmentation(one), open_segmentation(seg)
    for key in ("labels", "probabilities", "entropy"):
        x, y = a[key][:], b[key][:]
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), key
    assert np.unique(a["labels"][:]).size > 1


@requires_two_nodes
@pytest.mark.parametrize("env, message", [
    ({"XTRAIN_RAY_IFACE": "nosuch0"}, "XTRAIN_RAY_IFACE=nosuch0 has no IPv4 address on"),
    ({"XTRAIN_RAY_PORTS": "31000-31050"}, "XTRAIN_RAY_PORTS=31000-31050 is not a range LO-HI of at least 200 ports"),
])
def test_bad_network_settings_fail_the_job_with_one_line(train_store, tmp_path, env, message):
    out = tmp_path / "job.out"
    job = submit("train.sh", {"XTRAIN_CONFIG": "configs/tiny.yaml", "XTRAIN_DATA": str(train_store),
                              "XTRAIN_OUT": str(tmp_path / "run"), **env}, out, sbatch=TWO)
    info = wait_job(job, 120)
    log = out.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", log
    assert message in log and "node(s) up" not in log, log
