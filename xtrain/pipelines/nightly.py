"""The nightly job: find newly acquired scans, ingest and segment them, keep a registry.

    xtrain nightly --watch /beamline/incoming --model runs/unet/model.pt --out /data/segmented --once

Each entry of INCOMING is one scan: a multi-page TIFF, a folder of slice TIFFs, an HDF5 /
NeXus file, or a Zarr / OME-Zarr store (anything ``xtrain.data.volumes.open_volume`` reads).  For every scan that has stopped changing, the job writes

    RESULTS/<scan>/scan.zarr     the ingested volume (a Zarr input is read in place)
    RESULTS/<scan>/labels.zarr   the segmentation (blockwise, resumable)
    RESULTS/<scan>/qc.json       phase fractions, mean uncertainty, intensity drift, the
                                 normalisation used (training or own statistics, fill value)

and records the outcome in ``RESULTS/registry.sqlite`` (scan, state, attempts, times, model
checksum, fingerprint, version, error; table ``versions`` keeps every version's result).
Safety rules, in the order they matter at 3 a.m.:

* one instance at a time: an exclusive lock on ``RESULTS/.nightly.lock``;
* a scan whose files changed within ``settle`` seconds is still being written: skip it; so is an
  HDF5 scan a writer still holds open (plain: HDF5's file lock; SWMR: its "open for write" flag),
  however old its files look; neither uses up an attempt;
* a finished scan is never redone unless asked (``--redo NAME``) or unless it changed: each
  finished scan records a fingerprint (every file's relative path, size and modification
  time); a scan whose fingerprint differs later (36 more slices arrived) is segmented again
  as version N+1 into ``RESULTS/<scan>/v<N+1>/``, the change is logged, and the previous
  result stays where it was (and stays the registry's ``result``) until the new one is complete;
* SIGTERM / SIGUSR1 (``should_stop``): the running segmentation checkpoints, the scan is left
  ``interrupted`` (resumed block by block next time) and the job raises ``RunInterrupted``;
* a full disk fails the scan with the reason, without using up one of its attempts, and
  stops the job (``DiskFullError``): the other scans would fail the same way;
* a scan left "running" by a crash resumes where it stopped (segmentation resumes block by
  block) the next time;
* a scan that fails (corrupt TIFF, ...) is marked failed with its one-line error and the
  others still run; it is retried up to ``max_attempts`` times in total, and once more (its
  attempts counted afresh) whenever its files change (fingerprint: size, mtime), e.g. the
  missing slices were copied in after it failed.

Scans are found by the suffixes ``open_volume`` reads (``xtrain.data.volumes``), one list for both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import atomic_write, disk_full_cause, disk_full_error, exclusive_lock
from ..stop import never
from ..data.volumes.formats import is_hdf5, is_store, is_tiff_folder, is_volume_file, is_zarr_dir
from ..errors import DiskFullError, InputNotFoundError, LockedError, RunInterrupted, XtrainError  # noqa: F401

if TYPE_CHECKING:  # imported where a scan is segmented: the registry and the lock need no torch
    from ..infer.blocks import Block
    from ..infer.options import SegmentOptions

log = logging.getLogger(__name__)

REGISTRY = "registry.sqlite"
LOCK = ".nightly.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    state TEXT NOT NULL,          -- running | interrupted | done | failed (of the latest version)
    attempts INTEGER NOT NULL DEFAULT 0,
    started TEXT,
    finished TEXT,
    model_sha256 TEXT,
    result TEXT,                  -- labels of the newest *complete* version
    error TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    fingerprint TEXT,
    state TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    result TEXT,
    error TEXT,
    PRIMARY KEY (name, version)
)
"""
# columns added after the first release: added to older registries when opened
CHANGED_DURING_RUN = "changed-during-run"  # a fingerprint no scan has: the next pass sees a change
SCAN_COLUMNS = {"fingerprint": "TEXT", "version": "INTEGER NOT NULL DEFAULT 1"}


