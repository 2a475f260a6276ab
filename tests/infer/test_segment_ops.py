"""Segment as an operator runs it: reruns of a finished output, SIGUSR1/SIGTERM (exit 3 +
--resume), a full disk (a real tmpfs), and a Ray worker killed with -9 mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import make_store
from xtrain.cli import main
from xtrain.errors import RunInterrupted, SettingsMismatchError
from xtrain.infer import open_segmentation, segment
from xtrain.infer.write import MARKERS, work_dir
from xtrain.runtime import StopRequest

SHAPE = (37, 61, 53)
FAST = dict(tile=32, halo=4, chunks=(8, 16, 16), shard=False)
KW = dict(block=(16, 32, 32), probabilities=True, **FAST)  # 3 x 2 x 2 = 12 blocks


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("segment_ops")
    store = make_store(root / "vol.zarr", SHAPE)
    ref = segment(tiny_model, store, root / "ref.zarr", threads=1, **KW)
    return {"root": root, "model": tiny_model, "store": store, "ref": ref}


def arrays(path):
    g = open_segmentation(path)
    return {k: g[k][:] for k in ("labels", "probabilities", "entropy") if k in g}


def same_as(path, ref):
    a, b = arrays(path), arrays(ref)
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def cli_args(data, out, *extra, block="16,32,32"):
    return ["segment", str(data["model"]), str(data["store"]), str(out), "--block", block, "--tile", "32",
            "--halo", "4", "--threads", "1", *extra]


def test_resume_of_a_finished_output_is_already_complete_or_names_the_setting(data, tmp_path, capsys, caplog):
    out = tmp_path / "seg.zarr"
    assert main(cli_args(data, out)) == 0
    stamp = (out / "zarr.json").stat().st_mtime_ns
    capsys.readouterr()
    with caplog.at_level("INFO"):
        assert main(cli_args(data, out, "--resume")) == 0  # a requeued Slurm job: nothing to do
    assert "already complete" in caplog.text
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    assert main(cli_args(data, out, "--resume", "--tile", "48")) == 2
    err = capsys.readouterr().err.strip()
    assert "tile was 32, now 48" in err and "\n" not in err, err
    with pytest.raises(SettingsMismatchError, match="halo was 4, now 2"):
        segment(data["model"], data["store"], out, resume=True, threads=1, **{**KW, "probabilities": False, "halo": 2})
    assert (out / "zarr.json").stat().st_mtime_ns == stamp


def test_should_stop_checkpoints_between_blocks_and_resume_is_bit_identical(data, tmp_path):
    out = tmp_path / "seg.zarr"
    stop, seen = StopRequest(), []

    def stop_after_4(block):
        seen.append(block.name)
        if len(seen) == 4:
            stop.set("test")

    with pytest.raises(RunInterrupted, match="8 of 12 blocks.*--resume"):
        segment(data["model"], data["store"], out, threads=1, on_block=stop_after_4, should_stop=stop, **KW)
    assert not out.exists() and len(list((work_dir(out) / MARKERS).iterdir())) == 4
    segment(data["model"], data["store"], out, threads=1, resume=True, **KW)
    assert same_as(out, data["ref"])


def no_markers(out):
    markers = work_dir(out) / MARKERS
    return work_dir(out).is_dir() and not (markers.exists() and any(markers.iterdir()))


ONE_BLOCK = dict(block=(48, 64, 64), probabilities=True, **FAST)  # the whole 37 x 61 x 53 volume


def test_should_stop_inside_a_block_abandons_it_unwritten_and_resume_is_bit_identical(data, tmp_path):
    """A stop that arrives while the only block is being predicted ends the run at the next
    tile batch (not at the end of the block), writes nothing of the block, and --resume redoes it."""
    out = tmp_path / "seg.zarr"
    asked = []

    def stop():  # false when the block starts, true from its first batch of tiles on
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(RunInterrupted, match="1 of 1 blocks.*--resume"):
        segment(data["model"], data["store"], out, threads=1, should_stop=stop, **ONE_BLOCK)
    assert len(asked) == 3  # before the block, before its first tile batch (stopped there), and segment's last look
    assert not out.exists() and no_markers(out)
    segment(data["model"], data["store"], out, threads=1, resume=True, **ONE_BLOCK)
    assert same_as(out, data["ref"])


def test_should_stop_cancels_a_block_running_on_a_ray_worker(data, tmp_path, ray_cluster):
    """The Ray driver cancels the task in flight (``ray.cancel``); the actor sees it before its
    next tile batch.  Without that, the block would finish and be marked, and the run would end
    complete.  The one block (--axes zyx, 4 TTA flips, 16-voxel tiles one per batch) takes ~10 s;
    the stop comes 1 s after the worker is up and the driver waits for the block."""
    import ray

    out = tmp_path / "seg.zarr"
    kw = dict(block=(48, 64, 64), tile=16, halo=2, batch_size=1, axes="zyx", tta=True, chunks=(8, 16, 16),
              shard=False)
    start: list[float] = []

    def stop():
        if not start:
            start.append(time.monotonic())
        return time.monotonic() - start[0] > 1.0

    def ready(actors):  # the worker is up (model loaded) before the block is submitted
        ray.get([a.pid.remote() for a in actors])

    with pytest.raises(RunInterrupted, match="1 of 1 blocks"):
        segment(data["model"], data["store"], out, threads=1, workers=2, should_stop=stop, on_actors=ready, **kw)
    assert not out.exists() and no_markers(out)


@pytest.fixture(scope="module")
def tall(data):
    """A 160-slice volume: 5 blocks of one 32-deep shard each with the CLI's default layout."""
    store = make_store(data["root"] / "tall.zarr", (160, 24, 24), seed=2)
    ref = data["root"] / "tall_ref.zarr"
    assert main(["segment", str(data["model"]), str(store), str(ref), "--tile", "32", "--halo", "4", "--threads", "1",
                 "--probabilities"]) == 0
    return store, ref


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_cli_signal_exits_3_and_resume_finishes(data, tall, tmp_path, capsys, sig, harmless_signals):
    store, ref = tall
    out = tmp_path / "seg.zarr"
    markers = work_dir(out) / MARKERS
    args = ["segment", str(data["model"]), str(store), str(out), "--tile", "32", "--halo", "4", "--threads", "1",
            "--probabilities"]

    def send_after_first_block():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if markers.exists() and any(markers.iterdir()):
                os.kill(os.getpid(), sig)  # what Slurm (USR1: time-limit warning) or scancel (TERM) sends
                return
            time.sleep(0.005)

    t = threading.Thread(target=send_after_first_block)
    t.start()
    code = main(args)
    t.join()
    err = capsys.readouterr().err
    assert code == 3, err
    assert "--resume" in err and not out.exists()
    assert 1 <= len(list(markers.iterdir())) < 5
    assert main([*args, "--resume"]) == 0
    assert same_as(out, ref)


