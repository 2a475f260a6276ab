"""The bottom layer of every write: atomic small files, whole outputs renamed into place, full disks.

    atomic_write(run_dir / "status.json", text, what="the run status")
    with writing(out, "the segmentation"):   # ENOSPC / EDQUOT / EFBIG anywhere -> one DiskFullError
        ...
    replace_into_place(tmp, out)             # a finished temporary output becomes OUT (old one replaced now)

``atomic_write`` is the one way small files (csv, status.json, job.json, qc.json,
checkpoints, best.yaml, compare reports) reach the disk: a temporary sibling renamed over the
target, so a reader never sees half a file.  A full disk anywhere becomes ``DiskFullError``:
one line naming the path and what was being written.  ``exclusive_lock`` / ``output_lock``:
one writer per output (nightly's results folder, a segmentation, a training run, a sweep): a
second process refuses in one line naming the pid that holds the lock.  This module imports
nothing of xtrain but its errors, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFullError, LockedError

DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e)


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC / EDQUOT / EFBIG ``OSError`` behind ``exc`` (itself, its causes, a group), if any."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        if type(e).__name__ == "OperationalError" and "disk is full" in str(e):  # sqlite3 (the nightly registry)
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        stack.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
        stack.extend(getattr(e, "exceptions", None) or [])
    return None


def disk_full_error(exc: BaseException, path: str | os.PathLike, what: str) -> DiskFullError:
    cause = disk_full_cause(exc)
    if isinstance(cause, DiskFullError):
        return cause
    reason = os.strerror(cause.errno) if cause is not None and cause.errno else "no space left"
    return DiskFullError(f"{reason.lower()} while writing {what} '{path}'; free space (or raise the quota) "
                         "and run the same command again with --resume")


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Re-raise a full disk inside the block as one ``DiskFullError`` naming ``path`` and ``what``."""
    try:
        yield
    except DiskFullError:
        raise
    except BaseException as exc:
        if disk_full_cause(exc) is not None:
            raise disk_full_error(exc, path, what) from exc
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[io.BufferedWriter], None],
                 what: str = "file") -> Path:
    """Write ``data`` (text, bytes, or a function writing into a binary file) to a temporary
    sibling of ``path`` and rename it over ``path``: readers see the old file or the new one,
    never half of one.  A full disk raises ``DiskFullError`` and leaves no temporary behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with writing(path, what), open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree (a store, a partial output)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_into_place(src: Path, dst: Path) -> None:
    """Rename a finished ``src`` to ``dst``; an existing ``dst`` (an --overwrite) is replaced only now."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(src, dst)
        remove_path(old)
    else:
        os.replace(src, dst)


# ----------------------------------------------------------------------------- tables


def write_csv(path: Path, rows: list[dict[str, Any]], default_fields: list[str] | None = None) -> None:
    """A table (metrics.csv, results.csv, compare.csv) of dict rows, written atomically.

    Columns are the union of the rows' keys in first-seen order; a reader never sees half a file."""
    fields = list(dict.fromkeys(k for r in rows for k in r)) or list(default_fields or [])
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, text.getvalue(), what="a table")


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows as dicts of strings; a missing file is an empty table."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- one writer per output


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, remove: bool = False) -> Iterator[None]:
    """Hold the lock file ``path`` exclusively while the block runs (``flock``: the OS releases it
    when the process dies, so a crash never leaves a stale lock).

    The holder writes "PID on HOST" into the file; a second process raises ``LockedError``
    "``what`` (pid PID on HOST); wait for it to finish", e.g. ``what`` = "another 'xtrain
    segment' is writing 'out.zarr'".  ``remove``: delete the file at the end, still holding the
    lock; a process that opened it meanwhile sees that the path no longer names the file it
    locked (inode check) and locks the new one instead, so two processes never both hold "the" lock.
    """
    path = Path(path)
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise LockedError(f"{what} (pid {holder}); wait for it to finish, or stop that process") from None
        try:
            current = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        f.close()  # removed by the previous holder between our open and flock: lock the new file
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of output ``out`` (a file or folder): the hidden sibling ``.NAME.lock``."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def output_lock(out: str | os.PathLike, command: str) -> contextlib.AbstractContextManager[None]:
    """``exclusive_lock`` on ``lock_path(out)`` for ``xtrain COMMAND`` writing ``out`` (removed at the end).

    A missing parent folder takes no lock: nothing can be written there, and the command says so."""
    path = lock_path(out)
    if not path.parent.is_dir():
        return contextlib.nullcontext()
    return exclusive_lock(path, f"another 'xtrain {command}' is writing '{out}'", remove=True)
