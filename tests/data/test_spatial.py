"""Spatial metadata (issue 22): every input format's voxel size (z, y, x), origin and units read
into the ``Volume``, refused where xtrain cannot honour it; the store keeps it; pyramids scale it."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from xtrain.cli import main
from xtrain.data import layout, spatial
from xtrain.data.ingest import ingest
from xtrain.data.store import open_store, write_store
from xtrain.data.volumes import open_volume
from xtrain.errors import SpatialMetadataError

VOXEL = (20.0, 10.0, 10.0)  # nm (z, y, x): anisotropic
ORIGIN = (1000.0, 200.0, 300.0)  # nm (z, y, x): a cutout of a larger volume
SHAPE = (5, 7, 9)  # odd everywhere


def image(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60000, shape, dtype=np.uint16)


# ----------------------------------------------------------------------------- one writer per input format
# each writes SHAPE voxels of VOXEL nm at ORIGIN nm in its format's own terms (not in xtrain's)

def write_ome_tiff(path, data):
    n = data.shape[0]
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 0.02, "PhysicalSizeZUnit": "µm", "PhysicalSizeY": 10, "PhysicalSizeYUnit": "nm",
        "PhysicalSizeX": 0.01,  # the OME default unit: µm
        "Plane": {"PositionZ": [1.0 + 0.02 * i for i in range(n)], "PositionY": [0.2] * n, "PositionX": [0.3] * n,
                  "PositionZUnit": ["µm"] * n, "PositionYUnit": ["µm"] * n, "PositionXUnit": ["µm"] * n}})


def write_imagej(path, data):
    # ImageJ: pixels per unit in the resolution tags, spacing in unit, origins in pixels (position = (i - origin) x size)
    tifffile.imwrite(path, data, imagej=True, resolution=(100.0, 100.0), metadata={
        "axes": "ZYX", "spacing": 0.02, "unit": "micron", "zorigin": -50.0, "yorigin": -20.0, "xorigin": -30.0})


def write_nexus(path, data):
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="data")
        nx = entry.create_group("data")
        nx.attrs.update(NX_class="NXdata", signal="data", axes=["z", "y", "x"])
        nx["data"] = data
        for i, a in enumerate("zyx"):  # voxel centres in nm
            nx[a] = ORIGIN[i] + np.arange(data.shape[i]) * VOXEL[i]
            nx[a].attrs["units"] = "nm"


def write_hdf5_attrs(path, data):
    with h5py.File(path, "w") as f:
        f.create_dataset("vol", data=data).attrs.update(voxel_size=[0.02, 0.01, 0.01], units="um",
                                                        offset=[1.0, 0.2, 0.3])


def write_zarr_v2(path, data):
    z = zarr.open_array(str(path), mode="w", shape=data.shape, dtype=data.dtype, zarr_format=2, chunks=(2, 7, 9))
    z[:] = data
    z.attrs.update(resolution=list(VOXEL), units="nm", offset=list(ORIGIN))  # funlib.persistence / daisy style


def _ome_block(unit, factor):
    return {"axes": [{"name": a, "type": "space", "unit": unit} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [v * factor for v in VOXEL]},
                {"type": "translation", "translation": [o * factor for o in ORIGIN]}]}]}


def write_ome_zarr_04(path, data):
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(2, 7, 9))[:] = data
    g.attrs["multiscales"] = [{"version": "0.4", **_ome_block("nanometer", 1.0)}]


def write_ome_zarr_05(path, data):
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(2, 7, 9))[:] = data
    # scale in µm on level 0, the translation on the multiscale: x = s2 (s1 i + t1) + t2 composed per axis
    block = _ome_block("micrometer", 1e-3)
    shift = block["datasets"][0]["coordinateTransformations"].pop()
    block["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}, shift]  # the spec: scale first
    g.attrs["ome"] = {"version": "0.5", "multiscales": [block]}


def write_store_input(path, data):
    with write_store(path, data.shape) as w:
        w.create("image", data.shape, data.dtype)[:] = data
        w.info.voxel_size_nm, w.info.origin_nm = VOXEL, ORIGIN


INPUTS = {"ome-tiff": (write_ome_tiff, "a.ome.tif"), "imagej": (write_imagej, "a.tif"),
          "nexus": (write_nexus, "a.nxs"), "hdf5-attrs": (write_hdf5_attrs, "a.h5"),
          "zarr-v2": (write_zarr_v2, "a.zarr"), "ome-zarr-0.4": (write_ome_zarr_04, "a.ome.zarr"),
          "ome-zarr-0.5": (write_ome_zarr_05, "b.ome.zarr"), "xtrain-store": (write_store_input, "s.zarr")}


def make_input(name, folder, data=None):
    write, filename = INPUTS[name]
    path = folder / filename
    write(path, image() if data is None else data)
    return path


def assert_placed(volume, voxel=VOXEL, origin=ORIGIN):
    assert volume.voxel_size_zyx_nm == pytest.approx(voxel, rel=1e-9)
    assert volume.origin_nm == pytest.approx(origin, rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("fmt", sorted(INPUTS))
def test_every_input_format_gives_its_voxel_size_and_origin(tmp_path, fmt):
    v = open_volume(make_input(fmt, tmp_path))
    assert v.shape == SHAPE
    assert_placed(v)
    assert v.voxel_size_nm == pytest.approx(10.0)  # in-plane
    cropped = v.crop(2, 5)  # a z-crop moves the origin by 2 slices of 20 nm
    assert_placed(cropped, origin=(1040.0, 200.0, 300.0))


@pytest.mark.parametrize("fmt", sorted(INPUTS))
def test_ingest_keeps_voxel_size_and_origin_and_a_store_of_the_store_too(tmp_path, fmt):
    store = ingest(make_input(fmt, tmp_path), tmp_path / "store.zarr")
    info = open_store(store).info
    assert info.voxel_size_nm == pytest.approx(VOXEL) and info.origin_nm == pytest.approx(ORIGIN)
    assert_placed(open_volume(store))
    ms = zarr.open_group(str(store), mode="r").attrs["ome"]["multiscales"][0]
    assert [a["unit"] for a in ms["axes"]] == ["micrometer"] * 3
    t = ms["datasets"][0]["coordinateTransformations"]
    assert t[0]["scale"] == pytest.approx([0.02, 0.01, 0.01]) and t[1]["translation"] == pytest.approx([1.0, 0.2, 0.3])
    again = ingest(store, tmp_path / "again.zarr")
    assert_placed(open_volume(again))


def test_pyramid_levels_scale_per_axis_and_shift_their_first_centre():
    shapes = [(9, 21, 19), (5, 11, 10), (3, 6, 5)]
    ms = layout.multiscale("x", shapes, VOXEL, "mean", origin_nm=ORIGIN)
    for level, f in zip(ms["datasets"], (1, 2, 4)):
        scale = level["coordinateTransformations"][0]["scale"]
        shift = level["coordinateTransformations"][1]["translation"]
        assert scale == pytest.approx([0.02 * f, 0.01 * f, 0.01 * f])
        # a level-f voxel covers f level-0 voxels: its centre is (f - 1) / 2 level-0 voxels on from the origin
        assert shift == pytest.approx([1.0 + (f - 1) / 2 * 0.02, 0.2 + (f - 1) / 2 * 0.01, 0.3 + (f - 1) / 2 * 0.01])
    channel = layout.multiscale("p", [(3, *s) for s in shapes], VOXEL, "mean", origin_nm=ORIGIN)
    assert channel["datasets"][1]["coordinateTransformations"][0]["scale"] == pytest.approx([1.0, 0.04, 0.02, 0.02])


def test_store_pyramid_written_with_per_axis_scale(tmp_path):
    data = image((9, 21, 19))
    with write_store(tmp_path / "p.zarr", data.shape, pyramid_edge=8) as w:
        w.create_image(data.shape, data.dtype)[:] = data
        w.create_labels(data.shape)[:] = (data % 3).astype(np.uint8)
        w.info.voxel_size_nm, w.info.origin_nm = VOXEL, ORIGIN
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    for node in (group, group["labels/ground_truth"]):
        datasets = node.attrs["ome"]["multiscales"][0]["datasets"]
        assert len(datasets) == 3
        assert datasets[2]["coordinateTransformations"][0]["scale"] == pytest.approx([0.08, 0.04, 0.04])


def test_a_store_written_with_one_number_reads_as_isotropic(tmp_path):
    path = tmp_path / "old.zarr"
    write_store_input(path, image())
    group = zarr.open_group(str(path), mode="r+")
    info = dict(group.attrs["xtrain"])
    info["voxel_size_nm"] = 12.5  # before per-axis sizes
    info.pop("origin_nm")
    group.attrs["xtrain"] = info
    assert_placed(open_volume(path), (12.5, 12.5, 12.5), (0.0, 0.0, 0.0))


def test_voxel_size_option_one_number_or_zyx(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image())  # no calibration at all
    assert open_volume(plain).voxel_size_zyx_nm is None
    assert main(["ingest", str(plain), str(tmp_path / "a.zarr"), "--voxel-size", "20,10,10"]) == 0
    assert_placed(open_volume(tmp_path / "a.zarr"), VOXEL, (0.0, 0.0, 0.0))
    assert main(["ingest", str(plain), str(tmp_path / "b.zarr"), "--voxel-size", "15"]) == 0
    assert open_store(tmp_path / "b.zarr").info.voxel_size_nm == (15.0, 15.0, 15.0)
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(plain), str(tmp_path / "c.zarr"), "--voxel-size", "20,10"])
    assert exc.value.code == 2 and not (tmp_path / "c.zarr").exists()


def test_voxel_size_option_over_a_calibrated_input_keeps_the_origin_in_voxels(tmp_path, caplog):
    src = make_input("nexus", tmp_path)
    with caplog.at_level(logging.WARNING):
        out = ingest(src, tmp_path / "s.zarr", voxel_size_nm=(40, 10, 10))
    assert "replaces the voxel size" in caplog.text
    assert_placed(open_volume(out), (40.0, 10.0, 10.0), (2000.0, 200.0, 300.0))  # origin 50 z-voxels in


# ----------------------------------------------------------------------------- refused or warned about

def _nexus_with_axis(path, z_coords, units="nm"):
    with h5py.File(path, "w") as f:
        nx = f.create_group("entry/data")
        f["entry"].attrs.update(NX_class="NXentry", default="data")
        nx.attrs.update(NX_class="NXdata", signal="data", axes=["z", "y", "x"])
        nx["data"] = image()
        for a, c in zip("zyx", (z_coords, np.arange(7) * 10.0, np.arange(9) * 10.0)):
            nx[a] = np.asarray(c, float)
            nx[a].attrs["units"] = units


@pytest.mark.parametrize("z, why", [([0, 20, 40, 70, 80], "not evenly spaced"), ([80, 60, 40, 20, 0], "decrease"),
                                    ([0, 20, 40], "3 coordinates for 5 voxels")])
def test_nexus_axis_that_is_not_a_regular_grid_is_refused(tmp_path, z, why, capsys):
    path = tmp_path / "bad.nxs"
    _nexus_with_axis(path, z)
    with pytest.raises(SpatialMetadataError, match=why):
        open_volume(path)
    assert main(["ingest", str(path), str(tmp_path / "o.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.nxs" in err[0] and not (tmp_path / "o.zarr").exists()


def test_nexus_bin_edges_give_voxel_centres(tmp_path):
    path = tmp_path / "edges.nxs"
    _nexus_with_axis(path, 990.0 + np.arange(6) * 20.0)  # 6 edges of 5 voxels: centres 1000, 1020, ...
    assert open_volume(path).origin_nm[0] == pytest.approx(1000.0)


@pytest.mark.parametrize("kind", ["affine", "rotation"])
def test_ome_zarr_transform_other_than_scale_and_translation_is_refused(tmp_path, kind, capsys):
    path = tmp_path / "rot.ome.zarr"
    write_ome_zarr_05(path, image())
    g = zarr.open_group(str(path), mode="r+")
    ome = g.attrs["ome"]
    extra = {"affine": [[1, 0, 0, 0], [0, 0.9, -0.1, 0], [0, 0.1, 0.9, 0]]} if kind == "affine" else \
        {"rotation": [[1, 0, 0], [0, 0, -1], [0, 1, 0]]}
    ome["multiscales"][0]["coordinateTransformations"].append({"type": kind, **extra})
    g.attrs["ome"] = ome
    with pytest.raises(SpatialMetadataError, match=f"coordinate transformation '{kind}'"):
        open_volume(path)
    assert main(["ingest", str(path), str(tmp_path / "o.zarr")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "o.zarr").exists()


def test_ome_tiff_sheared_or_contradicting_planes_are_refused(tmp_path):
    sheared = tmp_path / "sheared.ome.tif"
    tifffile.imwrite(sheared, image(), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 0.02, "PhysicalSizeY": 0.01, "PhysicalSizeX": 0.01,
        "Plane": {"PositionX": [0.3 + 0.01 * i for i in range(5)], "PositionXUnit": ["µm"] * 5}})
    with pytest.raises(SpatialMetadataError, match="sheared"):
        open_volume(sheared)
    contra = tmp_path / "contra.ome.tif"
    tifffile.imwrite(contra, image(), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 0.02, "PhysicalSizeY": 0.01, "PhysicalSizeX": 0.01,
        "Plane": {"PositionZ": [0.05 * i for i in range(5)], "PositionZUnit": ["µm"] * 5}})
    with pytest.raises(SpatialMetadataError, match="50 nm apart .* PhysicalSizeZ is 20 nm"):
        open_volume(contra)


@pytest.mark.parametrize("fmt", ["imagej", "nexus", "zarr-v2", "ome-zarr-0.5"])
def test_an_unknown_unit_is_never_taken_as_nm(tmp_path, fmt, caplog):
    path = make_input(fmt, tmp_path)
    if fmt == "imagej":
        tifffile.imwrite(path, image(), imagej=True, resolution=(100.0, 100.0),
                         metadata={"axes": "ZYX", "spacing": 0.02, "unit": "furlong"})
    elif fmt == "nexus":
        with h5py.File(path, "r+") as f:
            f["entry/data/z"].attrs["units"] = "furlong"
    elif fmt == "zarr-v2":
        zarr.open_array(str(path), mode="r+").attrs["units"] = "furlong"
    else:
        g = zarr.open_group(str(path), mode="r+")
        ome = g.attrs["ome"]
        ome["multiscales"][0]["axes"][0]["unit"] = "furlong"
        g.attrs["ome"] = ome
    with caplog.at_level(logging.WARNING):
        v = open_volume(path)
    assert v.voxel_size_zyx_nm is None and v.origin_nm is None
    assert "furlong" in caplog.text and "not a length unit" in caplog.text


def test_a_size_without_a_unit_is_not_taken_as_nm(tmp_path, caplog):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vol", data=image()).attrs["voxel_size"] = [20, 10, 10]
    with caplog.at_level(logging.WARNING):
        assert open_volume(path).voxel_size_zyx_nm is None
    assert "has no unit" in caplog.text


def test_units_by_name():
    assert spatial.length_nm(0.02, "µm") == pytest.approx(20.0)
    assert spatial.length_nm(0.02, "\u03bcm") == pytest.approx(20.0)  # Greek mu
    assert spatial.length_nm(0.02, "\\u00B5m") == pytest.approx(20.0)  # ImageJ's escape
    assert spatial.length_nm(2, "micron") == spatial.length_nm(2, "micrometer") == spatial.length_nm(2, "um") == 2000
    assert spatial.length_nm(3, "Å") == pytest.approx(0.3) and spatial.length_nm(1, "millimeters") == 1e6
    assert spatial.length_nm(1, "pixel") is None and spatial.is_uncalibrated("reference frame")
    assert spatial.length_nm(1, "furlong") is None


# ----------------------------------------------------------------------------- input format x output format

OUTPUTS = ("seg.zarr", "seg.tif", "seg.h5")


def _ome_level0(node) -> tuple[list[float], list[float], list[str]]:
    ms = node.attrs["ome"]["multiscales"][0]
    t = {d["type"]: d for d in ms["datasets"][0]["coordinateTransformations"]}
    return t["scale"]["scale"][-3:], t["translation"]["translation"][-3:], [a.get("unit") for a in ms["axes"]][-3:]


def _read_back_in_the_format_own_terms(out) -> tuple[tuple, tuple]:
    """(voxel, origin) nm from the output's own metadata, read with tifffile / h5py / zarr, not with xtrain."""
    if out.suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            meta, (xres, yres) = tif.imagej_metadata, tif.pages[0].get_resolution()
            assert meta["unit"] == "um"
            voxel = (meta["spacing"] * 1e3, 1e3 / yres, 1e3 / xres)
            return voxel, tuple(-meta.get(f"{a}origin", 0.0) * v for a, v in zip("zyx", voxel))
    if out.suffix == ".h5":
        with h5py.File(out, "r") as f:
            nx = f["entry/data"]
            assert list(nx.attrs["axes"]) == ["z", "y", "x"] and all(nx[a].attrs["units"] == "um" for a in "zyx")
            return (tuple(float(nx[a][1] - nx[a][0]) * 1e3 for a in "zyx"),
                    tuple(float(nx[a][0]) * 1e3 for a in "zyx"))
    group = zarr.open_group(str(out), mode="r")
    placed = [_ome_level0(node) for node in (group, group["labels/prediction"])]
    assert placed[0] == placed[1] and placed[0][2] == ["micrometer"] * 3  # the image and its labels agree
    scale, shift, _ = placed[0]
    return tuple(s * 1e3 for s in scale), tuple(t * 1e3 for t in shift)