@dataclass
class Scan:
    name: str
    path: Path
    kind: str  # "tiff" (multi-page file), "folder" (slice TIFFs), "hdf5" or "zarr" (an xtrain store: read in place)

    def newest_mtime(self) -> float:
        """Latest modification time of anything in the scan (a folder's files included)."""
        if self.path.is_file():
            return self.path.stat().st_mtime
        newest = self.path.stat().st_mtime
        for root, _, files in os.walk(self.path):
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.stat(os.path.join(root, f)).st_mtime)
        return newest

    def held_open(self) -> str | None:
        """Why a writer still holds the scan, or None: an HDF5 file HDF5 itself refuses to open for
        reading because a writer has it (its file lock, errno 11, or a SWMR writer's "already open
        for write" flag).  Opening is what any reader does, so it disturbs no writer."""
        if self.kind != "hdf5":
            return None
        import h5py

        try:
            with h5py.File(self.path, "r"):
                return None
        except OSError as exc:
            text = str(exc)
            if "unable to lock file" in text or "already open for write" in text:
                return text.split("(", 1)[-1].rstrip(")") if "(" in text else text
            return None  # another problem: the scan's attempt reports it

    def fingerprint(self) -> str:
        """sha256 over every file's relative path, size and modification time (ns)."""
        import hashlib

        h = hashlib.sha256()
        if self.path.is_file():
            st = self.path.stat()
            h.update(f"{self.path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            return h.hexdigest()
        entries = []
        for root, _, files in os.walk(self.path):
            for f in files:
                full = os.path.join(root, f)
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(full)
                    entries.append(f"{os.path.relpath(full, self.path)}\0{st.st_size}\0{st.st_mtime_ns}\n")
        for entry in sorted(entries):
            h.update(entry.encode())
        return h.hexdigest()


def find_scans(incoming: Path) -> list[Scan]:
    """Scans in INCOMING, sorted by name. Hidden entries (temporary files) are ignored."""
    if not incoming.is_dir():
        raise InputNotFoundError(f"watch folder '{incoming}' does not exist; create it or fix --watch")
    scans = []
    for entry in sorted(incoming.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry.suffix == ".zarr" or is_zarr_dir(entry)):
            scans.append(Scan(entry.stem, entry, "zarr" if is_store(entry) else "other-zarr"))
        elif is_tiff_folder(entry):
            scans.append(Scan(entry.name, entry, "folder"))
        elif is_volume_file(entry):  # every TIFF / HDF5 / NeXus suffix open_volume reads (formats.py)
            scans.append(Scan(entry.stem, entry, "hdf5" if is_hdf5(entry) else "tiff"))
    return scans


# ----------------------------------------------------------------------------- registry


class Registry:
    """The SQLite record of every scan the job has seen."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(scans)")}
        for column, kind in SCAN_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE scans ADD COLUMN {column} {kind}")
        self.db.commit()

    def get(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM scans WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def all(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM scans ORDER BY name")]

    def versions(self, name: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,))]

    def start(self, scan: Scan, model_sha256: str, version: int = 1, fingerprint: str | None = None,
              fresh_attempts: bool = False) -> None:
        """Mark ``version`` of ``scan`` running (a new version, or ``fresh_attempts``: changed files
        after a failure, starts its attempts at 1)."""
        now = _now()
        self.db.execute(
            "INSERT INTO scans (name, source, state, attempts, started, model_sha256, version, fingerprint) "
            "VALUES (?, ?, 'running', 1, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET state='running', "
            "attempts=CASE WHEN version=excluded.version AND NOT ? THEN attempts+1 ELSE 1 END, started=excluded.started, "
            "finished=NULL, model_sha256=excluded.model_sha256, error=NULL, version=excluded.version, "
            "fingerprint=excluded.fingerprint",
            (scan.name, str(scan.path), now, model_sha256, version, fingerprint, fresh_attempts),
        )
        self.db.execute(
            "INSERT INTO versions (name, version, fingerprint, state, started) VALUES (?, ?, ?, 'running', ?) "
            "ON CONFLICT(name, version) DO UPDATE SET state='running', started=excluded.started, finished=NULL, "
            "error=NULL, fingerprint=excluded.fingerprint",
            (scan.name, version, fingerprint, now))
        self.db.commit()

    def finish(self, name: str, state: str, result: str | None = None, error: str | None = None,
               count_attempt: bool = True, fingerprint: str | None = None) -> None:
        """Record the outcome of the running version; ``result`` (and ``fingerprint``) replace the
        scan's only when given (a failed or interrupted new version keeps the previous result)."""
        now = _now()
        try:
            self.db.execute("UPDATE scans SET state=?, finished=?, result=COALESCE(?, result), error=?, "
                            "attempts=attempts - ?, fingerprint=COALESCE(?, fingerprint) WHERE name=?",
                            (state, now, result, error, 0 if count_attempt else 1, fingerprint, name))
            self.db.execute("UPDATE versions SET state=?, finished=?, result=?, error=? WHERE name=? AND "
                            "version=(SELECT version FROM scans WHERE name=?)", (state, now, result, error, name, name))
            self.db.commit()
        except sqlite3.OperationalError as exc:
            if disk_full_cause(exc) is None or state == "done":
                raise
            self.db.rollback()  # the scan stays "running": the next run resumes it
            log.error("%s: could not record '%s' in the registry (%s); it resumes next time", name, state, exc)

    def forget(self, name: str) -> None:
        self.db.execute("DELETE FROM scans WHERE name=?", (name,))
        self.db.execute("DELETE FROM versions WHERE name=?", (name,))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ----------------------------------------------------------------------------- one scan


def version_dir(results: Path, name: str, version: int) -> Path:
    """Where version ``version`` of a scan goes: RESULTS/<scan>/ for the first, RESULTS/<scan>/v<N>/ after."""
    return results / name if version <= 1 else results / name / f"v{version}"


def process_scan(scan: Scan, model: Path, results: Path, segment_options: SegmentOptions, version: int = 1,
                 should_stop: Callable[[], bool] = never, resume: bool = False,
                 on_block: Callable[[Block], None] | None = None) -> dict:
    """Ingest (unless already a store), segment and QC one scan; returns the QC summary.

    ``segment_options``: how to segment (resume, overwrite and probabilities are this job's).
    ``resume``: the scan is unchanged since an earlier attempt: keep its ingested store and
    continue (or accept, "already complete") its segmentation.  Otherwise both are redone.
    ``on_block``: ``segment``'s progress hook."""
    from ..data.ingest import ingest
    from ..io import remove_path
    from ..infer import segment

    out_dir = version_dir(results, scan.name, version)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(".*.partial-*"):  # a crash during an earlier ingest
        shutil.rmtree(leftover, ignore_errors=True)
    if scan.kind == "zarr":
        volume = scan.path
    else:
        volume = out_dir / "scan.zarr"
        if volume.exists() and not resume:  # ingested from an earlier state of the scan (--redo, a retry)
            remove_path(volume)
        if not volume.exists():
            ingest(str(scan.path), volume)
    labels = out_dir / "labels.zarr"
    # resume: segment continues a partial run block by block (or says "already complete");
    # otherwise a partial or finished labels.zarr is replaced.
    options = replace(segment_options, resume=resume, overwrite=not resume, probabilities=True)
    segment(model, volume, labels, options, should_stop=should_stop, on_block=on_block)
    qc = quality_summary(volume, labels, model)
    atomic_write(out_dir / "qc.json", json.dumps(qc, indent=2), what="the QC summary")
    return qc


def quality_summary(volume: Path, labels: Path, model: Path) -> dict[str, Any]:
    """Phase fractions, mean uncertainty and intensity drift against the training data.

    ``intensity_drift`` is the number ``segment`` computed and recorded in the output
    (``xtrain.source.distribution_shift``: Wasserstein-1 between the normalised intensity
    distributions, infer/volume.py), so the warning here and segment's agree."""
    from ..infer import open_segmentation
    from ..data.normalise import SHIFT_WARN
    from ..models.checkpoint import load_checkpoint

    import dask

    from ..data.scheduler import compute
    from ..data.volumes.zarr import zarr_dask

    seg = open_segmentation(labels)
    lab = zarr_dask(seg.labels, f"{labels} labels")  # not da.from_zarr: the graph may run on Ray (zarr_dask)
    parts = [dask.delayed(lambda b: np.bincount(b.ravel(), minlength=256))(b) for b in lab.to_delayed().ravel()]
    graphs: list[Any] = [dask.delayed(sum)(parts)]
    if seg.entropy is not None:
        graphs.append(zarr_dask(seg.entropy, f"{labels} entropy").astype(np.float64).sum())
    results = compute(*graphs)  # one Dask graph over the labels (and entropy) chunks
    counts = np.asarray(results[0])
    entropy_sum = float(results[1]) if len(results) > 1 else 0.0
    n = int(np.prod(lab.shape)) if len(results) > 1 else 0
    ckpt = load_checkpoint(model)
    classes = list(ckpt["classes"])
    total = counts.sum()
    fractions = {c: float(counts[i]) / total for i, c in enumerate(classes)}
    source = dict(seg.attrs).get("xtrain", {}).get("source", {})
    drift = source.get("distribution_shift")
    mapping = source.get("normalisation")
    if mapping and mapping.get("uncertain"):
        log.warning("%s: the normalisation choice is uncertain (%s)", volume, mapping.get("reason"))
    return {
        "volume": str(volume),
        "labels": str(labels),
        "shape": list(lab.shape),
        "phase_fractions": fractions,
        "mean_entropy": entropy_sum / n if n else None,
        "intensity_drift": drift,
        "drift_warning": drift is not None and drift > SHIFT_WARN,
        "normalisation": mapping,
    }


# ----------------------------------------------------------------------------- the job


def run_nightly(incoming: str | Path, model: str | Path, results: str | Path, *, once: bool = False,
                interval: float = 300.0, settle: float = 120.0, max_attempts: int = 3, redo: list[str] | None = None,
                segment_options: SegmentOptions | None = None, max_cycles: int | None = None,
                should_stop: Callable[[], bool] = never, on_block: Callable[[Block], None] | None = None
                ) -> dict[str, int]:
    """Process every stable new or changed scan; loop every ``interval`` seconds unless ``once``.

    ``segment_options``: how scans are segmented (default ``SegmentOptions()``: the model's validated
    axes and clean-up); ``on_block``: ``segment``'s progress hook (tests).

    Returns counts of this run's outcomes: {"done": n, "failed": n, "skipped": n, "waiting": n}.
    Raises ``RunInterrupted`` when ``should_stop()`` turns true (the running scan checkpoints
    and resumes next time) and ``DiskFullError`` when the results file system is full.
    """
    from ..infer.options import SegmentOptions
    from ..models.checkpoint import file_checksum, load_checkpoint

    incoming, model, results = Path(incoming), Path(model), Path(results)
    segment_options = segment_options or SegmentOptions()
    load_checkpoint(model)  # a bad model is one clear error before anything else
    find_scans(incoming)
    results.mkdir(parents=True, exist_ok=True)
    model_sha = file_checksum(model)
    totals = {"done": 0, "failed": 0, "skipped": 0, "waiting": 0}
    with exclusive_lock(results / LOCK, f"another 'xtrain nightly' is running on '{results}'"):
        registry = Registry(results / REGISTRY)
        try:
            for name in redo or []:
                registry.forget(name)
            cycle = 0
            while True:
                cycle += 1
                for key, value in _one_pass(incoming, model, results, registry, model_sha, settle, max_attempts,
                                            segment_options, should_stop, on_block).items():
                    totals[key] += value
                if once or (max_cycles is not None and cycle >= max_cycles):
                    break
                t0 = time.monotonic()
                while time.monotonic() - t0 < interval and not should_stop():
                    time.sleep(min(1.0, interval))
                if should_stop():
                    raise RunInterrupted("nightly stopped between passes; nothing was running")
        finally:
            registry.close()
    return totals


def _one_pass(incoming: Path, model: Path, results: Path, registry: Registry, model_sha: str, settle: float,
              max_attempts: int, segment_options: SegmentOptions,
              should_stop: Callable[[], bool] = never, on_block: Callable[[Block], None] | None = None
              ) -> dict[str, int]:
    counts = {"done": 0, "failed": 0, "skipped": 0, "waiting": 0}
    for scan in find_scans(incoming):
        if should_stop():
            raise RunInterrupted("nightly stopped before scan '%s'; run it again to continue" % scan.name)
        record = registry.get(scan.name)
        version = (record or {}).get("version") or 1
        changed = False
        if record and record["state"] == "done":
            fingerprint = scan.fingerprint()
            if not record.get("fingerprint") or record["fingerprint"] == fingerprint:
                counts["skipped"] += 1
                continue
            changed = True
        failed_before = bool(record and record["state"] == "failed")
        if failed_before and record["attempts"] >= max_attempts and record.get("fingerprint") in (None,
                                                                                               scan.fingerprint()):
            counts["skipped"] += 1  # the same files failed every attempt: left failed until they change
            continue
        age = time.time() - scan.newest_mtime()
        if age < settle:
            log.info("%s: still being written (changed %.0f s ago); later", scan.name, age)
            counts["waiting"] += 1
            continue
        writer = scan.held_open()
        if writer is not None:
            log.info("%s: still being written (a writer holds it open: %s; if none does, clear the flag with "
                     "'h5clear -s %s'); later", scan.name, writer, scan.path)
            counts["waiting"] += 1
            continue
        fingerprint = scan.fingerprint()
        retry = failed_before and record.get("fingerprint") not in (None, fingerprint)  # new files: attempts afresh
        if retry:
            log.info("%s: failed before, but its files changed since; trying again", scan.name)
        if changed:
            version += 1
            log.warning("%s: changed since it was segmented (version %d, %s); segmenting it again as version %d "
                        "into %s; the previous result stays until that is complete", scan.name, version - 1,
                        record["result"], version, version_dir(results, scan.name, version))
        # An earlier attempt on the same files (crashed, stopped, failed on a full disk): continue it.
        resume = bool(record and not changed and record.get("fingerprint") == fingerprint)
        registry.start(scan, model_sha, version, fingerprint, fresh_attempts=retry)
        log.info("%s: %s (%s)", scan.name, "resuming" if resume else "segmenting", scan.kind)
        qc = _attempt(scan, model, results, registry, segment_options, version, should_stop, resume, on_block)
        if qc is None:
            counts["failed"] += 1
            continue
        if scan.fingerprint() != fingerprint:
            log.warning("%s: changed while it was being segmented; it will be segmented again", scan.name)
            fingerprint = CHANGED_DURING_RUN
        registry.finish(scan.name, "done", result=str(version_dir(results, scan.name, version) / "labels.zarr"),
                        fingerprint=fingerprint)
        fr = ", ".join(f"{k} {v:.3f}" for k, v in qc["phase_fractions"].items())
        log.info("%s: done; fractions %s%s", scan.name, fr,
                 "; WARNING intensity histogram far from the training data" if qc["drift_warning"] else "")
        counts["done"] += 1
    return counts


def _attempt(scan: Scan, model: Path, results: Path, registry: Registry, segment_options: SegmentOptions,
             version: int, should_stop: Callable[[], bool], resume: bool,
             on_block: Callable[[Block], None] | None) -> dict | None:
    """``process_scan`` with its failure recorded: the QC summary, or None when the scan failed (the
    other scans still run).  A stop, a full disk and ``RunInterrupted`` are recorded and raised: the
    other scans would fail the same way."""
    try:
        return process_scan(scan, model, results, segment_options, version, should_stop, resume, on_block)
    except RunInterrupted as exc:
        registry.finish(scan.name, "interrupted", error=str(exc), count_attempt=False)
        raise
    except DiskFullError as exc:
        registry.finish(scan.name, "failed", error=str(exc), count_attempt=False)
        log.error("%s: failed: %s", scan.name, exc)
        raise
    except XtrainError as exc:
        registry.finish(scan.name, "failed", error=str(exc))
        log.error("%s: failed: %s", scan.name, exc)
        return None
    except Exception as exc:  # an unexpected bug must not stop the other scans either
        if disk_full_cause(exc) is not None:
            error = disk_full_error(exc, version_dir(results, scan.name, version), "the scan's results")
            registry.finish(scan.name, "failed", error=str(error), count_attempt=False)
            raise error from exc
        registry.finish(scan.name, "failed", error=f"{type(exc).__name__}: {exc}")
        log.exception("%s: failed unexpectedly", scan.name)
        return None
