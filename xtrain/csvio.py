"""CSV tables (metrics.csv, results.csv, compare.csv): rows of dicts, written atomically."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def write_csv(path: Path, rows: list[dict[str, Any]], default_fields: list[str] | None = None) -> None:
    """Columns are the union of the rows' keys in first-seen order; a reader never sees half a file."""
    fields = list(dict.fromkeys(k for r in rows for k in r)) or list(default_fields or [])
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows as dicts of strings; a missing file is an empty table."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
