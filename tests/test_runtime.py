"""runtime.py: stop requests from signals, atomic writes, full disks (a real 2 MiB tmpfs), and
ray_session starting / stopping only its own Ray (in a subprocess: the test session's Ray is
connected here)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from xtrain.errors import DiskFullError
from xtrain.io import atomic_write, disk_full_cause, writing
from xtrain.runtime import StopRequest, stop_on_signals, when_stopped

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmpfs):
    """A 2 MiB tmpfs (a file system that fills up), unmounted afterwards."""
    return tmpfs("2m")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_sigusr1_set_the_stop_request_and_handlers_come_back(sig):
    before = signal.getsignal(sig)
    stop = StopRequest()
    with stop_on_signals(stop):
        assert not stop()
        os.kill(os.getpid(), sig)
        assert stop.wait(5) and stop.reason == signal.Signals(sig).name
    assert signal.getsignal(sig) is before


def test_off_the_main_thread_nothing_is_installed():
    errors = []

    def body():
        try:
            with stop_on_signals(StopRequest()):
                pass
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == []


def test_when_stopped_runs_the_action_once():
    stop, calls = StopRequest(), []
    with when_stopped(stop, lambda: calls.append(1), interval=0.01):
        stop.set()
        for _ in range(200):
            if calls:
                break
            threading.Event().wait(0.01)
    assert calls == [1]


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "status.json"
    atomic_write(path, "old")
    atomic_write(path, b"new")
    atomic_write(path, lambda f: f.write(b"+more"))
    assert path.read_bytes() == b"+more"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporaries left


def test_a_full_disk_names_the_path_keeps_the_old_file_and_leaves_no_temporary(small_disk):
    path = small_disk / "last.pt"
    atomic_write(path, b"checkpoint 1")
    with pytest.raises(DiskFullError, match=r"while writing a checkpoint '.*last\.pt'.*--resume") as info:
        atomic_write(path, os.urandom(3 << 20), what="a checkpoint")
    assert isinstance(info.value, OSError)
    assert path.read_bytes() == b"checkpoint 1"
    assert [p.name for p in small_disk.iterdir()] == ["last.pt"]


def test_disk_full_is_found_behind_wrapping_errors(tmp_path):
    inner = OSError(errno.EDQUOT, "Disk quota exceeded")
    try:
        try:
            raise inner
        except OSError as exc:
            raise RuntimeError("zarr: write failed") from exc
    except RuntimeError as outer:
        assert disk_full_cause(outer) is inner
        with pytest.raises(DiskFullError, match="quota exceeded while writing labels"):
            with writing(tmp_path / "x.zarr", "labels"):
                raise outer
    assert disk_full_cause(ValueError("x")) is None
    with pytest.raises(OSError) as info:  # other OSErrors pass through unchanged
        with writing(tmp_path, "x"):
            raise OSError(errno.EACCES, "denied")
    assert not isinstance(info.value, DiskFullError)


@pytest.mark.slow
def test_ray_session_starts_and_stops_only_its_own_ray_and_keeps_the_callers_handlers(tmp_path):
    code = """
import signal, sys
import ray
from xtrain.runtime import ray_session
mine = lambda s, f: None
signal.signal(signal.SIGTERM, mine); signal.signal(signal.SIGUSR1, mine)
with ray_session(num_cpus=1) as started:
    assert started and ray.is_initialized()
    assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGUSR1) is mine
    with ray_session() as nested:
        assert not nested  # already connected: joined, not started
    assert ray.is_initialized()
assert not ray.is_initialized()
print("OK")
"""
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-2000:]


LONG_TMPDIR = "slurm_jobdir/1355700/tmp.t0016/" + "x" * 40  # a job-scratch path like verl #1120's


def test_a_long_tmpdir_gives_ray_a_short_root_and_a_long_ray_tmpdir_is_refused(tmp_path, monkeypatch):
    from xtrain.errors import ConfigError
    from xtrain.runtime import SOCKET_PATH_MAX, short_ray_tmpdir

    long_dir = tmp_path / LONG_TMPDIR
    assert len(f"{long_dir}/ray/session_2026-12-02_07-42-49_830804_23842/sockets/plasma_store") > SOCKET_PATH_MAX
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", "/tmp")
    assert short_ray_tmpdir() is None and "RAY_TMPDIR" not in os.environ  # short enough: nothing changes
    monkeypatch.setenv("TMPDIR", str(long_dir))
    short = short_ray_tmpdir()
    assert short == f"/tmp/xtrain-ray-{os.getuid()}" and os.environ["RAY_TMPDIR"] == short and os.path.isdir(short)
    monkeypatch.setenv("RAY_TMPDIR", str(long_dir))  # chosen on purpose: said, not overridden
    with pytest.raises(ConfigError, match=r"RAY_TMPDIR='.*' is too long for Ray's socket paths \(\d+ bytes, at most "
                                          r"107\); set RAY_TMPDIR to a folder of at most \d+ characters"):
        short_ray_tmpdir()


def _xtrain(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``xtrain ARGS`` in a process of its own, under a long $TMPDIR and outside any Ray cluster."""
    long_dir = tmp_path / LONG_TMPDIR
    long_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    env.update(TMPDIR=str(long_dir), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "xtrain.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


@pytest.mark.slow
def test_train_under_a_long_tmpdir_runs(train_store, tmp_path):
    """Ray Train under a long $TMPDIR.  segment and nightly start Ray through the same
    ``ray_session`` (so one command's start-up checks them all: each costs the suite ~20 s)."""
    out = _xtrain(["train", "--config", "configs/tiny.yaml", "--data", str(train_store), "--out", str(tmp_path / "run"),
                   "--workers", "1", "--set", "train.epochs=1", "--set", "data.patch=32",
                   "--set", "data.samples_per_epoch=32", "--set", "data.val_patches=8"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "model.pt").exists() and "AF_UNIX" not in out.stderr
