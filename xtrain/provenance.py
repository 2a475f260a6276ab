"""The provenance record every output carries: how it was made, from what, by which code, where and when.

    started = now()
    ...                                                      # the work
    record = provenance(started, inputs={"volume": vol}, models={"model": "runs/unet/model.pt"})
    attrs["xtrain"]["provenance"] = record                   # stores, segmentations, reports, exported models

One function builds the record (``provenance``), so every writer says the same things:

* ``command``: the command line (``sys.argv``, shell-quoted);
* ``xtrain_version`` and ``git_commit`` (the checkout xtrain runs from, ``None`` for an installed
  wheel; ``git_dirty`` when it has uncommitted changes);
* ``host``, ``python``, ``started`` and ``ended`` (ISO 8601, UTC);
* ``inputs``: for each named input, its spec and a sha256 over the files that hold it (``checksum``:
  every file in sorted relative-path order, each as path, size and content; for a Zarr store its
  chunk and metadata files), and ``models``: each model file's sha256.

Why a hash of the files and not of the chunks or pages a run read: the files are what a user
keeps, copies and can check again (any byte, header or metadata change shows, the voxel size
in a TIFF tag too); a hash over decoded blocks would depend on the block plan, on
``--resume`` (a resumed run reads only the blocks left) and on the Ray workers that read
them, and would have to be gathered from those workers.  The cost: every input file is read
once more, once per output, never per block or epoch (``hash_input``: train hashes its store
once and reuses the entry for every checkpoint).  On the real scan (250 TIFF slices, 105 MB)
that is 0.43 s against 4.1 s to read and decode it once, and 0.62 s for its 123 MB store
against 6.1 s to read its image (``bench/provenance.py --data ../shared/data/soc_pxct``, 245 MB/s
of sha256 on the shared 2-core machine at load average ~50).  Pass ``checksums=False`` where even that is too much,
and the record says so (``sha256: null``).

Where the record goes (docs/formats.md, "Provenance"): a store's and a Zarr segmentation's
``xtrain.provenance`` attribute, a TIFF segmentation's ImageJ ``Info`` JSON (``xtrain.provenance``),
a NeXus file's ``/entry/process`` (NXprocess, ``write_nxprocess``), ``metrics.json`` /
``compare.json`` / ``qc.json`` (``provenance``) with a summary in the Markdown reports
(``markdown_lines``), and model.pt / last.pt's ``provenance`` entry.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__

_CHUNK = 1 << 20
_REPO = Path(__file__).resolve().parents[1]


def now() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _files(paths: Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(relative name, path) of every file under ``paths`` (folders walked), sorted by name."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [(str(f.relative_to(p.parent)), f) for f in p.rglob("*") if f.is_file()]
        elif p.is_file():
            out.append((p.name, p))
    return sorted(out)


def checksum(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the files of ``paths`` (files, or folders walked): each file's relative name, size and
    content, in sorted order, so it changes when any byte, file name or file count does."""
    h = hashlib.sha256()
    for name, path in _files(paths):
        h.update(f"{name}\0{path.stat().st_size}\0".encode())
        h.update(bytes.fromhex(file_sha256(path)))
    return h.hexdigest()


def source_files(volume: Any) -> list[str]:
    """The files a ``Volume`` (xtrain.data.volumes) was opened from (its provenance's ``files``), else its spec."""
    files = (getattr(volume, "provenance", None) or {}).get("files") or getattr(volume, "spec", volume)
    return [str(f) for f in files] if isinstance(files, (list, tuple)) else [str(files)]


def command_line() -> str:
    """This process's command line, shell-quoted (a Ray worker's is Ray's: the driver passes its own on)."""
    return shlex.join(sys.argv)


@dataclass(frozen=True)
class Origin:
    """Where and when a run began: the command line and start time its workers' records carry (a Ray
    worker's own ``sys.argv`` is Ray's, so the driver makes this and passes it on)."""

    command: str = field(default_factory=command_line)
    started: str = field(default_factory=now)


@dataclass(frozen=True)
class HashedInput:
    """An input's record entry (``spec``, ``files``, ``sha256``), computed once by ``hash_input``."""

    entry: dict[str, Any]


