"""``xtrain ingest``: round trips, labels, attributes, and every bad input through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from xtrain.cli import main
from xtrain.data.ingest import ingest
from xtrain.data.store import open_store

SHAPE = (37, 61, 53)  # (Z, Y, X): more than one 32-deep slab, odd in-plane sizes
RAW_LABELS = (0, 128, 255)


def volume(dtype, shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0.5, 0.2, size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def raw_labels(shape=SHAPE, seed=1) -> np.ndarray:
    return np.asarray(RAW_LABELS, np.uint8)[np.random.default_rng(seed).integers(0, 3, size=shape)]


def write_folder(folder, vol, name="s_{}.tif"):
    """Slices numbered from 1 without padding, so lexical order (s_1, s_10, s_11 ...) is wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(vol):
        tifffile.imwrite(folder / name.format(z + 1), plane, compression="zlib")
    return folder


@pytest.fixture
def scan(tmp_path):
    """A uint16 image folder and a matching 0/128/255 label folder."""
    image = volume(np.uint16)
    labels = raw_labels()
    return write_folder(tmp_path / "images", image), write_folder(tmp_path / "labels", labels), image, labels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_folder_roundtrip(tmp_path, dtype):
    vol = volume(dtype)
    out = ingest(write_folder(tmp_path / "images", vol), tmp_path / "v.zarr")
    store = open_store(out)
    assert store.image.dtype == vol.dtype and store.labels is None
    np.testing.assert_array_equal(store.image[:], vol)  # also proves natural slice order
    stats = store.info.stats
    assert stats["min"] == pytest.approx(float(vol.min())) and stats["max"] == pytest.approx(float(vol.max()))
    assert stats["mean"] == pytest.approx(float(vol.astype(np.float64).mean()), rel=1e-6)
    tol = (float(vol.max()) - float(vol.min())) / 1000  # float percentiles are binned
    assert stats["p99_5"] == pytest.approx(float(np.percentile(vol, 99.5)), abs=max(tol, 1.0))


def test_multipage_and_glob_forms(tmp_path):
    vol = volume(np.uint16)
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    store = open_store(ingest(tmp_path / "vol.tif", tmp_path / "a.zarr"))
    np.testing.assert_array_equal(store.image[:], vol)
    assert store.info.source["images"] == str((tmp_path / "vol.tif").resolve())

    write_folder(tmp_path / "images", vol)
    store = open_store(ingest(str(tmp_path / "images" / "s_*.tif"), tmp_path / "b.zarr"))
    np.testing.assert_array_equal(store.image[:], vol)


def test_labels_and_attributes(tmp_path, scan):
    images, labels, image, raw = scan
    out = tmp_path / "scan.zarr"
    code = main(["ingest", str(images), str(out), "--labels", str(labels), "--label-map", "0:0,128:1,255:2",
                 "--voxel-size", "12.5", "--chunks", "1,32,32"])
    assert code == 0
    store = open_store(out)
    np.testing.assert_array_equal(store.image[:], image)
    assert store.labels.dtype == np.uint8
    np.testing.assert_array_equal(store.labels[:], np.searchsorted(RAW_LABELS, raw))
    assert store.image.chunks == (1, 32, 32)

    info = store.info
    assert info.classes == ["pore", "ysz", "ni"] and info.voxel_size_nm == 12.5
    for key in ("p0_5", "p99_5", "mean", "std", "hist"):
        assert key in info.stats
    assert sum(info.stats["hist"]["counts"]) == image.size
    src = info.source
    assert src["images"][0].endswith("s_1.tif") and src["images"][9].endswith("s_10.tif")
    assert os.path.isabs(src["images"][0]) and len(src["labels"]) == SHAPE[0]
    assert src["label_map"] == {"0": 0, "128": 1, "255": 2} and "ingested" in src and "xtrain_version" in src


