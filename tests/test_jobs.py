"""jobs/*.py through `ray job submit` against a Ray head this test starts (and stops: only its
own processes, found by session id; never `ray stop`, which would end the test session's Ray)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_store

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together: one at a time the kernel may repeat one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid`; zombies are dead already (they only wait to be reaped)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, s, st in (line.split() for line in out.splitlines()) if int(s) == sid and "Z" not in st]


@pytest.fixture
def ray_head(tmp_path_factory):
    """`ray start --head --block` in a new session, on free ports, with its own temp dir."""
    temp = Path(f"/tmp/xjob-{os.getpid()}-{int(time.time())}")  # short: socket paths <= 107 bytes
    names = ["--port", "--dashboard-port", "--node-manager-port", "--object-manager-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", "--ray-client-server-port"]
    ports = dict(zip(names, free_ports(len(names))))
    dport = ports["--dashboard-port"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    if (Path.home() / ".ray" / "auth_token").exists():
        env.setdefault("RAY_AUTH_MODE", "token")  # with a token in ~/.ray, job submit must use it
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard=true",
                             "--dashboard-host", "127.0.0.1", "--temp-dir", str(temp), "--disable-usage-stats",
                             *[f"{k}={v}" for k, v in ports.items()]],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"address": f"http://127.0.0.1:{dport}", "env": env}
    finally:
        # TERM twice, then KILL until the session is empty: on a loaded machine a killed process can
        # take seconds to be reaped, and it is listed until then
        deadline = time.time() + 60
        for sig in (signal.SIGTERM, signal.SIGTERM, *[signal.SIGKILL] * 30):
            head.poll()  # reap the head once it is gone
            pids = session_pids(head.pid)
            if not pids or time.time() > deadline:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        head.wait(timeout=30)
        log.close()
        subprocess.run(["rm", "-rf", str(temp)])
        assert not session_pids(head.pid)


def test_train_job_runs_on_the_submitted_cluster(ray_head, tmp_path):
    store = make_store(tmp_path / "s.zarr", shape=(33, 50, 47))
    run = tmp_path / "run"
    cmd = [str(RAY), "job", "submit", "--address", ray_head["address"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"excludes": [".git", ".venv", "*.zarr", "runs", "results"]}),
           "--", sys.executable, "jobs/train.py", "--config", "configs/tiny.yaml", "--data", str(store),
           "--out", str(run), "--set", "data.patch=32", "--set", "data.samples_per_epoch=64",
           "--set", "data.val_patches=16", "--set", "train.epochs=1", "--set", "train.workers=1"]
    t0 = time.time()
    while True:  # the dashboard and its job agent need seconds after `ray start --block` (minutes on a loaded machine)
        out = subprocess.run(cmd, cwd=REPO, env=ray_head["env"], capture_output=True, text=True, timeout=300)
        starting = any(m in out.stdout + out.stderr for m in ("No available agent", "Failed to connect to Ray"))
        if out.returncode == 0 or not starting or time.time() - t0 > 300:
            break
        time.sleep(3)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "succeeded" in text, text[-3000:]
    assert (run / "model.pt").exists() and (run / "metrics.csv").exists()
    # it ran on the job's cluster, not a local Ray of its own: the job driver had RAY_ADDRESS
    assert "RAY_ADDRESS is not set" not in text
