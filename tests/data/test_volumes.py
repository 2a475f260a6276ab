"""open_volume: every input format, written the way other tools write it, read back with the right values."""

from __future__ import annotations

import subprocess
import sys

import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile
import zarr

from xtrain.cli import main
from xtrain.data.stats import volume_stats
from xtrain.data.store import open_store
from xtrain.data.volumes import open_volume
from xtrain.errors import InputNotFoundError, InvalidInputError, NonFiniteError, ShapeMismatchError

SHAPE = (7, 33, 29)  # odd sizes


def vol(dtype=np.uint16, shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0.0, 1.0, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -30000), min(info.max, 60000), size=shape, endpoint=True).astype(dtype)


def same(v, expected):
    assert v.shape == expected.shape
    np.testing.assert_array_equal(v.array.compute(), expected)
    np.testing.assert_array_equal(v.read(v.planes(2, 5)), expected[2:5])


# ----------------------------------------------------------------------------- HDF5 / NeXus


def test_hdf5_entry_data_found_as_the_only_3d_dataset(tmp_path):
    data = vol()
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["entry/data/data"] = data
        f["entry/instrument/angles"] = np.arange(10.0)
    v = open_volume(tmp_path / "scan.h5")
    same(v, data)
    assert v.kind == "hdf5" and v.provenance["dataset"] == "/entry/data/data"


