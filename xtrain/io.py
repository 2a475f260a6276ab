"""The bottom layer of every write: atomic small files, whole outputs renamed into place, full disks.

    atomic_write(run_dir / "status.json", text, what="the run status")
    with writing(out, "the segmentation"):   # ENOSPC / EDQUOT / EFBIG anywhere -> one DiskFullError
        ...
    replace_into_place(tmp, out)             # a finished temporary output becomes OUT (old one replaced now)

``atomic_write`` is the one way small files (csv, status.json, job.json, qc.json,
checkpoints, best.yaml, compare reports) reach the disk: a temporary sibling renamed over the
target, so a reader never sees half a file.  A full disk anywhere becomes ``DiskFullError``:
one line naming the path and what was being written.  This module imports nothing of xtrain
but its errors, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFullError

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