@pytest.fixture
def small_disk(tmpfs):
    """A 200k tmpfs: a file system that fills up."""
    return tmpfs("200k")


def test_full_disk_is_one_line_exit_3_and_resume_continues_once_there_is_space(data, small_disk, capsys):
    out = small_disk / "seg.zarr"
    code = main(cli_args(data, out, "--probabilities"))
    err = capsys.readouterr().err.strip()
    assert code == 3, err
    assert err.startswith("xtrain segment: error: no space left on device while writing the segmentation")
    assert str(out) in err and "\n" not in err
    assert not out.exists() and work_dir(out).exists()  # nothing half-written looks finished
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert main(cli_args(data, out, "--probabilities", "--resume")) == 0
    assert same_as(out, data["ref"])


@pytest.mark.slow
def test_a_killed_ray_worker_is_replaced_and_the_output_is_bit_identical(data, tmp_path, ray_cluster, caplog):
    import ray

    pool: list = []
    killed: list[int] = []

    def kill_first_worker(block):
        if not killed:
            pid = ray.get(pool[0].pid.remote())
            os.kill(pid, signal.SIGKILL)  # a pid this test's own segment run started
            killed.append(pid)

    with caplog.at_level("WARNING"):
        out = segment(data["model"], data["store"], tmp_path / "two.zarr", threads=1, workers=2,
                      on_actors=lambda actors: pool.__setitem__(slice(None), actors), on_block=kill_first_worker, **KW)
    assert killed and "a segmentation worker died" in caplog.text
    assert same_as(out, data["ref"])