def test_nexus_default_signal(tmp_path):
    data, decoy = vol(seed=1), vol(seed=2)
    with h5py.File(tmp_path / "scan.nxs", "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "recon"})
        nxdata = entry.create_group("recon")
        nxdata.attrs.update({"NX_class": "NXdata", "signal": "volume"})
        nxdata["volume"] = data
        entry["raw/projections"] = decoy  # a second 3-D dataset: only the NeXus attributes decide
    v = open_volume(tmp_path / "scan.nxs")
    same(v, data)
    assert v.provenance["found_by"] == "NeXus default/signal"


def _nexus(path, root_default: bool, entry_default: bool, signal: str | None, data, entries: int = 1):
    """The issue's layout: /entry (NXentry) > recon (NXdata) > volume, plus a 2-frame 'dark' field."""
    with h5py.File(path, "w") as f:
        if root_default:
            f.attrs["default"] = "entry"
        for i in range(entries):
            entry = f.create_group("entry" if i == 0 else f"entry{i}")
            entry.attrs["NX_class"] = "NXentry"
            if entry_default:
                entry.attrs["default"] = "recon"
            recon = entry.create_group("recon")
            recon.attrs["NX_class"] = "NXdata"
            recon["volume"] = data
            if signal == "attribute":
                recon.attrs["signal"] = "volume"
            elif signal == "legacy":  # NeXus before 2014: signal=1 on the field
                recon["volume"].attrs["signal"] = 1
            entry["dark"] = np.zeros((2, *data.shape[1:]), data.dtype)


@pytest.mark.parametrize("root_default", [True, False])
@pytest.mark.parametrize("entry_default", [True, False])
@pytest.mark.parametrize("signal", ["attribute", "legacy"])
def test_nexus_chain_with_and_without_each_attribute(tmp_path, root_default, entry_default, signal):
    data = vol(seed=3)
    _nexus(tmp_path / "scan.nxs", root_default, entry_default, signal, data)
    v = open_volume(tmp_path / "scan.nxs")  # the 'dark' field beside it never makes it ambiguous
    same(v, data)
    assert v.provenance["dataset"] == "/entry/recon/volume" and v.provenance["found_by"] == "NeXus default/signal"


def test_nexus_chain_that_says_nothing_or_names_nothing(tmp_path):
    data = vol(seed=3)
    _nexus(tmp_path / "nosignal.nxs", False, True, None, data)  # no signal: two 3-D fields, nothing decides
    with pytest.raises(InvalidInputError, match="2 3-D datasets, so the volume is ambiguous"):
        open_volume(tmp_path / "nosignal.nxs")
    _nexus(tmp_path / "two.nxs", False, True, "attribute", data, entries=2)  # two NXentry, no root default
    with pytest.raises(InvalidInputError, match="ambiguous"):
        open_volume(tmp_path / "two.nxs")
    _nexus(tmp_path / "root.nxs", True, True, "attribute", data, entries=2)  # ... the root's default decides
    same(open_volume(tmp_path / "root.nxs"), data)
    with h5py.File(tmp_path / "root.nxs", "r+") as f:
        f["entry"].attrs["default"] = "reconstruction"
    with pytest.raises(InvalidInputError, match=r"NeXus attribute /entry@default='reconstruction' names nothing"):
        open_volume(tmp_path / "root.nxs")


@pytest.mark.parametrize("codec", ["bitshuffle-lz4", "blosc", "lz4"])
def test_tomopy_exchange_data_with_beamline_filters(tmp_path, codec):
    data = vol()
    filters = {"bitshuffle-lz4": hdf5plugin.Bitshuffle(cname="lz4"), "blosc": hdf5plugin.Blosc(cname="zstd"),
               "lz4": hdf5plugin.LZ4()}[codec]
    with h5py.File(tmp_path / "tomo.h5", "w") as f:
        f.create_dataset("exchange/data", data=data, chunks=(1, 33, 29), **filters)
        f.create_dataset("exchange/data_white", data=data[:2])
        f.create_dataset("exchange/data_dark", data=data[:2])
    same(open_volume(tmp_path / "tomo.h5"), data)
    same(open_volume(f"{tmp_path / 'tomo.h5'}:/exchange/data"), data)


def test_hdf5_errors_list_the_datasets(tmp_path):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a/vol"] = vol()
        f["b/vol"] = vol(seed=1)
    with pytest.raises(InvalidInputError, match=r"/a/vol.*/b/vol.*two\.h5:/PATH"):
        open_volume(tmp_path / "two.h5")
    with pytest.raises(InputNotFoundError, match=r"no dataset '/c'.*/a/vol, /b/vol"):
        open_volume(f"{tmp_path / 'two.h5'}:/c")


def test_hdf5_4d_needs_channel(tmp_path):
    data = vol(shape=(2, *SHAPE))
    with h5py.File(tmp_path / "c.h5", "w") as f:
        g = f.create_group("data")
        g.attrs["axes"] = ["channel", "z", "y", "x"]
        g["v"] = data
    with pytest.raises(InvalidInputError, match="CZYX.*--channel"):
        open_volume(tmp_path / "c.h5")
    same(open_volume(tmp_path / "c.h5", channel=1), data[1])


# ----------------------------------------------------------------------------- Zarr and OME-Zarr


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_arrays_and_groups(tmp_path, fmt):
    data = vol(np.int16)
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, dtype=data.dtype, chunks=(2, 16, 16),
                          zarr_format=fmt)
    a[:] = data
    same(open_volume(tmp_path / "a.zarr"), data)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=fmt)
    g.create_array("recon", shape=data.shape, dtype=data.dtype, chunks=(3, 33, 29))[:] = data
    g.create_array("flat", shape=data.shape, dtype=data.dtype)[:] = 0
    with pytest.raises(InvalidInputError, match="recon.*flat|flat.*recon"):
        open_volume(tmp_path / "g.zarr")
    same(open_volume(tmp_path / "g.zarr", dataset="recon"), data)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_written_by_ome_zarr_py(tmp_path, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    data = vol()
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=fmt.zarr_format)
    write_image(data, group, axes="zyx", fmt=fmt, scale_factors=[2], scale={"z": 0.02, "y": 0.01, "x": 0.01},
                axes_units={a: "micrometer" for a in "zyx"})
    v = open_volume(tmp_path / "img.ome.zarr")
    same(v, data)
    assert v.kind == "ome-zarr" and v.provenance["ome_version"] == version
    assert v.voxel_size_zyx_nm == pytest.approx((20.0, 10.0, 10.0)) and v.voxel_size_nm == pytest.approx(10.0)


# ----------------------------------------------------------------------------- TIFF


