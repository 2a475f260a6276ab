"""slurm/*.sh for real on a local one-node Slurm (`.ci/slurm_setup.sh` brings one up).

Skipped when sbatch is missing or no Slurm answers.  The jobs start their own Ray head on free
ports and in their own temp dir, so a test session's Ray (the ray_cluster fixture) is left alone.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_store

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip().rstrip("*") in ("idle", "mix", "alloc") for s in out.stdout.split())


requires_slurm = pytest.mark.skipif(not _slurm_up(), reason="no running Slurm (run .ci/slurm_setup.sh as root)")


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_job(job_id: str, timeout: float) -> dict[str, str]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        info = job_info(job_id)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still {job_info(job_id).get('JobState')} after {timeout} s")


def submit(script: str, env: dict[str, str], output: Path, *args: str, sbatch: tuple[str, ...] = ()) -> str:
    """sbatch slurm/SCRIPT ARGS with ``env`` on top of ours; ``sbatch``: options for sbatch itself."""
    full = {**os.environ, **env, "XTRAIN_VENV": str(Path(sys.executable).parents[1]), "XTRAIN_HOME": str(REPO)}
    full.pop("RAY_ADDRESS", None)
    out = subprocess.run(["sbatch", "--parsable", f"--output={output}", *sbatch, f"slurm/{script}", *args], cwd=REPO,
                         env=full, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def rows(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


TINY = ["--set", "data.patch=32", "--set", "data.val_patches=16", "--set", "train.workers=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("slurm") / "s.zarr", shape=(33, 50, 47))


@requires_slurm
def test_train_job_completes_and_writes_the_model(store, tmp_path):
    run = tmp_path / "run"
    job = submit("train.sh", {"XTRAIN_CONFIG": "configs/tiny.yaml", "XTRAIN_DATA": str(store),
                              "XTRAIN_OUT": str(run)}, tmp_path / "job.out",
                 *TINY, "--set", "data.samples_per_epoch=64", "--set", "train.epochs=1")
    info = wait_job(job, 180)
    log = (tmp_path / "job.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log
    assert (run / "model.pt").exists() and len(rows(run)) == 1, log
    assert "1 node(s) up" in log
    assert not list(Path("/tmp").glob(f"xray-{job}")), "the job's Ray temp dir was not removed"
    ray_left = subprocess.run(["pgrep", "-f", f"/tmp/xray-{job}/"], capture_output=True, text=True).stdout
    assert not ray_left.strip(), f"Ray processes of job {job} still running: {ray_left}"


@requires_slurm
def test_sigterm_checkpoints_requeues_and_resumes_to_the_end(store, tmp_path):
    """The time-limit warning (SIGTERM to the batch shell): xtrain checkpoints and exits 3, the job
    requeues itself, and the second run resumes from last.pt and finishes every epoch."""
    run = tmp_path / "run"
    epochs = 12
    job = submit("train.sh", {"XTRAIN_CONFIG": "configs/tiny.yaml", "XTRAIN_DATA": str(store),
                              "XTRAIN_OUT": str(run)}, tmp_path / "job.out",
                 *TINY, "--set", "data.samples_per_epoch=128", "--set", f"train.epochs={epochs}")
    t0 = time.time()
    while time.time() - t0 < 150 and not rows(run):
        time.sleep(0.3)
    assert rows(run), (tmp_path / "job.out").read_text()
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True)
    info = wait_job(job, 240)
    log = (tmp_path / "job.out").read_text()
    assert info["JobState"] == "COMPLETED", log
    assert int(info["Restarts"]) >= 1, log
    assert "xtrain exited with 3" in log and "requeueing job" in log, log
    assert "--resume" in log.split("restart 1")[-1], log
    assert [int(r["epoch"]) for r in rows(run)] == list(range(1, epochs + 1)), log
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert (run / "model.pt").exists()


@requires_slurm
def test_segment_and_nightly_jobs_write_labels(tiny_model, tmp_path):
    """slurm/segment.sh (2 Ray workers on the job's cluster) and slurm/nightly.sh (one night,
    no resubmission) produce the same labels for the same scan."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    scan = make_store(incoming / "scan1.zarr", shape=(21, 40, 36), seed=7)
    old = time.time() - 3600  # written an hour ago: settled
    for p in [scan, *scan.rglob("*")]:
        os.utime(p, (old, old))
    seg = submit("segment.sh", {"XTRAIN_MODEL": str(tiny_model), "XTRAIN_DATA": str(scan),
                                "XTRAIN_OUT": str(tmp_path / "seg.zarr")}, tmp_path / "seg.out", "--workers", "2")
    night = submit("nightly.sh", {"XTRAIN_MODEL": str(tiny_model), "XTRAIN_INCOMING": str(incoming),
                                  "XTRAIN_OUT": str(tmp_path / "nightly"), "XTRAIN_RESUBMIT": "0"},
                   tmp_path / "night.out")
    for job, out in ((seg, "seg.out"), (night, "night.out")):
        info = wait_job(job, 240)
        assert info["JobState"] == "COMPLETED", (tmp_path / out).read_text()
    from xtrain.infer import open_segmentation

    a = open_segmentation(tmp_path / "seg.zarr")["labels"][:]
    b = open_segmentation(tmp_path / "nightly" / "scan1" / "labels.zarr")["labels"][:]
    assert a.shape == (21, 40, 36) and (a == b).all()
    assert "1 done" in (tmp_path / "night.out").read_text()
