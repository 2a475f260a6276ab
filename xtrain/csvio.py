"""CSV tables (metrics.csv, results.csv, compare.csv): rows of dicts, written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .runtime import atomic_write


def write_csv(path: Path, rows: list[dict[str, Any]], default_fields: list[str] | None = None) -> None:
    """Columns are the union of the rows' keys in first-seen order; a reader never sees half a file."""
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
