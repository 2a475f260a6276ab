"""Volumes with missing or damaged parts are refused, never read as fill values, in every format open_volume reads.

Zarr (xtrain stores, v2, v3 sharded and not, OME-Zarr 0.4/0.5): a deleted, empty or truncated shard/chunk;
one flipped byte (crc32c).  HDF5: virtual-dataset sources, external links, external raw files.  TIFF: gaps
in a numbered slice folder.  And the commands: segment, ingest, evaluate and training refuse with one
line, exit 2, nothing written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from conftest import make_store, tiny_config
from xtrain.cli import main
from xtrain.data.sampler import RandomPatches
from xtrain.data.store import open_store
from xtrain.data.volumes import open_volume
from xtrain.errors import CorruptFileError, MissingDataError

SHAPE = (70, 40, 30)  # three 32-deep shard layers, the last one short


def shard_index(path: Path, n_inner: int) -> np.ndarray:
    """(offset, nbytes) per inner chunk of a shard file (index at the end + crc32c: zarr's default)."""
    data = path.read_bytes()
    return np.frombuffer(data[-(16 * n_inner + 4):-4], dtype="<u8").reshape(n_inner, 2)


def flip_byte_in_chunk(path: Path, n_inner: int, chunk: int = 0) -> None:
    offset, nbytes = (int(v) for v in shard_index(path, n_inner)[chunk])
    data = bytearray(path.read_bytes())
    data[offset + nbytes // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "scan.zarr", shape=SHAPE, seed=4)


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("xtrain")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- xtrain stores


def test_stores_are_written_complete_with_checksums(tmp_path):
    from xtrain.data.store import write_store

    with write_store(tmp_path / "zeros.zarr", SHAPE) as w:  # all-zero labels: every shard still on disk
        w.create("image", SHAPE, np.uint16)[:] = 1
        w.create("labels", SHAPE, np.uint8)[:] = 0
    s = open_store(tmp_path / "zeros.zarr")
    assert s.info.all_chunks_written
    assert sorted(os.listdir(tmp_path / "zeros.zarr/labels/ground_truth/0/c")) == ["0", "1", "2"]
    codecs = s.labels.metadata.to_dict()["codecs"][0]["configuration"]
    assert [c["name"] for c in codecs["codecs"]][-1] == "crc32c"
    assert [c["name"] for c in codecs["index_codecs"]][-1] == "crc32c"
    n_inner = 32  # 32 x 1 x 256 x 256 chunks in a 32 x 40 x 30 shard
    assert (shard_index(tmp_path / "zeros.zarr/labels/ground_truth/0/c/0/0/0", n_inner)[:, 1] > 0).all()


@pytest.mark.parametrize("array", ["0", "labels/ground_truth/0"])
def test_a_deleted_shard_is_refused_naming_it_and_its_z_range(store, array):
    (store / array / "c/1/0/0").unlink()
    for dataset in (None, "labels"):
        with pytest.raises(MissingDataError) as e:
            open_volume(store, dataset=dataset)
        assert f"{store / array}/c/1/0/0" in str(e.value) and "(z 32..63) is missing" in str(e.value)
    with pytest.raises(MissingDataError, match="xtrain writes every chunk"):
        open_store(store, allow_missing=True)  # damage to an xtrain store: no way around it


def test_an_empty_or_truncated_shard_is_refused_at_open(store):
    shard = store / "0/c/2/0/0"
    data = shard.read_bytes()
    shard.write_bytes(b"")  # an interrupted copy: zarr itself reads a 0-byte shard as zeros
    with pytest.raises(MissingDataError, match=r"c/2/0/0' \(z 64..69\) is empty \(0 bytes\)"):
        open_volume(store)
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"c/2/0/0' \(z 64..69\) is truncated or damaged: its index fails"):
        open_volume(store)
    shard.write_bytes(data[:100])  # shorter than the index itself
    with pytest.raises(CorruptFileError, match=r"is truncated: 100 bytes, shorter than its index"):
        open_volume(store)


def test_a_flipped_byte_is_an_error_naming_the_chunk_not_changed_voxels(store):
    flip_byte_in_chunk(store / "0/c/1/0/0", n_inner=32, chunk=5)  # the chunk at z 37
    vol = open_volume(store)  # the headers are fine: caught when the chunk is read
    np.testing.assert_array_equal(vol.read(vol.planes(0, 32)), open_store(store).image[0:32])  # other shards read
    expected = rf"chunk z 37..37, y 0..39, x 0..29 of shard '{store}/0/c/1/0/0' \(z 32..63\) fails to decode " \
               r"\(ValueError: Stored and computed checksum do not match"
    with pytest.raises(CorruptFileError, match=expected):
        vol.read(vol.planes(30, 40))
    with pytest.raises(CorruptFileError, match=expected):
        vol.array.compute()  # the Dask graph over the same reader
    with pytest.raises(CorruptFileError, match=expected):
        vol.source[37:38, 0:8, 0:8]  # the sampler's direct reads


def test_training_sampler_refuses_a_damaged_store(store):
    cfg = tiny_config(store).data
    (store / "labels/ground_truth/0/c/0/0/0").unlink()
    with pytest.raises(MissingDataError, match=r"labels 'ground_truth'.*c/0/0/0' \(z 0..31\) is missing"):
        RandomPatches(store, cfg, (0, 60), seed=0)


def test_training_sampler_names_a_flipped_byte(store):
    flip_byte_in_chunk(store / "0/c/0/0/0", n_inner=32, chunk=3)
    cfg = tiny_config(store).data
    patches = RandomPatches(store, cfg, (0, 8), seed=0)
    with pytest.raises(CorruptFileError, match=r"chunk z 3..3, .* of shard '.*/0/c/0/0/0' \(z 0..31\) fails"):
        for i in range(64):
            patches[i]


def test_train_refuses_before_starting_ray(store, tmp_path, capsys):
    (store / "0/c/1/0/0").unlink()
    code = main(["train", "--config", "configs/tiny.yaml", "--data", str(store), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "c/1/0/0' (z 32..63) is missing" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_segment_ingest_evaluate_refuse_with_one_line_and_write_nothing(tiny_model, store, tmp_path, capsys, damage):
    shard = store / "0/c/1/0/0"
    if damage == "deleted":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-7])
    fragment = "(z 32..63) is missing" if damage == "deleted" else "(z 32..63) is truncated"
    out = tmp_path / "out"
    out.mkdir()
    for args in (["segment", str(tiny_model), str(store), str(out / "seg.zarr")],
                 ["segment", str(tiny_model), str(store), str(out / "seg.zarr"), "--resume"],
                 ["ingest", str(store), str(out / "copy.zarr")],
                 ["evaluate", str(store), str(store)]):
        assert main(args) == 2, args
        line = one_line(capsys.readouterr().err)
        assert f"{store}/0/c/1/0/0" in line and fragment in line, line
    assert list(out.iterdir()) == []  # no output, no .partial work folder, no lock file


# ----------------------------------------------------------------------------- foreign Zarr


def _foreign(tmp_path: Path, kind: str) -> tuple[Path, Path, np.ndarray]:
    """(spec, the file holding z 4..7, data) of a foreign Zarr written with chunks of 4 in z."""
    data = np.random.default_rng(0).integers(1, 1000, (11, 9, 8)).astype(np.uint16)
    root = tmp_path / f"{kind}.zarr"
    if kind in ("v2", "v3", "v3-sharded"):
        arr = zarr.create_array(str(root), shape=data.shape, dtype=data.dtype, chunks=(4, 9, 8),
                                shards=(4, 9, 8) if kind == "v3-sharded" else None,
                                zarr_format=2 if kind == "v2" else 3)
        arr[:] = data
        folder = root
    else:
        from ome_zarr.format import FormatV04, FormatV05
        from ome_zarr.writer import write_image

        fmt, version = (FormatV04(), 2) if kind == "ome-0.4" else (FormatV05(), 3)
        write_image(data, zarr.open_group(str(root), mode="w", zarr_format=version), axes="zyx", fmt=fmt,
                    scale_factors=[], storage_options={"chunks": (4, 9, 8)})
        group = zarr.open_group(str(root), mode="r")
        level = dict(group.attrs.get("ome", group.attrs))["multiscales"][0]["datasets"][0]["path"]
        arr, folder = group[level], root / level
    return root, folder / arr.metadata.encode_chunk_key((1, 0, 0)), data


@pytest.mark.parametrize("kind", ["v2", "v3", "v3-sharded", "ome-0.4", "ome-0.5"])
def test_foreign_zarr_with_an_absent_chunk_is_refused_unless_allowed(tmp_path, kind, caplog):
    root, chunk, data = _foreign(tmp_path, kind)
    np.testing.assert_array_equal(open_volume(root).array.compute(), data)
    chunk.unlink()
    with pytest.raises(MissingDataError) as e:
        open_volume(root)
    assert "(z 4..7) is missing" in str(e.value) and "--allow-missing" in str(e.value), e.value
    with caplog.at_level(logging.WARNING):
        vol = open_volume(root, allow_missing=True)
    assert "read as the fill value 0 (--allow-missing)" in caplog.text
    expected = data.copy()
    expected[4:8] = 0
    np.testing.assert_array_equal(vol.array.compute(), expected)
    assert vol.reopened().options["allow_missing"] is True  # the choice travels to workers
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(b"")  # a zero-length chunk file: truncated, whatever --allow-missing says
    with pytest.raises(MissingDataError, match=r"\(z 4..7\) is empty \(0 bytes\)"):
        open_volume(root)


def test_inner_chunks_a_shard_index_marks_empty_are_never_written_not_lost(tmp_path):
    data = np.zeros((8, 9, 8), np.uint16)
    data[4:] = 7  # the first 4 inner chunks all fill value: zarr marks them empty in the index
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, dtype=data.dtype, chunks=(1, 9, 8),
                            shards=(8, 9, 8))
    arr[:] = data
    assert (shard_index(tmp_path / "a.zarr/c/0/0/0", 8)[:4] == np.iinfo(np.uint64).max).all()
    np.testing.assert_array_equal(open_volume(tmp_path / "a.zarr").array.compute(), data)


