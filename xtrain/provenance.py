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

The checksum reads every input file once more: at the ~1 GB/s of sha256 that is seconds for the
volumes xtrain handles; pass ``checksums=False`` where even that is too much and the record says so.
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
               checksums: bool = True, ended: str | None = None) -> dict[str, Any]:
    """The provenance record of an output made between ``started`` (``now()`` when the work began) and now.

    ``inputs``: name -> a ``Volume`` or a path (file or folder); ``models``: name -> a model file path.
    Raises ``FileNotFoundError`` for an input or model that is gone (an output must not claim a
    checksum it could not compute)."""
    commit, dirty = git_commit()
    record: dict[str, Any] = {
        "command": shlex.join(sys.argv), "xtrain_version": __version__, "git_commit": commit, "git_dirty": dirty,
        "host": socket.gethostname(), "python": platform.python_version(), "started": started,
        "ended": ended or now(), "inputs": {}, "models": {},
    }
    for name, item in (inputs or {}).items():
        files = source_files(item)
        entry: dict[str, Any] = {"spec": str(getattr(item, "spec", item)), "files": len(_files(files))}
        entry["sha256"] = checksum(files) if checksums else None
        record["inputs"][name] = entry
    for name, path in (models or {}).items():
        record["models"][name] = {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
    return record
