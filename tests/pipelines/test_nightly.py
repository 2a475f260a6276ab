"""The nightly job: new scans in, labels + QC + registry out; idempotent, locked, resumable."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tifffile

from conftest import make_store
from xtrain.data.store import open_store
from xtrain.errors import DiskFullError, RunInterrupted
from xtrain.infer import SegmentOptions, open_segmentation
from xtrain.pipelines.nightly import REGISTRY, LockedError, Registry, exclusive_lock, find_scans, run_nightly
from xtrain.runtime import StopRequest

FAST = SegmentOptions(tile=32, halo=4, chunks=(8, 16, 16), shard=False, block=(8, 16, 16))


def scan_folder(path, seed=0, shape=(12, 40, 36)):
    """A beamline-style scan: a folder of single-slice uint16 TIFFs."""
    image = open_store(make_store(path.parent / f".src-{path.name}.zarr", shape=shape, seed=seed)).image[:]
    path.mkdir()
    for z, sl in enumerate(image):
        tifffile.imwrite(path / f"slice_{z + 1}.tif", sl)
    return path


def age(path, seconds=3600):
    """Pretend the scan's files were written ``seconds`` ago."""
    t = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t))


def registry(results):
    reg = Registry(results / REGISTRY)
    try:
        return {r["name"]: r for r in reg.all()}
    finally:
        reg.close()


def test_segments_new_scans_marks_corrupt_ones_and_never_redoes(tiny_model, tmp_path):
    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    scan_folder(incoming / "scan_a")
    (incoming / "scan_b.tif").write_bytes(b"not a tiff at all")
    age(incoming)
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=2, segment_options=FAST)
    assert counts["done"] == 1 and counts["failed"] == 1
    reg = registry(results)
    assert reg["scan_a"]["state"] == "done" and reg["scan_a"]["model_sha256"]
    assert reg["scan_b"]["state"] == "failed" and "scan_b.tif" in reg["scan_b"]["error"]
    labels = open_segmentation(results / "scan_a" / "labels.zarr")["labels"]
    assert labels.shape == (12, 40, 36)
    import json

    qc = json.loads((results / "scan_a" / "qc.json").read_text())
    assert abs(sum(qc["phase_fractions"].values()) - 1) < 1e-9 and 0 <= qc["mean_entropy"] <= np.log(3)
    stamp = (results / "scan_a" / "labels.zarr" / "zarr.json").stat().st_mtime_ns

    # Second night: the finished scan is skipped, the failed one retried once more, then given up.
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=2, segment_options=FAST)
    assert counts == {"done": 0, "failed": 1, "skipped": 1, "waiting": 0}
    assert registry(results)["scan_b"]["attempts"] == 2
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=2, segment_options=FAST)
    assert counts == {"done": 0, "failed": 0, "skipped": 2, "waiting": 0}
    assert (results / "scan_a" / "labels.zarr" / "zarr.json").stat().st_mtime_ns == stamp

    # Asked explicitly, a finished scan is redone.
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, redo=["scan_a"], segment_options=FAST)
    assert counts["done"] == 1


def test_a_scan_still_being_written_waits(tiny_model, tmp_path):
    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    scan_folder(incoming / "fresh")  # files written just now
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=300, segment_options=FAST)
    assert counts == {"done": 0, "failed": 0, "skipped": 0, "waiting": 1}
    assert not (results / "fresh").exists()


def test_hidden_partial_entries_are_not_scans(tmp_path):
    (tmp_path / ".scan.zarr.partial-1234").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    store = make_store(tmp_path / "ready.zarr", shape=(5, 8, 8))
    assert [(s.name, s.kind) for s in find_scans(tmp_path)] == [("ready", "zarr")]
    assert store.exists()


def test_one_instance_at_a_time(tiny_model, tmp_path):
    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    results.mkdir()
    with exclusive_lock(results / ".nightly.lock", "held by the test"):
        with pytest.raises(LockedError, match="another 'xtrain nightly' is running"):
            run_nightly(incoming, tiny_model, results, once=True)


def test_a_crash_mid_scan_resumes_next_time_bit_identical(tiny_model, tmp_path):
    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    make_store(incoming / "vol.zarr", shape=(21, 40, 36), seed=3)  # a Zarr scan is read in place
    age(incoming)
    done = []

    def crash_after_two(block):
        done.append(block)
        if len(done) == 2:
            raise SystemExit("killed")  # like a kill: not an error the job can record

    with pytest.raises(SystemExit):
        run_nightly(incoming, tiny_model, results, once=True, settle=60,
                    segment_options=FAST, on_block=crash_after_two)
    assert registry(results)["vol"]["state"] == "running"
    resumed = []
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60,
                         segment_options=FAST, on_block=resumed.append)
    assert counts["done"] == 1 and registry(results)["vol"]["attempts"] == 2
    # reference: the same scan segmented without interruption
    ref_in, ref_out = tmp_path / "ref_in", tmp_path / "ref_out"
    ref_in.mkdir()
    make_store(ref_in / "vol.zarr", shape=(21, 40, 36), seed=3)
    age(ref_in)
    total = []
    run_nightly(ref_in, tiny_model, ref_out, once=True, settle=60, segment_options=FAST, on_block=total.append)
    assert len(resumed) == len(total) - 2  # only the missing blocks were redone
    a = open_segmentation(results / "vol" / "labels.zarr")
    b = open_segmentation(ref_out / "vol" / "labels.zarr")
    np.testing.assert_array_equal(a["labels"][:], b["labels"][:])