@pytest.mark.parametrize("out_name", OUTPUTS)
@pytest.mark.parametrize("fmt", sorted(INPUTS))
def test_every_input_to_every_output_keeps_voxel_size_and_origin(tmp_path, fmt, out_name):
    from xtrain.evaluate.baselines import fit_baseline
    from xtrain.evaluate.core import evaluate
    from xtrain.evaluate.report import format_tables
    from xtrain.infer.baselines import segment_baseline

    src = make_input(fmt, tmp_path)
    out = segment_baseline(fit_baseline("otsu", src), src, tmp_path / out_name)
    voxel, origin = _read_back_in_the_format_own_terms(out)
    assert voxel == pytest.approx(VOXEL) and origin == pytest.approx(ORIGIN)
    assert_placed(open_volume(out, dataset="labels") if out.suffix == ".zarr" else open_volume(out))
    result = evaluate(out, out, z_range=(1, 4), percolation=False)  # a z-crop: the origin moves 1 slice of 20 nm
    assert result["voxel_size_nm"] == pytest.approx(VOXEL) and result["origin_nm"] == pytest.approx((1020, 200, 300))
    assert result["microstructure"]["labels"]["voxel_size_nm"] == pytest.approx(VOXEL)
    assert "voxel size 20 x 10 x 10 nm (z, y, x), origin 1020, 200, 300 nm" in format_tables(result)


