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


# ----------------------------------------------------------------------------- every writer uses it

KEYS = {"command", "xtrain_version", "git_commit", "git_dirty", "host", "python", "started", "ended", "inputs",
        "models"}


def expected_checksum(*paths) -> str:
    """The input checksum, computed here independently: each file's relative name, size and sha256, sorted."""
    from pathlib import Path

    files = []
    for p in map(Path, paths):
        files += [(str(f.relative_to(p.parent)), f) for f in p.rglob("*") if f.is_file()] if p.is_dir() \
            else [(p.name, p)]
    h = hashlib.sha256()
    for name, f in sorted(files):
        h.update(f"{name}\0{f.stat().st_size}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def sha256sum(path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def check_record(rec, inputs=None, models=None):
    """``rec`` has every field, this process's command and the given inputs' / models' sha256."""
    from xtrain.provenance import command_line

    assert set(rec) - {"previous"} == KEYS, set(rec) ^ KEYS
    assert rec["command"] == command_line() and rec["started"] <= rec["ended"]
    assert {k: v["sha256"] for k, v in rec["inputs"].items()} == (inputs or {})
    assert {k: v["sha256"] for k, v in rec["models"].items()} == (models or {})


def test_stores_ingest_synth_and_upgrade_record_it(tmp_path):
    from xtrain.cli import main
    from xtrain.data.store import open_store

    folder = tmp_path / "scan"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for z in range(5):
        tifffile.imwrite(folder / f"s{z:02d}.tif", rng.integers(0, 4000, (11, 13), dtype=np.uint16))
    tifffile.imwrite(tmp_path / "lab.tif", np.array([0, 128, 255], np.uint8)[rng.integers(0, 3, (5, 11, 13))])
    started = now()
    assert main(["ingest", str(folder), str(tmp_path / "in.zarr"), "--labels", str(tmp_path / "lab.tif"),
                 "--label-map", "0:0,128:1,255:2"]) == 0
    rec = open_store(tmp_path / "in.zarr").info.provenance
    check_record(rec, {"images": expected_checksum(*sorted(folder.iterdir())),
                       "labels": expected_checksum(tmp_path / "lab.tif")})
    assert rec["started"] >= started and rec["inputs"]["images"]["files"] == 5

    assert main(["synth", str(tmp_path / "syn.zarr"), "--shape", "3,20,17", "--preset", "easy"]) == 0
    check_record(open_store(tmp_path / "syn.zarr").info.provenance)

    # upgrade: a store of the previous layout (format 1: root arrays) rewritten in place; the record
    # hashes the old store (read before the rename)
    import zarr

    from xtrain.data.store import upgrade

    old = zarr.open_group(str(tmp_path / "old.zarr"), mode="w-", zarr_format=3)
    old.create_array("image", data=rng.integers(0, 9, (4, 8, 8), dtype=np.uint16), chunks=(2, 8, 8))
    old.attrs.update({"xtrain": {"format": 1, "complete": True, "classes": ["pore", "ysz", "ni"], "source": {}}})
    before = expected_checksum(tmp_path / "old.zarr")
    assert upgrade(tmp_path / "old.zarr")
    check_record(open_store(tmp_path / "old.zarr").info.provenance, {"store": before})


def test_segmentations_zarr_tiff_and_nexus_record_it(tiny_model, tmp_path):
    import h5py
    import json

    from conftest import make_store
    from xtrain.infer import segment

    store = make_store(tmp_path / "vol.zarr", (9, 21, 19))
    volume, model = expected_checksum(store), sha256sum(tiny_model)
    fast = dict(tile=32, halo=4, chunks=(8, 16, 16), shard=False)
    records = {}
    zarr_out = segment(tiny_model, store, tmp_path / "seg.zarr", **fast)
    import zarr

    records["zarr"] = dict(zarr.open_group(str(zarr_out), mode="r").attrs)["xtrain"]["provenance"]
    tif = segment(tiny_model, store, tmp_path / "seg.tif", **fast)
    with tifffile.TiffFile(tif) as t:
        records["tiff"] = json.loads(t.imagej_metadata["Info"])["xtrain"]["provenance"]
    h5 = segment(tiny_model, store, tmp_path / "seg.h5", **fast)
    with h5py.File(h5, "r") as f:
        proc = f["/entry/process"]
        assert proc.attrs["NX_class"] == "NXprocess" and proc["program"][()].decode() == "xtrain"
        records["nexus"] = json.loads(proc["provenance/data"][()])
        assert proc["provenance"].attrs["NX_class"] == "NXnote"
        assert proc["version"][()].decode() == records["nexus"]["xtrain_version"]
        assert proc["date"][()].decode() == records["nexus"]["ended"]
        assert json.loads(f["/entry/notes/data"][()])["xtrain"]["provenance"] == records["nexus"]
    for rec in records.values():
        check_record(rec, {"volume": volume}, {"model": model})
        assert rec["models"]["model"]["path"] == str(tiny_model.resolve())


def test_reports_checkpoints_and_the_tune_best_model_record_it(tiny_model, tmp_path):
    import json

    from conftest import make_store, tiny_config
    from xtrain.cli import main
    from xtrain.config import save_config
    from xtrain.infer import segment
    from xtrain.models.checkpoint import load_checkpoint
    from xtrain.pipelines.compare import compare
    from xtrain.tune.sweep import export_best

    store = make_store(tmp_path / "vol.zarr", (9, 21, 19))
    seg = segment(tiny_model, store, tmp_path / "seg.zarr", tile=32, halo=4, chunks=(8, 16, 16), shard=False)
    truth, pred = expected_checksum(store), expected_checksum(seg)

    assert main(["evaluate", str(seg), str(store), "--report", str(tmp_path / "report")]) == 0
    check_record(json.loads((tmp_path / "report" / "metrics.json").read_text())["provenance"],
                 {"prediction": pred, "labels": truth})
    assert "## Provenance" in (tmp_path / "report" / "report.md").read_text()

    compare([str(seg)], str(store), tmp_path / "cmp")
    check_record(json.loads((tmp_path / "cmp" / "compare.json").read_text())["provenance"],
                 {"labels": truth, "prediction seg": pred})
    assert truth in (tmp_path / "cmp" / "compare.md").read_text()

    # train (conftest.tiny_model: fit in-process on RUN/../train.zarr): model.pt and last.pt
    train_store = tiny_model.parent.parent / "train.zarr"
    for name in ("model.pt", "last.pt"):
        rec = load_checkpoint(tiny_model.parent / name)["provenance"]
        check_record(rec, {"store": expected_checksum(train_store)})
        assert rec["inputs"]["store"]["spec"] == str(train_store)

    # tune's best model: the trial's model.pt with the sweep's record, the trial's kept as previous
    trial = tmp_path / "tune" / "trials" / "t1"
    trial.mkdir(parents=True)
    save_config(tiny_config(train_store), trial / "config.yaml")
    (trial / "model.pt").write_bytes(tiny_model.read_bytes())
    export_best(tmp_path / "tune", "t1", now())
    best = load_checkpoint(tmp_path / "tune" / "best" / "model.pt")
    previous = best["provenance"].pop("previous")
    check_record(best["provenance"], {"store": expected_checksum(train_store)}, {"trial": sha256sum(tiny_model)})
    assert previous == load_checkpoint(tiny_model)["provenance"]


def test_nothing_builds_a_record_by_hand():
    """Only xtrain/provenance.py makes a record: no other dict literal holds two of its fields, and no
    other module asks git, the host name or sys.argv (the guard for "one function builds the record")."""
    import ast
    from pathlib import Path

    fields = {"command", "host", "git_commit", "started", "ended", "python"}
    root = Path(__file__).resolve().parents[1] / "xtrain"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "provenance.py" and path.parent == root:
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                if len(keys & fields) >= 2:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {sorted(keys & fields)}")
        for needle in ("rev-parse", "sys.argv", "platform.node("):
            if needle in text:
                found.append(f"{path.relative_to(root)}: {needle}")
    assert not found, found