def test_bad_watch_folder_is_one_line_exit_2(tiny_model, tmp_path, capsys):
    from xtrain.cli import main

    code = main(["nightly", "--watch", str(tmp_path / "nope"), "--model", str(tiny_model), "--out",
                 str(tmp_path / "res"), "--once"])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "res").exists()


def test_a_scan_that_grows_is_segmented_again_as_a_new_version(tiny_model, tmp_path, caplog):
    """The fault: 36 more slices arrived after the scan was segmented; the next night said
    "1 already handled" and the result stayed at 12 slices, without a warning."""
    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    scan = scan_folder(incoming / "scan_a", shape=(12, 40, 36))
    age(incoming)
    assert run_nightly(incoming, tiny_model, results, once=True, settle=60, segment_options=FAST)["done"] == 1
    first = results / "scan_a" / "labels.zarr"
    assert open_segmentation(first)["labels"].shape == (12, 40, 36)
    assert run_nightly(incoming, tiny_model, results, once=True, settle=60, segment_options=FAST)["skipped"] == 1

    more = open_store(make_store(tmp_path / ".more.zarr", shape=(36, 40, 36), seed=5)).image[:]
    for z, sl in enumerate(more):
        tifffile.imwrite(scan / f"slice_{13 + z}.tif", sl)
    age(incoming)
    with caplog.at_level("WARNING"):
        counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, segment_options=FAST)
    assert counts["done"] == 1 and "changed since it was segmented" in caplog.text
    reg = registry(results)["scan_a"]
    new = results / "scan_a" / "v2" / "labels.zarr"
    assert reg["version"] == 2 and reg["state"] == "done" and reg["result"] == str(new)
    assert open_segmentation(new)["labels"].shape == (48, 40, 36)
    assert open_segmentation(first)["labels"].shape == (12, 40, 36)  # the previous version is kept
    db = Registry(results / REGISTRY)
    try:
        versions = db.versions("scan_a")
    finally:
        db.close()
    assert [(v["version"], v["state"]) for v in versions] == [(1, "done"), (2, "done")]
    assert versions[0]["fingerprint"] != versions[1]["fingerprint"]
    assert versions[0]["result"] == str(first) and versions[1]["result"] == str(new)
    assert run_nightly(incoming, tiny_model, results, once=True, settle=60, segment_options=FAST)["skipped"] == 1


def test_qc_drift_is_the_number_segment_warns_with(tiny_model, tmp_path):
    import json

    from xtrain.data.normalise import distribution_shift
    from xtrain.models.checkpoint import load_checkpoint

    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    store = make_store(incoming / "vol.zarr", shape=(9, 40, 36), seed=4)
    age(incoming)
    run_nightly(incoming, tiny_model, results, once=True, settle=60, segment_options=FAST)
    qc = json.loads((results / "vol" / "qc.json").read_text())
    expected = distribution_shift(load_checkpoint(tiny_model)["stats"], open_store(store).info.stats)
    recorded = dict(open_segmentation(results / "vol" / "labels.zarr").attrs)["xtrain"]["source"]["distribution_shift"]
    assert qc["intensity_drift"] == recorded == expected and expected is not None


def test_a_stop_request_leaves_the_scan_interrupted_and_the_next_run_resumes_it(tiny_model, tmp_path):
    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    make_store(incoming / "vol.zarr", shape=(21, 40, 36), seed=3)
    age(incoming)
    stop, seen = StopRequest(), []

    def stop_after_two(block):
        seen.append(block)
        if len(seen) == 2:
            stop.set("SIGUSR1")

    with pytest.raises(RunInterrupted, match="--resume"):
        run_nightly(incoming, tiny_model, results, once=True, settle=60, should_stop=stop,
                    segment_options=FAST, on_block=stop_after_two)
    reg = registry(results)["vol"]
    assert reg["state"] == "interrupted" and reg["attempts"] == 0 and reg["result"] is None
    resumed = []
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60,
                         segment_options=FAST, on_block=resumed.append)
    assert counts["done"] == 1 and registry(results)["vol"]["attempts"] == 1
    assert len(resumed) == 27 - 2  # 3 x 3 x 3 blocks, two were already written


@pytest.fixture
def small_disk(tmpfs):
    """A 256k tmpfs: a file system that fills up."""
    return tmpfs("256k")


