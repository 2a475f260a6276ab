"""The nightly job: find newly acquired scans, ingest and segment them, keep a registry.

    xtrain nightly --watch /beamline/incoming --model runs/unet/model.pt --out /data/segmented --once

Each entry of INCOMING is one scan: a multi-page TIFF, a folder of slice TIFFs, an HDF5 /
NeXus file, or a Zarr / OME-Zarr store (anything ``xtrain.data.volumes.open_volume`` reads).  For every scan that has stopped changing, the job writes

    RESULTS/<scan>/scan.zarr     the ingested volume (a Zarr input is read in place)
    RESULTS/<scan>/labels.zarr   the segmentation (blockwise, resumable)
    RESULTS/<scan>/qc.json       phase fractions, mean uncertainty, intensity drift, the
                                 normalisation used (training or own statistics, fill value)

and records the outcome in ``RESULTS/registry.sqlite`` (scan, state, attempts, times, model
checksum, error).  Safety rules, in the order they matter at 3 a.m.:

* one instance at a time: an exclusive lock on ``RESULTS/.nightly.lock``;
* a scan whose files changed within ``settle`` seconds is still being written: skip it;
* a finished scan is never redone unless asked (``--redo NAME``);
* a scan left "running" by a crash resumes where it stopped (segmentation resumes block by
  block) the next time;
* a scan that fails (corrupt TIFF, ...) is marked failed with its one-line error and the
  others still run; it is retried up to ``max_attempts`` times in total.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputNotFoundError, XtrainError

log = logging.getLogger(__name__)

REGISTRY = "registry.sqlite"
LOCK = ".nightly.lock"
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")

SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    state TEXT NOT NULL,          -- running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    started TEXT,
    finished TEXT,
    model_sha256 TEXT,
    result TEXT,
    error TEXT
)
"""


class LockedError(XtrainError, RuntimeError):
    """Another nightly instance holds the lock."""


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


def find_scans(incoming: Path) -> list[Scan]:
    """Scans in INCOMING, sorted by name. Hidden entries (temporary files) are ignored."""
    if not incoming.is_dir():
        raise InputNotFoundError(f"watch folder '{incoming}' does not exist; create it or fix --watch")
    scans = []
    for entry in sorted(incoming.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry.suffix == ".zarr" or (entry / "zarr.json").exists()
                               or (entry / ".zgroup").exists() or (entry / ".zarray").exists()):
            scans.append(Scan(entry.stem, entry, "zarr" if _is_store(entry) else "other-zarr"))
        elif entry.is_dir() and any(p.suffix.lower() in TIFF_SUFFIXES for p in entry.iterdir()):
            scans.append(Scan(entry.name, entry, "folder"))
        elif entry.is_file() and entry.suffix.lower() in TIFF_SUFFIXES:
            scans.append(Scan(entry.stem, entry, "tiff"))
        elif entry.is_file() and entry.suffix.lower() in HDF5_SUFFIXES:
            scans.append(Scan(entry.stem, entry, "hdf5"))
    return scans


def _is_store(path: Path) -> bool:
    """An xtrain store (segmented in place); any other Zarr is ingested first."""
    try:
        return "xtrain" in json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- registry