def test_imagej_hyperstack_channels_are_never_z(tmp_path, capsys):
    data = vol(np.uint8, shape=(24, 2, 33, 29))  # ZCYX
    tifffile.imwrite(tmp_path / "hyper.tif", data, imagej=True, metadata={"axes": "ZCYX", "spacing": 0.02,
                                                                          "unit": "micron"}, resolution=(100, 100))
    with pytest.raises(InvalidInputError, match="ZCYX.*2 channels.*--channel"):
        open_volume(tmp_path / "hyper.tif")
    v = open_volume(tmp_path / "hyper.tif", channel=1)
    same(v, data[:, 1])
    assert v.voxel_size_zyx_nm == pytest.approx((20.0, 10.0, 10.0))
    assert main(["ingest", str(tmp_path / "hyper.tif"), str(tmp_path / "out.zarr")]) == 2
    assert "ZCYX" in capsys.readouterr().err and not (tmp_path / "out.zarr").exists()
    assert main(["ingest", str(tmp_path / "hyper.tif"), str(tmp_path / "c0.zarr"), "--channel", "0"]) == 0
    np.testing.assert_array_equal(open_store(tmp_path / "c0.zarr").image[:], data[:, 0])


def test_lzw_slices_in_natural_order_skipping_dot_files(tmp_path):
    from PIL import Image

    data = vol(np.uint8, shape=(12, 33, 29))
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, plane in enumerate(data):  # as Pillow writes them: LZW ("tiff_lzw")
        Image.fromarray(plane).save(folder / f"s{z + 1}.tif", compression="tiff_lzw")
    (folder / "._s1.tif").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    (folder / ".DS_Store").write_bytes(b"junk")
    same(open_volume(folder), data)


def test_ome_tiff_and_bigtiff(tmp_path):
    data = vol(np.float32)
    tifffile.imwrite(tmp_path / "v.ome.tif", data, metadata={"axes": "ZYX", "PhysicalSizeX": 0.01,
                                                            "PhysicalSizeY": 0.01, "PhysicalSizeZ": 0.01})
    v = open_volume(tmp_path / "v.ome.tif")
    same(v, data)
    assert v.provenance["tiff_kind"] == "ome-tiff" and v.voxel_size_nm == pytest.approx(10.0)
    tifffile.imwrite(tmp_path / "big.tif", data, bigtiff=True, compression="zlib")
    v = open_volume(tmp_path / "big.tif")
    same(v, data)
    assert v.provenance["bigtiff"]


