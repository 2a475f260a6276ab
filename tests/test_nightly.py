"""The nightly job: new scans in, labels + QC + registry out; idempotent, locked, resumable."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tifffile

from conftest import make_store
from xtrain.data.store import open_store
from xtrain.infer import open_segmentation
from xtrain.nightly import REGISTRY, LockedError, Registry, exclusive_lock, find_scans, run_nightly

FAST = {"tile": 32, "halo": 4, "chunks": (8, 16, 16), "shard": False, "block": (8, 16, 16)}


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
    with exclusive_lock(results / ".nightly.lock"):
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
                    segment_options={**FAST, "on_block": crash_after_two})
    assert registry(results)["vol"]["state"] == "running"
    resumed = []
    counts = run_nightly(incoming, tiny_model, results, once=True, settle=60,
                         segment_options={**FAST, "on_block": resumed.append})
    assert counts["done"] == 1 and registry(results)["vol"]["attempts"] == 2
    # reference: the same scan segmented without interruption
    ref_in, ref_out = tmp_path / "ref_in", tmp_path / "ref_out"
    ref_in.mkdir()
    make_store(ref_in / "vol.zarr", shape=(21, 40, 36), seed=3)
    age(ref_in)
    total = []
    run_nightly(ref_in, tiny_model, ref_out, once=True, settle=60, segment_options={**FAST, "on_block": total.append})
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