class Registry:
    """The SQLite record of every scan the job has seen."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute(SCHEMA)
        self.db.commit()

    def get(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM scans WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def all(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM scans ORDER BY name")]

    def start(self, scan: Scan, model_sha256: str) -> None:
        now = _now()
        self.db.execute(
            "INSERT INTO scans (name, source, state, attempts, started, model_sha256) VALUES (?, ?, 'running', 1, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET state='running', attempts=attempts+1, started=?, finished=NULL, "
            "model_sha256=?, error=NULL",
            (scan.name, str(scan.path), now, model_sha256, now, model_sha256),
        )
        self.db.commit()

    def finish(self, name: str, state: str, result: str | None = None, error: str | None = None) -> None:
        self.db.execute("UPDATE scans SET state=?, finished=?, result=?, error=? WHERE name=?",
                        (state, _now(), result, error, name))
        self.db.commit()

    def forget(self, name: str) -> None:
        self.db.execute("DELETE FROM scans WHERE name=?", (name,))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` exclusively (released by the OS if the process dies)."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise LockedError(f"another 'xtrain nightly' is running on '{path.parent}' (pid {holder}); "
                              "wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- one scan


def process_scan(scan: Scan, model: Path, results: Path, segment_options: dict[str, Any]) -> dict:
    """Ingest (unless already a store), segment and QC one scan; returns the QC summary."""
    from .data.ingest import ingest
    from .infer import segment

    out_dir = results / scan.name
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(".*.partial-*"):  # a crash during an earlier ingest
        shutil.rmtree(leftover, ignore_errors=True)
    if scan.kind == "zarr":
        volume = scan.path
    else:
        volume = out_dir / "scan.zarr"
        if not volume.exists():
            ingest(str(scan.path), volume)
    labels = out_dir / "labels.zarr"
    # A finished labels.zarr here means the scan is being redone (or the registry was lost):
    # replace it.  Otherwise resume: segment continues a partial run block by block, or
    # starts fresh when there is none.
    segment(model, volume, labels, resume=not labels.exists(), overwrite=labels.exists(), probabilities=True,
            **segment_options)
    qc = quality_summary(volume, labels, model)
    tmp = out_dir / ".qc.json.tmp"
    tmp.write_text(json.dumps(qc, indent=2))
    tmp.replace(out_dir / "qc.json")
    return qc


def quality_summary(volume: Path, labels: Path, model: Path) -> dict[str, Any]:
    """Phase fractions, mean uncertainty and intensity drift against the training data."""
    from .data.store import open_store
    from .infer import open_segmentation
    from .train.checkpoint import load_checkpoint

    import dask
    import dask.array as da

    from .data.volumes import compute

    seg = open_segmentation(labels)
    lab = da.from_zarr(seg.labels)
    parts = [dask.delayed(lambda b: np.bincount(b.ravel(), minlength=256))(b) for b in lab.to_delayed().ravel()]
    graphs: list[Any] = [dask.delayed(sum)(parts)]
    if seg.entropy is not None:
        graphs.append(da.from_zarr(seg.entropy).astype(np.float64).sum())
    results = compute(*graphs)  # one Dask graph over the labels (and entropy) chunks
    counts = np.asarray(results[0])
    entropy_sum = float(results[1]) if len(results) > 1 else 0.0
    n = int(np.prod(lab.shape)) if len(results) > 1 else 0
    ckpt = load_checkpoint(model)
    classes = list(ckpt["classes"])
    total = counts.sum()
    fractions = {c: float(counts[i]) / total for i, c in enumerate(classes)}
    drift = histogram_distance(open_store(volume).info.stats, ckpt.get("stats", {}))
    source = dict(group.attrs).get("xtrain", {}).get("source", {})
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
        "drift_warning": drift is not None and drift > DRIFT_WARN,
        "normalisation": mapping,
    }


DRIFT_WARN = 0.25  # total-variation distance between normalised histograms (0 = same, 1 = disjoint)


def histogram_distance(new: dict[str, Any], train: dict[str, Any]) -> float | None:
    """Total-variation distance between the two volumes' histograms, each on its own
    percentile-normalised axis (what the model sees after normalisation)."""
    if "hist" not in new or "hist" not in train:
        return None
    grid = np.linspace(-0.5, 1.5, 201)

    def density(stats: dict[str, Any]) -> np.ndarray:
        lo, hi = stats["hist"]["range"]
        counts = np.asarray(stats["hist"]["counts"], dtype=np.float64)
        centres = lo + (np.arange(counts.size) + 0.5) * (hi - lo) / counts.size
        x = (centres - stats["p0_5"]) / max(stats["p99_5"] - stats["p0_5"], 1e-12)
        h, _ = np.histogram(x, bins=grid, weights=counts)
        return h / max(h.sum(), 1)

    return float(0.5 * np.abs(density(new) - density(train)).sum())


# ----------------------------------------------------------------------------- the job


def run_nightly(incoming: str | Path, model: str | Path, results: str | Path, *, once: bool = False,
                interval: float = 300.0, settle: float = 120.0, max_attempts: int = 3, redo: list[str] | None = None,
                segment_options: dict[str, Any] | None = None, max_cycles: int | None = None) -> dict[str, int]:
    """Process every stable new scan; loop every ``interval`` seconds unless ``once``.

    Returns counts of this run's outcomes: {"done": n, "failed": n, "skipped": n, "waiting": n}.
    """
    from .train.checkpoint import file_checksum, load_checkpoint

    incoming, model, results = Path(incoming), Path(model), Path(results)
    load_checkpoint(model)  # a bad model is one clear error before anything else
    find_scans(incoming)
    results.mkdir(parents=True, exist_ok=True)
    model_sha = file_checksum(model)
    totals = {"done": 0, "failed": 0, "skipped": 0, "waiting": 0}
    with exclusive_lock(results / LOCK):
        registry = Registry(results / REGISTRY)
        try:
            for name in redo or []:
                registry.forget(name)
            cycle = 0
            while True:
                cycle += 1
                for key, value in _one_pass(incoming, model, results, registry, model_sha, settle, max_attempts,
                                            segment_options or {}).items():
                    totals[key] += value
                if once or (max_cycles is not None and cycle >= max_cycles):
                    break
                time.sleep(interval)
        finally:
            registry.close()
    return totals


def _one_pass(incoming: Path, model: Path, results: Path, registry: Registry, model_sha: str, settle: float,
              max_attempts: int, segment_options: dict[str, Any]) -> dict[str, int]:
    counts = {"done": 0, "failed": 0, "skipped": 0, "waiting": 0}
    for scan in find_scans(incoming):
        record = registry.get(scan.name)
        if record and (record["state"] == "done" or
                       (record["state"] == "failed" and record["attempts"] >= max_attempts)):
            counts["skipped"] += 1
            continue
        age = time.time() - scan.newest_mtime()
        if age < settle:
            log.info("%s: still being written (changed %.0f s ago); later", scan.name, age)
            counts["waiting"] += 1
            continue
        # "running" at this point is a crash of an earlier run (we hold the lock): resume it.
        resume = bool(record and record["state"] == "running")
        registry.start(scan, model_sha)
        log.info("%s: %s (%s)", scan.name, "resuming" if resume else "segmenting", scan.kind)
        try:
            qc = process_scan(scan, model, results, segment_options)
        except XtrainError as exc:
            registry.finish(scan.name, "failed", error=str(exc))
            log.error("%s: failed: %s", scan.name, exc)
            counts["failed"] += 1
            continue
        except Exception as exc:  # an unexpected bug must not stop the other scans either
            registry.finish(scan.name, "failed", error=f"{type(exc).__name__}: {exc}")
            log.exception("%s: failed unexpectedly", scan.name)
            counts["failed"] += 1
            continue
        registry.finish(scan.name, "done", result=str(results / scan.name / "labels.zarr"))
        fr = ", ".join(f"{k} {v:.3f}" for k, v in qc["phase_fractions"].items())
        log.info("%s: done; fractions %s%s", scan.name, fr,
                 "; WARNING intensity histogram far from the training data" if qc["drift_warning"] else "")
        counts["done"] += 1
    return counts
