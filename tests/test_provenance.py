"""The one provenance record: command, version and commit, host, times, input and model checksums."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import tifffile

from xtrain.provenance import checksum, git_commit, now, provenance


def test_record_holds_every_field_and_checksums_equal_hashlib(tmp_path, monkeypatch):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"s{z}.tif", np.full((5, 7), z, np.uint16))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    monkeypatch.setattr(sys, "argv", ["xtrain", "segment", "model.pt", "slices", "out dir.zarr"])
    started = now()
    rec = provenance(started, inputs={"volume": folder}, models={"model": model})
    assert rec["command"] == "xtrain segment model.pt slices 'out dir.zarr'"
    assert rec["started"] == started and rec["ended"] >= started and rec["host"] and rec["xtrain_version"]
    assert rec["models"]["model"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    h = hashlib.sha256()  # independently: each file's relative name, size and content hash, sorted
    for f in sorted(folder.iterdir()):
        h.update(f"slices/{f.name}\0{f.stat().st_size}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    assert rec["inputs"]["volume"] == {"spec": str(folder), "files": 3, "sha256": h.hexdigest()}


def test_checksum_changes_with_one_byte_and_commit_is_the_checkouts():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "a.bin"
        f.write_bytes(b"\x00" * 100)
        before = checksum([f])
        f.write_bytes(b"\x00" * 99 + b"\x01")
        assert checksum([f]) != before
    commit, _ = git_commit()
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert commit == head.stdout.strip()