def test_segment_voxel_size_option_places_an_uncalibrated_input(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image())
    assert main(["baseline", "otsu", "--fit", str(plain), str(plain), str(tmp_path / "s.tif"),
                 "--voxel-size", "20,10,10"]) == 0
    voxel, origin = _read_back_in_the_format_own_terms(tmp_path / "s.tif")
    assert voxel == pytest.approx(VOXEL) and origin == pytest.approx((0, 0, 0))
    from xtrain.infer.options import SegmentOptions

    assert SegmentOptions(voxel_size=15).voxel_size == (15.0, 15.0, 15.0)
    with pytest.raises(SpatialMetadataError, match="one .isotropic. or three"):
        SegmentOptions(voxel_size=(20, 10))


def test_labels_placed_elsewhere_than_the_images_are_warned_about(tmp_path, caplog):
    src = make_input("nexus", tmp_path)
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, (image() % 3).astype(np.uint8), imagej=True, resolution=(100.0, 100.0),
                     metadata={"axes": "ZYX", "spacing": 0.01, "unit": "um"})  # 10 nm in z, at 0
    with caplog.at_level(logging.WARNING):
        out = ingest(src, tmp_path / "s.zarr", labels=labels)
    assert "labels '" in caplog.text and "10 x 10 x 10 nm (z, y, x)" in caplog.text
    assert_placed(open_volume(out))  # the images' placement is kept
    caplog.clear()
    write_imagej(labels, (image() % 3).astype(np.uint8))  # the same placement: no warning
    with caplog.at_level(logging.WARNING):
        ingest(src, tmp_path / "t.zarr", labels=labels)
    assert "are placed at" not in caplog.text