def hash_input(item: Any, checksums: bool = True) -> HashedInput:
    """The record entry of one input (a ``Volume`` or a path): its spec, file count and ``checksum``
    (None without ``checksums``).  Pass it to ``provenance`` in place of the input to hash it only once.
    Raises ``FileNotFoundError`` when its files are gone."""
    if isinstance(item, HashedInput):
        return item
    spec = str(getattr(item, "spec", item))
    if not isinstance(item, (str, os.PathLike)) and not (getattr(item, "provenance", None) or {}).get("files"):
        return HashedInput({"spec": spec, "files": 0, "sha256": None})  # an in-memory volume: no file to hash
    files = source_files(item)
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"input '{missing[0]}' of the provenance record is gone")
    return HashedInput({"spec": spec, "files": len(_files(files)), "sha256": checksum(files) if checksums else None})


def git_commit(repo: Path = _REPO) -> tuple[str | None, bool]:
    """(commit, dirty) of the git checkout xtrain runs from; (None, False) when it is not one."""
    if not (repo / ".git").exists():
        return None, False
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, False
    if head.returncode:
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())


def provenance(started: str, *, inputs: dict[str, Any] | None = None, models: dict[str, Any] | None = None,
               checksums: bool = True, ended: str | None = None, command: str | None = None,
               previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of an output made between ``started`` (``now()`` when the work began) and now.

    ``inputs``: name -> a ``Volume``, a path (file or folder) or a ``hash_input`` entry; ``models``:
    name -> a model file path.  ``command``: the command line when it is not this process's
    (``command_line()``; a Ray Train worker gets the driver's).  ``previous``: the record of the output
    this one rewrites in place (``xtrain upgrade``), kept whole.  Raises ``FileNotFoundError`` for an
    input or model that is gone (an output must not claim a checksum it could not compute)."""
    commit, dirty = git_commit()
    record: dict[str, Any] = {
        "command": command if command is not None else command_line(), "xtrain_version": __version__,
        "git_commit": commit, "git_dirty": dirty, "host": socket.gethostname(), "python": platform.python_version(),
        "started": started, "ended": ended or now(), "inputs": {}, "models": {},
    }
    for name, item in (inputs or {}).items():
        record["inputs"][name] = dict(hash_input(item, checksums).entry)
    for name, path in (models or {}).items():
        record["models"][name] = {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
    if previous:
        record["previous"] = previous
    return record


def write_nxprocess(entry: Any, record: dict[str, Any], name: str = "process") -> Any:
    """A NeXus NXprocess group ``name`` in ``entry`` (an h5py NXentry group) holding ``record``:
    ``program`` ("xtrain"), ``version``, ``date`` (the record's end, ISO 8601) and ``sequence_index``
    (NeXus base class NXprocess), the command line, commit and host as fields, and the whole record as
    JSON in the NXnote ``provenance`` (``type`` application/json, ``data``).  Returns the group."""
    import json

    proc = entry.create_group(name)
    proc.attrs["NX_class"] = "NXprocess"
    proc.create_dataset("program", data="xtrain")
    proc.create_dataset("version", data=record["xtrain_version"])
    proc.create_dataset("date", data=record["ended"])
    proc.create_dataset("sequence_index", data=1)
    for key in ("command", "git_commit", "host", "started"):
        proc.create_dataset(key, data=str(record.get(key)))
    note = proc.create_group("provenance")
    note.attrs["NX_class"] = "NXnote"
    note.create_dataset("type", data="application/json")
    note.create_dataset("data", data=json.dumps(record, default=str))
    return proc


def markdown_lines(record: dict[str, Any]) -> list[str]:
    """A report's "Provenance" section (Markdown lines): command, version and commit, host, times,
    each input's and model's sha256; the whole record is in the report's JSON."""
    commit = record.get("git_commit") or "not a git checkout"
    lines = ["## Provenance", "", "```", record["command"], "```", "",
             f"xtrain {record['xtrain_version']} ({commit}{', uncommitted changes' if record.get('git_dirty') else ''})"
             f" on {record['host']}, {record['started']} to {record['ended']}.", ""]
    for kind in ("inputs", "models"):
        for name, entry in record.get(kind, {}).items():
            where = entry.get("spec") or entry.get("path")
            lines.append(f"- {name} `{where}`: sha256 `{entry.get('sha256')}`")
    return lines + [""]