def test_labels_without_map_are_class_ids(tmp_path):
    ids = np.random.default_rng(2).integers(0, 2, size=SHAPE).astype(np.uint8)
    out = ingest(write_folder(tmp_path / "i", volume(np.uint8)), tmp_path / "o.zarr",
                 labels=write_folder(tmp_path / "l", ids), classes=["pore", "solid"])
    store = open_store(out)
    assert store.info.classes == ["pore", "solid"]
    np.testing.assert_array_equal(store.labels[:], ids)


def test_overwrite_replaces(tmp_path, scan):
    images, _, image, _ = scan
    out = tmp_path / "o.zarr"
    ingest(images, out)
    ingest(images, out, overwrite=True)
    np.testing.assert_array_equal(open_store(out).image[:], image)


# ----------------------------------------------------------------------------- bad input via the CLI


def run_bad(capsys, tmp_path, args, out_name="out.zarr"):
    """Run the CLI expecting a user error: exit 2, one stderr line; return that line."""
    out = tmp_path / out_name
    existed = out.exists()
    code = main(["ingest", *[str(a) for a in args[:1]], str(out), *[str(a) for a in args[1:]]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("xtrain ingest: error: ")
    assert out.exists() == existed
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    return err[0]


def test_missing_images(capsys, tmp_path):
    assert "nothere" in run_bad(capsys, tmp_path, [tmp_path / "nothere"])


def test_empty_folder_and_empty_glob(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "empty" in run_bad(capsys, tmp_path, [tmp_path / "empty"])
    assert "*.tif" in run_bad(capsys, tmp_path, [tmp_path / "empty" / "*.tif"])


def test_corrupt_tiff(capsys, tmp_path):
    folder = write_folder(tmp_path / "images", volume(np.uint8, shape=(3, 61, 53)))
    (folder / "s_2.tif").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "s_2.tif" in run_bad(capsys, tmp_path, [folder])


@pytest.mark.parametrize("where", ["images", "labels"])
def test_truncated_tiff(capsys, tmp_path, scan, where):
    images, labels, _, _ = scan
    victim = (images if where == "images" else labels) / "s_12.tif"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    line = run_bad(capsys, tmp_path, [images, "--labels", labels, "--label-map", "0:0,128:1,255:2"])
    assert "s_12.tif" in line and "truncated" in line


def test_truncated_multipage(capsys, tmp_path):
    tifffile.imwrite(tmp_path / "vol.tif", volume(np.uint16))
    data = (tmp_path / "vol.tif").read_bytes()
    (tmp_path / "vol.tif").write_bytes(data[: len(data) // 2])
    assert "vol.tif" in run_bad(capsys, tmp_path, [tmp_path / "vol.tif"])


def test_slices_of_different_shape_or_dtype(capsys, tmp_path):
    folder = write_folder(tmp_path / "images", volume(np.uint16, shape=(4, 61, 53)))
    tifffile.imwrite(folder / "s_3.tif", np.zeros((60, 53), np.uint16))
    line = run_bad(capsys, tmp_path, [folder])
    assert "s_3.tif" in line and "(60, 53)" in line and "(61, 53)" in line

    tifffile.imwrite(folder / "s_3.tif", np.zeros((61, 53), np.float32))
    line = run_bad(capsys, tmp_path, [folder])
    assert "s_3.tif" in line and "float32" in line and "uint16" in line


def test_unsupported_dtype(capsys, tmp_path):
    folder = write_folder(tmp_path / "images", np.ones((2, 61, 53), np.int64))
    assert "s_1.tif" in run_bad(capsys, tmp_path, [folder])


def test_image_label_shape_mismatch(capsys, tmp_path, scan):
    """A label volume of another shape, and label slices of another size (a folder of fewer slices is
    matched by number instead: tests/data/test_sparse.py)."""
    images, _, _, _ = scan
    tifffile.imwrite(tmp_path / "short.tif", raw_labels(shape=(36, 61, 53)))
    line = run_bad(capsys, tmp_path, [images, "--labels", tmp_path / "short.tif", "--label-map", "0:0,128:1,255:2"])
    assert "(36, 61, 53)" in line and "(37, 61, 53)" in line and "short" in line
    labels = write_folder(tmp_path / "narrow", raw_labels(shape=(3, 61, 52)))
    line = run_bad(capsys, tmp_path, [images, "--labels", labels, "--label-map", "0:0,128:1,255:2"])
    assert "(3, 61, 52)" in line and "(37, 61, 53)" in line and "narrow" in line


def test_label_value_not_in_map(capsys, tmp_path, scan):
    images, labels, _, raw = scan
    bad = raw[33].copy()  # in the second slab: the first slab was already written
    bad[10, 20] = 77
    tifffile.imwrite(labels / "s_34.tif", bad)
    line = run_bad(capsys, tmp_path, [images, "--labels", labels, "--label-map", "0:0,128:1,255:2"])
    assert "77" in line and "s_34.tif" in line and "0,128,255" in line


def test_label_map_class_out_of_range(capsys, tmp_path, scan):
    images, labels, _, _ = scan
    line = run_bad(capsys, tmp_path, [images, "--labels", labels, "--label-map", "0:0,128:1,255:3"])
    assert "class 3" in line


def test_non_finite_float(capsys, tmp_path):
    vol = volume(np.float32)
    vol[21, 5, 7] = np.nan
    folder = write_folder(tmp_path / "images", vol)
    line = run_bad(capsys, tmp_path, [folder])
    assert "s_22.tif" in line and "nan" in line


def test_existing_output_checked_before_reading(capsys, tmp_path):
    (tmp_path / "out.zarr").mkdir()
    # the input is garbage too: the output check must come first, before any read
    (tmp_path / "bad.tif").write_bytes(b"garbage")
    line = run_bad(capsys, tmp_path, [tmp_path / "bad.tif"])
    assert "out.zarr" in line and "--overwrite" in line


def test_failed_overwrite_keeps_old_store(capsys, tmp_path, scan):
    images, labels, image, raw = scan
    ingest(images, tmp_path / "out.zarr")
    bad = raw[30].copy()
    bad[0, 0] = 1
    tifffile.imwrite(labels / "s_31.tif", bad)
    run_bad(capsys, tmp_path, [images, "--labels", labels, "--label-map", "0:0,128:1,255:2", "--overwrite"])
    np.testing.assert_array_equal(open_store(tmp_path / "out.zarr").image[:], image)


def test_real_cli_subprocess_one_line(tmp_path):
    """The installed entry point, logging and all, prints exactly one line for bad input."""
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + bytes(200))
    proc = subprocess.run([sys.executable, "-m", "xtrain.cli", "ingest", str(tmp_path / "bad.tif"),
                           str(tmp_path / "o.zarr")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "bad.tif" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_volume(real_data, tmp_path):
    """The real scan (uint16, 0/128/255 labels) through globs of its first 39 slices (2 slabs).

    The whole 250 slices take 6-20 s on a shared 2-core machine; a glob subset keeps the
    test fast and also exercises the glob form on real file names.
    """
    out = ingest(str(real_data / "images" / "SOCprist00[0-3]?.tiff"), tmp_path / "soc.zarr",
                 labels=str(real_data / "labels" / "slice__0[0-3]?.tif"), label_map={0: 0, 128: 1, 255: 2})
    store = open_store(out)
    assert store.shape == (39, 501, 501) and store.image.dtype == np.uint16
    for z in (0, 9, 31, 38):  # 9 -> 10: natural order; 31/32: across the slab boundary
        expected = tifffile.imread(real_data / "images" / f"SOCprist{z + 1:04d}.tiff")
        np.testing.assert_array_equal(store.image[z], expected)
        raw = tifffile.imread(real_data / "labels" / f"slice__{z + 1:03d}.tif")
        np.testing.assert_array_equal(store.labels[z], np.searchsorted(RAW_LABELS, raw))
    fractions = np.bincount(store.labels[:].ravel(), minlength=3) / store.labels.size
    assert np.allclose(fractions, [0.30, 0.45, 0.25], atol=0.05)  # README: roughly 0.30/0.45/0.25
    assert store.info.stats["p0_5"] < store.info.stats["mean"] < store.info.stats["p99_5"]


def test_full_disk_is_one_line_exit_2_naming_the_store_and_nothing_is_left(capsys, tmpfs, scan):
    """The fault: a full output file system gave a zarr/asyncio traceback and exit 1."""
    mnt = tmpfs("64k")
    images, labels, _, _ = scan
    code = main(["ingest", str(images), str(mnt / "scan.zarr"), "--labels", str(labels), "--label-map",
                 "0:0,128:1,255:2"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("xtrain ingest: error: no space left on device while writing the ingested store")
    assert str(mnt / "scan.zarr") in err and "\n" not in err
    assert list(mnt.iterdir()) == []  # no partial store


# ----------------------------------------------------------------------------- sparse labels: --unlabelled


def painted_volume(shape=(9, 44, 38), seed=3):
    """A synthetic scan (uint16) and its exact classes; napari-style labels: 0 unpainted, classes painted as
    1, 2, 3 on two y-normal planes (y 10, 30) and one x-normal plane (x 7)."""
    from xtrain.data.synth import generate

    image, ids, _ = generate(shape, "easy", seed)
    painted = np.zeros(shape, np.uint8)
    for y in (10, 30):
        painted[:, y, :] = ids[:, y, :] + 1
    painted[:, :, 7] = ids[:, :, 7] + 1
    return image, ids, painted


def write_labels_as(fmt, path, painted):
    """``painted`` written the way each tool writes a label image; returns the spec to give --labels."""
    if fmt == "tiff":  # napari's Labels layer saves through tifffile
        tifffile.imwrite(path / "painted.tif", painted)
        return path / "painted.tif"
    if fmt == "hdf5":
        import h5py

        with h5py.File(path / "painted.h5", "w") as f:
            f.create_dataset("labels", data=painted, chunks=(1, 16, 16), compression="gzip")
        return f"{path / 'painted.h5'}:/labels"
    if fmt == "zarr-v2":
        import zarr

        zarr.create_array(str(path / "painted.zarr"), data=painted, chunks=(3, 16, 16), zarr_format=2)
        return path / "painted.zarr"
    import zarr  # ome-zarr-py: an image with a label image under labels/, as napari-ome-zarr reads them
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image, write_labels

    root = zarr.group(store=parse_url(str(path / "scan.ome.zarr"), mode="w").store)
    write_image(np.zeros(painted.shape, np.uint16), root, axes="zyx", scale_factors=(2,))
    write_labels(painted, root, name="painted", axes="zyx", scale_factors=(2,))
    return path / "scan.ome.zarr" / "labels" / "painted"


@pytest.mark.parametrize("fmt", ["tiff", "hdf5", "zarr-v2", "ome-zarr"])
def test_unlabelled_value_in_every_label_format(tmp_path, fmt, caplog):
    """--labels painted --label-map 1:0,2:1,3:2 --unlabelled 0: planes painted normal to y and x."""
    import logging

    from xtrain.data.labels import IGNORE, LabelCensus, census

    image, ids, painted = painted_volume()
    tifffile.imwrite(tmp_path / "scan.tif", image)
    spec = write_labels_as(fmt, tmp_path, painted)
    out = tmp_path / "s.zarr"
    with caplog.at_level(logging.INFO, logger="xtrain"):
        assert main(["ingest", str(tmp_path / "scan.tif"), str(out), "--labels", str(spec),
                     "--label-map", "1:0,2:1,3:2", "--unlabelled", "0"]) == 0
    store = open_store(out)
    expected = np.where(painted == 0, IGNORE, painted - 1).astype(np.uint8)
    np.testing.assert_array_equal(store.labels[:], expected)
    counted = LabelCensus.from_dict(store.info.labels)
    assert counted == census(expected, num_classes=3)
    assert counted.painted("y") == [10, 30] and counted.painted("x") == [7] and counted.painted("z") == []
    assert store.info.source["unlabelled"] == 0
    assert counted.summary() in caplog.text and "labels on 2 of 44 y-planes, 1 of 38 x-planes" in caplog.text


def test_scribbles_normal_to_y_and_x(tmp_path):
    """Strokes inside phase regions that never touch a boundary (phase regions of y- and x-normal planes
    eroded, every 5th line kept): stored as painted, IGNORE elsewhere, found by the census as scribbles."""
    from scipy import ndimage

    from xtrain.data.labels import IGNORE, LabelCensus

    image, ids, _ = painted_volume(shape=(24, 44, 38))
    painted = np.zeros(ids.shape, np.uint8)
    for axis, index in ((1, 12), (1, 31), (2, 20)):
        plane = np.take(ids, index, axis=axis)  # (Z, X) or (Z, Y)
        strokes = np.zeros(plane.shape, np.uint8)
        for c in range(3):
            inside = ndimage.binary_erosion(plane == c, iterations=2)  # >= 2 voxels from any boundary
            inside[:, np.arange(plane.shape[1]) % 5 != 0] = False  # lines along z, 5 apart
            strokes[inside] = c + 1
        target = [slice(None)] * 3
        target[axis] = index
        painted[tuple(target)] = np.maximum(painted[tuple(target)], strokes)
    known = painted > 0
    assert 0.001 < known.mean() < 0.05  # a few % of the voxels, at most
    # no stroke voxel touches another phase within its plane: a scribble, not a boundary label
    for axis, index in ((1, 12), (1, 31), (2, 20)):
        plane, strokes = np.take(ids, index, axis=axis), np.take(painted, index, axis=axis)
        for c in range(3):
            near = ndimage.binary_dilation(plane != c)
            assert not (near & (strokes == c + 1)).any()

    tifffile.imwrite(tmp_path / "scan.tif", image)
    tifffile.imwrite(tmp_path / "strokes.tif", painted)
    store = open_store(ingest(tmp_path / "scan.tif", tmp_path / "s.zarr", labels=tmp_path / "strokes.tif",
                              label_map={1: 0, 2: 1, 3: 2}, unlabelled=0))
    np.testing.assert_array_equal(store.labels[:], np.where(known, ids, IGNORE))
    counted = LabelCensus.from_dict(store.info.labels)
    assert counted.per_plane == {a: known.sum(axis=axes).tolist()
                                 for a, axes in (("z", (1, 2)), ("y", (0, 2)), ("x", (0, 1)))}
    assert counted.labelled == int(known.sum()) and not any(counted.painted(a) for a in "zyx")
    assert counted.summary().startswith("partial labels (scribbles) on ")


def test_unlabelled_and_not_allowed_are_distinct(capsys, tmp_path):
    """IGNORE (255) is the stored id of an unlabelled voxel and label_lut's old 'not a class' entry: a raw 255
    outside the map is still refused, never silently taken for unlabelled; the unlabelled value never errs."""
    from xtrain.data.labels import IGNORE
    from xtrain.data.volumes import UNMAPPED, label_lut

    lut = label_lut(np.uint8, {1: 0, 2: 1, 3: 2}, 3, "p.tif", unlabelled=0)
    assert lut[0] == IGNORE and lut[1] == 0 and lut[255] == UNMAPPED != IGNORE and lut[4] == UNMAPPED
    image, _, painted = painted_volume()
    tifffile.imwrite(tmp_path / "scan.tif", image)
    painted[4, 10, 5] = 255
    tifffile.imwrite(tmp_path / "painted.tif", painted)
    line = run_bad(capsys, tmp_path, [tmp_path / "scan.tif", "--labels", tmp_path / "painted.tif",
                                      "--label-map", "1:0,2:1,3:2", "--unlabelled", "0"])
    assert "label value 255 at z=4 y=10 x=5" in line and "valid raw values: 1,2,3, unlabelled: 0" in line


@pytest.mark.parametrize("args, expected", [
    (["--label-map", "0:0,1:1,2:2", "--unlabelled", "0"], "--unlabelled 0 is also in --label-map (0:0)"),
    (["--unlabelled", "2"], "--unlabelled 2 is class id 2 (without --label-map the raw values 0..2"),
    (["--label-map", "1:0,2:1,3:2", "--unlabelled", "300"], "--unlabelled 300 can never occur in uint8 labels"),
])
def test_unlabelled_refusals(capsys, tmp_path, args, expected):
    image, _, painted = painted_volume()
    tifffile.imwrite(tmp_path / "scan.tif", image)
    tifffile.imwrite(tmp_path / "painted.tif", painted)
    assert expected in run_bad(capsys, tmp_path, [tmp_path / "scan.tif", "--labels", tmp_path / "painted.tif", *args])


def test_labels_that_label_no_voxel_and_unlabelled_without_labels(capsys, tmp_path):
    image, _, _ = painted_volume()
    tifffile.imwrite(tmp_path / "scan.tif", image)
    tifffile.imwrite(tmp_path / "blank.tif", np.zeros(image.shape, np.uint8))
    line = run_bad(capsys, tmp_path, [tmp_path / "scan.tif", "--labels", tmp_path / "blank.tif",
                                      "--label-map", "1:0,2:1,3:2", "--unlabelled", "0"])
    assert "label no voxel: every voxel holds the unlabelled value 0" in line and "blank.tif" in line
    assert "without --labels" in run_bad(capsys, tmp_path, [tmp_path / "scan.tif", "--unlabelled", "0"])


def test_a_class_never_labelled_is_a_warning(tmp_path, caplog):
    import logging

    image, ids, painted = painted_volume()
    painted[painted == 3] = 0  # no Ni painted anywhere
    tifffile.imwrite(tmp_path / "scan.tif", image)
    tifffile.imwrite(tmp_path / "painted.tif", painted)
    with caplog.at_level(logging.WARNING, logger="xtrain"):
        store = open_store(ingest(tmp_path / "scan.tif", tmp_path / "s.zarr", labels=tmp_path / "painted.tif",
                                  label_map={1: 0, 2: 1, 3: 2}, unlabelled=0))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "class 'ni' (id 2) is never labelled" in warned[0] and "cannot learn it" in warned[0]
    assert store.info.labels["per_class"][2] == 0


def test_dense_labels_are_stored_exactly_as_before(tmp_path, scan):
    """A dense ingest writes the same arrays (every chunk file, byte for byte) and attributes as a store written
    directly with the mapped labels; only the census is new, and it says dense."""
    import json

    from xtrain.data.labels import census
    from xtrain.data.stats import volume_stats
    from xtrain.data.store import write_store
    from xtrain.data.volumes import open_volume

    images, labels, image, raw = scan
    out = ingest(images, tmp_path / "new.zarr", labels=labels, label_map={0: 0, 128: 1, 255: 2}, voxel_size_nm=10.0)
    ids = np.searchsorted(RAW_LABELS, raw).astype(np.uint8)
    (tmp_path / "ref").mkdir()
    ref_path = tmp_path / "ref" / "new.zarr"  # the same name: the OME multiscale is named after it
    with write_store(ref_path, SHAPE) as w:  # the store as ingest wrote it before sparse labels
        w.create("image", SHAPE, np.uint16)[:] = image
        w.create("labels", SHAPE, np.uint8)[:] = ids
        w.info.voxel_size_nm = 10.0
        w.info.stats = volume_stats(open_volume(images))
    new_files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    ref_files = {p.relative_to(ref_path): p.read_bytes() for p in ref_path.rglob("*") if p.is_file()}
    assert new_files.keys() == ref_files.keys()
    root = {name for name in new_files if str(name) == "zarr.json"}
    assert {n for n in new_files if new_files[n] != ref_files[n]} == root  # only the root attributes differ
    new, ref = (json.loads(f[next(iter(root))])["attributes"] for f in (new_files, ref_files))
    assert new["ome"] == ref["ome"]
    info_new, info_ref = new["xtrain"], ref["xtrain"]
    assert info_new.pop("labels") == census(ids, num_classes=3).to_dict() and "labels" not in info_ref
    assert info_new.pop("source").keys() == {"kind", "images", "labels", "provenance", "label_map", "ingested",
                                            "xtrain_version"}
    info_ref.pop("source")
    assert info_new == info_ref