def test_store_from_before_every_chunk_was_written_is_ambiguous(store):
    import json

    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["xtrain"].pop("all_chunks_written")  # as written by earlier xtrain versions
    (store / "zarr.json").write_text(json.dumps(meta))
    (store / "labels/ground_truth/0/c/2/0/0").unlink()  # e.g. an all-pore shard zarr did not write
    with pytest.raises(MissingDataError, match=r"never written because it held only the fill value 0.*--allow-missing"):
        open_volume(store, dataset="labels")
    vol = open_volume(store, dataset="labels", allow_missing=True)
    labels = vol.read(vol.planes(64, 70))
    assert (labels == 0).all()


# ----------------------------------------------------------------------------- HDF5 / NeXus


def _vds(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """scan.h5:/data, a virtual dataset over three source files of 2 slices each (relative names)."""
    data = np.arange(6 * 4 * 5, dtype=np.uint16).reshape(6, 4, 5) + 1
    layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
    for i in range(3):
        with h5py.File(tmp_path / f"part{i}.h5", "w") as f:
            f["frames"] = data[2 * i:2 * i + 2]
        layout[2 * i:2 * i + 2] = h5py.VirtualSource(f"part{i}.h5", "frames", shape=(2, 4, 5))
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_virtual_dataset("data", layout, fillvalue=0)
    return tmp_path / "scan.h5", data


def test_virtual_dataset_with_a_missing_source_is_refused(tmp_path, monkeypatch, caplog):
    scan, data = _vds(tmp_path)
    monkeypatch.chdir("/")  # HDF5 finds relative sources beside the file, not in the working directory
    np.testing.assert_array_equal(open_volume(scan).array.compute(), data)
    (tmp_path / "part1.h5").unlink()
    with pytest.raises(MissingDataError, match=r"virtual dataset: its source 'part1.h5' is missing, so z 2..3 "
                                               r"would read as fill values"):
        open_volume(f"{scan}:/data")
    with caplog.at_level(logging.WARNING):
        vol = open_volume(scan, allow_missing=True)
    assert "read as the fill value (--allow-missing)" in caplog.text
    assert (vol.read(vol.planes(2, 4)) == 0).all() and (vol.read(vol.planes(0, 2)) == data[:2]).all()
    with h5py.File(tmp_path / "part1.h5", "w") as f:
        f["other"] = data[2:4]  # the file is back, but not its dataset
    with pytest.raises(MissingDataError, match=r"its source 'part1.h5' has no dataset 'frames'"):
        open_volume(scan)


def test_external_links_to_missing_files_are_refused(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    with h5py.File(tmp_path / "frames.h5", "w") as f:
        f["data"] = data
    with h5py.File(tmp_path / "master.nxs", "w") as f:
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        nxdata = entry.create_group("data")
        nxdata.attrs.update({"NX_class": "NXdata", "signal": "data"})
        nxdata["data"] = h5py.ExternalLink("frames.h5", "/data")  # how Eiger/Dectris master files link data
        f["entry/dark"] = np.zeros((2, 4, 5), np.uint16)
    np.testing.assert_array_equal(open_volume(tmp_path / "master.nxs").array.compute(), data)
    (tmp_path / "frames.h5").unlink()
    for spec in (tmp_path / "master.nxs", f"{tmp_path / 'master.nxs'}:/entry/data/data"):
        with pytest.raises(MissingDataError, match=r"master.nxs:/entry/data/data' is an external link to 'frames.h5', "
                                                   "which does not exist"):
            open_volume(spec)
    with h5py.File(tmp_path / "plain.h5", "w") as f:  # no NeXus attributes: the volume is found by elimination
        f["volume"] = h5py.ExternalLink("gone.h5", "/data")
        f["dark"] = np.zeros((2, 4, 5), np.uint16)  # would be "the only 3-D dataset" otherwise
    with pytest.raises(MissingDataError, match=r"plain.h5:/volume' is an external link to 'gone.h5'.*by elimination"):
        open_volume(tmp_path / "plain.h5")


def test_external_raw_data_file_missing(tmp_path, monkeypatch):
    raw = tmp_path / "raw.bin"
    np.arange(60, dtype=np.uint16).tofile(raw)
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("data", shape=(3, 4, 5), dtype=np.uint16, external=[("raw.bin", 0, 120)])
    monkeypatch.chdir(tmp_path)  # HDF5 reads relative external files from the working directory
    vol = open_volume(tmp_path / "ext.h5")
    assert vol.read(vol.planes(0, 3)).ravel().tolist() == list(range(60))
    raw.write_bytes(raw.read_bytes()[:60])
    with pytest.raises(MissingDataError, match=r"keeps its raw data in 'raw.bin', which is shorter than 120 bytes"):
        open_volume(tmp_path / "ext.h5")
    raw.unlink()
    with pytest.raises(MissingDataError, match=r"'raw.bin', which does not exist"):
        open_volume(tmp_path / "ext.h5")
    monkeypatch.chdir("/")
    np.arange(60, dtype=np.uint16).tofile(raw)  # there again, but not where HDF5 looks: said so, not "corrupt"
    with pytest.raises(MissingDataError, match=r"looked for as '/raw.bin'.*HDF5_EXTFILE_PREFIX"):
        open_volume(tmp_path / "ext.h5")


# ----------------------------------------------------------------------------- numbered slice folders


def _slices(folder: Path, numbers, name="slice_{:04d}.tif") -> None:
    folder.mkdir(exist_ok=True)
    for n in numbers:
        tifffile.imwrite(folder / name.format(n), np.full((6, 7), n, np.uint16))


def test_a_gap_in_the_slice_numbers_is_refused_naming_the_missing_ones(tmp_path, caplog):
    _slices(tmp_path / "scan", [*range(0, 40), *range(42, 50)])
    for spec in (tmp_path / "scan", str(tmp_path / "scan" / "*.tif")):
        with pytest.raises(MissingDataError, match=r"gap in its file numbers \(step 1\): no slice numbered 40, 41 "
                                                   r"\(after 'slice_0039.tif', z 39\)"):
            open_volume(spec)
    with caplog.at_level(logging.WARNING):
        vol = open_volume(tmp_path / "scan", allow_missing=True)
    assert "stacking the 48 slices present in order" in caplog.text
    assert vol.shape[0] == 48 and int(vol.read(vol.planes(40, 41))[0, 0, 0]) == 42
    assert vol.provenance["number_gaps"] == [40, 41]


def test_regular_numbering_with_a_step_or_without_a_number_has_no_gap(tmp_path):
    _slices(tmp_path / "every_2nd", range(10, 30, 2))  # every second slice exported: no gap
    assert open_volume(tmp_path / "every_2nd").shape[0] == 10
    _slices(tmp_path / "two_numbers", [1, 2, 4], name="scan7_{:d}.tif")  # the varying run decides: 3 is missing
    with pytest.raises(MissingDataError, match="no slice numbered 3"):
        open_volume(tmp_path / "two_numbers")
    _slices(tmp_path / "mixed", [1, 2, 5], name="a{:d}.tif")
    tifffile.imwrite(tmp_path / "mixed" / "b9.tif", np.zeros((6, 7), np.uint16))  # another pattern: not a numbering
    assert open_volume(tmp_path / "mixed").shape[0] == 4


def test_ingest_refuses_a_gap_and_takes_it_with_allow_missing(tmp_path, capsys):
    _slices(tmp_path / "scan", [*range(0, 5), *range(6, 9)])
    assert main(["ingest", str(tmp_path / "scan"), str(tmp_path / "s.zarr")]) == 2
    assert "no slice numbered 5" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "s.zarr").exists()
    assert main(["ingest", str(tmp_path / "scan"), str(tmp_path / "s.zarr"), "--allow-missing"]) == 0
    s = open_store(tmp_path / "s.zarr")
    assert s.image.shape[0] == 8 and s.info.source["provenance"]["images"]["number_gaps"] == [5]