def test_missing_codec_names_the_package(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", vol(), compression="zstd")
    code = ("import sys; sys.modules['imagecodecs'] = None; from xtrain.cli import main; "
            f"sys.exit(main(['ingest', {str(tmp_path / 'z.tif')!r}, {str(tmp_path / 'o.zarr')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "imagecodecs" in line and "z.tif" in line and "corrupt" not in line
    assert not (tmp_path / "o.zarr").exists()


# ----------------------------------------------------------------------------- dtypes and values


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int8", "int16", "int32", "float32"])
def test_dtypes_kept_and_statistics_exact(tmp_path, dtype):
    data = vol(np.dtype(dtype))
    if np.dtype(dtype).kind == "i":
        assert data.min() < 0  # negative values kept
    tifffile.imwrite(tmp_path / "v.tif", data)
    v = open_volume(tmp_path / "v.tif")
    assert v.dtype == np.dtype(dtype)
    same(v, data)
    s = volume_stats(v)
    flat = np.sort(data.ravel().astype(np.float64))
    for q, key in ((0.5, "p0_5"), (50.0, "p50"), (99.5, "p99_5")):
        assert s[key] == flat[int(np.floor(q / 100 * (flat.size - 1)))]


def test_int16_ingest_keeps_negative_values(tmp_path):
    data = vol(np.int16)
    tifffile.imwrite(tmp_path / "v.tif", data)
    assert main(["ingest", str(tmp_path / "v.tif"), str(tmp_path / "v.zarr")]) == 0
    store = open_store(tmp_path / "v.zarr")
    assert store.image.dtype == np.int16
    np.testing.assert_array_equal(store.image[:], data)


def test_float64_read_as_float32_with_checks(tmp_path):
    data = vol(np.float64)
    tifffile.imwrite(tmp_path / "v.tif", data)
    v = open_volume(tmp_path / "v.tif")
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v.array.compute(), data.astype(np.float32))
    data[3, 4, 5] = 1e300  # beyond float32
    tifffile.imwrite(tmp_path / "w.tif", data)
    with pytest.raises(NonFiniteError, match="float64 values beyond the float32 range"):
        volume_stats(open_volume(tmp_path / "w.tif"))


def test_nan_fill_outside_the_circle_is_not_an_error_but_scattered_nan_is(tmp_path):
    data = vol(np.float32)
    yy, xx = np.mgrid[:33, :29]
    outside = (yy - 16) ** 2 + (xx - 14) ** 2 > 12**2
    masked = data.copy()
    masked[:, outside] = np.nan
    tifffile.imwrite(tmp_path / "m.tif", masked)
    s = volume_stats(open_volume(tmp_path / "m.tif"))
    assert s["fill"]["value"] == "nan" and s["count"] == int((~outside).sum()) * SHAPE[0]
    inside = np.sort(data[:, ~outside].ravel().astype(np.float64))
    assert s["p99_5"] == inside[int(np.floor(0.995 * (inside.size - 1)))]
    data[2, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", data)
    with pytest.raises(NonFiniteError, match="n.tif.*nan"):
        volume_stats(open_volume(tmp_path / "n.tif"))


def test_zero_fill_left_out_and_mask_of_wrong_shape(tmp_path, capsys):
    data = vol(np.uint16) // 2 + 10000
    yy, xx = np.mgrid[:33, :29]
    inside = (yy - 16) ** 2 + (xx - 14) ** 2 <= 12**2
    masked = np.where(inside, data, 0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", masked)
    s = volume_stats(open_volume(tmp_path / "m.tif"))
    ref = volume_stats(open_volume(_write(tmp_path / "inside.tif", data[:, inside][:, None, :])))
    assert s["fill"]["value"] == 0 and (s["p0_5"], s["p99_5"]) == (ref["p0_5"], ref["p99_5"])
    # an explicit mask gives the same statistics
    tifffile.imwrite(tmp_path / "mask.tif", np.broadcast_to(inside, SHAPE).astype(np.uint8))
    sm = volume_stats(open_volume(tmp_path / "m.tif"), open_volume(tmp_path / "mask.tif"), fill=False)
    assert (sm["p0_5"], sm["p99_5"]) == (ref["p0_5"], ref["p99_5"])
    tifffile.imwrite(tmp_path / "bad.tif", np.ones((7, 33, 28), np.uint8))
    assert main(["ingest", str(tmp_path / "m.tif"), str(tmp_path / "o.zarr"), "--mask", str(tmp_path / "bad.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.tif" in err[0] and "(7, 33, 28)" in err[0] and not (tmp_path / "o.zarr").exists()


def _write(path, data):
    tifffile.imwrite(path, data)
    return path


def test_bad_specs(tmp_path):
    with pytest.raises(InputNotFoundError, match="nothing.h5"):
        open_volume(tmp_path / "nothing.h5")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="notes.txt"):
        open_volume(tmp_path / "notes.txt")
    with pytest.raises(ShapeMismatchError):
        volume_stats(open_volume(_write(tmp_path / "a.tif", vol())), open_volume(_write(tmp_path / "b.tif",
                                                                                      vol(shape=(7, 33, 30)))))


def test_volume_pickles_and_reopens(tmp_path):
    import pickle

    data = vol()
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = data
    v = pickle.loads(pickle.dumps(open_volume(tmp_path / "s.h5").crop(2, 6)))
    np.testing.assert_array_equal(v.read(v.planes(0, 4)), data[2:6])
    np.testing.assert_array_equal(v.read(((1, 3), (2, 9), (4, 20))), data[3:5, 2:9, 4:20])