def test_a_full_disk_stops_the_job_without_using_an_attempt_and_resumes(tiny_model, tmp_path, small_disk):
    import subprocess

    incoming, results = tmp_path / "incoming", small_disk / "results"
    incoming.mkdir()
    make_store(incoming / "big.zarr", shape=(24, 64, 64), seed=6)
    age(incoming)
    with pytest.raises(DiskFullError, match="no space left on device while writing"):
        run_nightly(incoming, tiny_model, results, once=True, settle=60, segment_options=FAST)
    reg = registry(results)["big"]
    # The registry lives on the same full disk: it records the failure when SQLite still can
    # (attempt not counted); otherwise the scan stays "running", which the next run resumes.
    assert reg["state"] in ("failed", "running"), reg
    if reg["state"] == "failed":
        assert "no space left" in reg["error"] and reg["attempts"] == 0
    assert not (results / "big" / "labels.zarr").exists()  # nothing half-written looks finished
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, segment_options=FAST)
    assert counts["done"] == 1 and open_segmentation(results / "big" / "labels.zarr")["labels"].shape == (24, 64, 64)


@pytest.mark.slow
def test_nightly_with_ray_workers_leaves_no_ray_running(tiny_model, tmp_path):
    """segment(workers=2) from nightly starts a local Ray and must stop it (it used to stay up)."""
    import subprocess
    import sys

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    make_store(incoming / "vol.zarr", shape=(9, 40, 36), seed=3)
    age(incoming)
    code = f"""
import ray
from xtrain.infer import SegmentOptions
from xtrain.pipelines.nightly import run_nightly
opts = SegmentOptions(tile=32, halo=4, chunks=(8, 16, 16), shard=False, block=(8, 16, 16), workers=2, threads=1)
counts = run_nightly({str(incoming)!r}, {str(tiny_model)!r}, {str(tmp_path / 'results')!r}, once=True, settle=60,
                     segment_options=opts)
assert counts["done"] == 1, counts
assert not ray.is_initialized(), "a local Ray was left running"
print("OK")
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]


WRITER = """
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "w", libver="latest" if sys.argv[2] == "swmr" else "earliest")
data = np.load(sys.argv[3])
d = f.create_dataset("exchange/data", data=data, maxshape=(None, *data.shape[1:]), chunks=(1, *data.shape[1:]))
if sys.argv[2] == "swmr":
    f.swmr_mode = True
f.flush()
print("ready", flush=True)
sys.stdin.readline()  # hold the file open until told
f.close()
"""


@pytest.mark.parametrize("mode", ["plain", "swmr"])
def test_an_hdf5_scan_held_open_by_its_writer_waits_without_using_an_attempt(tiny_model, tmp_path, mode):
    import subprocess
    import sys

    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    image = open_store(make_store(tmp_path / "src.zarr", shape=(12, 40, 36), seed=2)).image[:]
    np.save(tmp_path / "image.npy", image)
    scan = incoming / "tomo.h5"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(scan), mode, str(tmp_path / "image.npy")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        age(scan)  # looks settled: only the writer's hold says otherwise
        for _ in range(2):
            counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=1,
                                 segment_options=FAST)
            assert counts == {"done": 0, "failed": 0, "skipped": 0, "waiting": 1}
        assert "tomo" not in registry(results)  # no attempt used
    finally:
        writer.communicate("close\n", timeout=60)
    assert writer.returncode == 0
    age(scan)
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=1, segment_options=FAST)
    assert counts["done"] == 1 and registry(results)["tomo"]["attempts"] == 1


def test_a_failed_scan_is_retried_once_its_files_change(tiny_model, tmp_path):
    incoming, results = tmp_path / "incoming", tmp_path / "results"
    incoming.mkdir()
    folder = scan_folder(incoming / "scan")
    held_back = folder / "slice_5.tif"
    data = held_back.read_bytes()
    held_back.unlink()  # the copy is missing one slice: a gap in the numbers
    age(incoming)
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=1, segment_options=FAST)
    assert counts["failed"] == 1 and "no slice numbered 5" in registry(results)["scan"]["error"]
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=1, segment_options=FAST)
    assert counts == {"done": 0, "failed": 0, "skipped": 1, "waiting": 0}  # same files: left failed
    held_back.write_bytes(data)  # the missing slice arrives
    age(incoming)
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60, max_attempts=1, segment_options=FAST)
    assert counts["done"] == 1
    rec = registry(results)["scan"]
    assert rec["state"] == "done" and rec["attempts"] == 1
    assert open_segmentation(results / "scan" / "labels.zarr")["labels"].shape == (12, 40, 36)


def test_every_suffix_open_volume_reads_is_a_scan(tmp_path):
    import h5py

    from xtrain.data.volumes.formats import HDF5_SUFFIXES, TIFF_SUFFIXES

    for suffix in (*HDF5_SUFFIXES, *TIFF_SUFFIXES):
        path = tmp_path / f"scan{suffix.replace('.', '_')}{suffix}"
        if suffix in HDF5_SUFFIXES:
            with h5py.File(path, "w") as f:
                f["data"] = np.zeros((2, 3, 4), np.uint16)
        else:
            tifffile.imwrite(path, np.zeros((2, 3, 4), np.uint16))
    found = {s.path.suffix: s.kind for s in find_scans(tmp_path)}
    assert found == {**{s: "hdf5" for s in HDF5_SUFFIXES}, **{s: "tiff" for s in TIFF_SUFFIXES}}
    assert {".nx", ".he5", ".btf"} <= set(found)
