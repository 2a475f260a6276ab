"""The TIFF backend of open_volume: forms (folder, glob, multi-page), order, laziness, bad files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from xtrain.data.volumes import open_volume
from xtrain.data.volumes.tiff import natural_key, open_tiff as open_stack
from xtrain.errors import CorruptFileError, InputNotFoundError, InvalidInputError, ShapeMismatchError

SHAPE = (7, 61, 53)  # odd sizes: catch any off-by-one in slicing


def volume(dtype=np.uint16, shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0.0, 1.0, size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def write_folder(folder, vol, name="slice_{}.tif", start=1, compression=None):
    """One file per z-slice, numbered from ``start`` without zero padding (lexical order is wrong)."""
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(vol):
        tifffile.imwrite(folder / name.format(z + start), plane, compression=compression)
    return folder


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_natural_key_orders_numbers_numerically():
    names = ["s_10.tif", "s_2.tif", "s_1.tif", "S_11.tif"]
    assert sorted(names, key=natural_key) == ["s_1.tif", "s_2.tif", "s_10.tif", "S_11.tif"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_folder_roundtrip_keeps_dtype_and_order(tmp_path, dtype):
    vol = volume(dtype, shape=(12, 61, 53))  # 12 slices: slice_10..12 sort before slice_2 lexically
    write_folder(tmp_path / "s", vol, compression="zlib")
    stack = open_stack(tmp_path / "s")
    assert stack.shape == vol.shape and stack.dtype == vol.dtype and len(stack) == 12
    assert [f.rsplit("/", 1)[-1] for f in stack.provenance["files"]][:3] == ["slice_1.tif", "slice_2.tif", "slice_3.tif"]
    np.testing.assert_array_equal(stack.read(stack.planes(0, 12)), vol)
    np.testing.assert_array_equal(stack.read(stack.planes(9, 11)), vol[9:11])
    assert stack.read(stack.planes(4, 4)).shape == (0, 61, 53)


def test_multipage_and_glob(tmp_path):
    vol = volume(np.uint16)
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    stack = open_stack(tmp_path / "vol.tif")
    assert stack.provenance["tiff_kind"] == "tiff" and stack.shape == SHAPE
    np.testing.assert_array_equal(stack.read(stack.planes(2, 5)), vol[2:5])

    write_folder(tmp_path / "s", vol)
    (tmp_path / "s" / "notes.txt").write_text("not a slice")
    stack = open_stack(str(tmp_path / "s" / "slice_*.tif"))
    assert stack.provenance["tiff_kind"] == "slices" and stack.shape == SHAPE
    np.testing.assert_array_equal(stack.read(stack.planes(0, len(stack))), vol)


def test_pickles_without_handles(tmp_path):
    vol = volume(np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    stack = pickle.loads(pickle.dumps(open_stack(tmp_path / "vol.tif")))
    np.testing.assert_array_equal(stack.read(stack.planes(3, 7)), vol[3:7])


def test_open_reads_headers_only(tmp_path, monkeypatch):
    write_folder(tmp_path / "s", volume(np.uint16))

    def no_decode(*args, **kwargs):
        raise AssertionError("open_stack decoded pixel data")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decode)
    assert open_stack(tmp_path / "s").shape == SHAPE


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda d: d / "missing", InputNotFoundError, "missing"),
        (lambda d: (d / "empty").mkdir() or d / "empty", InputNotFoundError, "empty"),
        (lambda d: str(d / "*.tif"), InputNotFoundError, r"\*\.tif"),
    ],
)
def test_missing_inputs(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        open_stack(make(tmp_path))


def test_garbage_and_truncated_files(tmp_path):
    vol = volume(np.uint16)
    folder = write_folder(tmp_path / "s", vol)
    (folder / "slice_4.tif").write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(CorruptFileError, match="slice_4.tif"):
        open_stack(folder)

    for compression in (None, "zlib"):
        folder = write_folder(tmp_path / f"t{compression}", vol, compression=compression)
        truncate(folder / "slice_6.tif")
        with pytest.raises(CorruptFileError, match="slice_6.tif.*truncated"):
            open_stack(folder)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_multipage_is_not_silently_shorter(tmp_path, compression):
    """tifffile only logs a bad next-page offset and returns fewer pages: that must be an error."""
    tifffile.imwrite(tmp_path / "vol.tif", volume(np.uint16, shape=(37, 61, 53)), compression=compression)
    truncate(tmp_path / "vol.tif")
    with pytest.raises(CorruptFileError, match="vol.tif.*truncated"):
        open_stack(tmp_path / "vol.tif")


def test_decode_error_at_read_names_the_file(tmp_path):
    """A file broken after opening (or whose strips lie but are short) fails at read, named."""
    folder = write_folder(tmp_path / "s", volume(np.uint16), compression="zlib")
    stack = open_stack(folder)
    path = folder / "slice_3.tif"
    data = bytearray(path.read_bytes())
    offset = tifffile.TiffFile(path).pages[0].dataoffsets[0]
    data[offset : offset + 64] = b"\x00" * 64  # destroy the zlib stream, keep the file size
    path.write_bytes(bytes(data))
    stack.read(stack.planes(0, 2))  # other slices still read
    with pytest.raises(CorruptFileError, match="slice_3.tif"):
        stack.read(stack.planes(0, 5))


def test_mismatched_slices(tmp_path):
    folder = write_folder(tmp_path / "s", volume(np.uint16))
    tifffile.imwrite(folder / "slice_5.tif", np.zeros((61, 52), np.uint16))
    with pytest.raises(ShapeMismatchError, match=r"slice_5.tif.*\(61, 52\).*\(61, 53\)"):
        open_stack(folder)

    folder = write_folder(tmp_path / "d", volume(np.uint16))
    tifffile.imwrite(folder / "slice_3.tif", np.zeros((61, 53), np.uint8))
    with pytest.raises(InvalidInputError, match="slice_3.tif.*uint8"):
        open_stack(folder)


@pytest.mark.parametrize("dtype", [np.int64, np.complex64])
def test_unsupported_dtype(tmp_path, dtype):
    write_folder(tmp_path / "s", np.zeros(SHAPE, dtype))
    with pytest.raises(InvalidInputError, match=f"slice_1.tif.*{np.dtype(dtype).name}"):
        open_stack(tmp_path / "s")


def test_imagej_big_stack_layout_read_through_the_series(tmp_path):
    """ImageJ writes stacks > 4 GB as one IFD followed by every slice's data; tifffile's
    ``truncate=True`` writes the same layout, and its ImageJ metadata says how many slices follow."""
    data = np.random.default_rng(2).integers(0, 60000, (23, 19, 17)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", data, imagej=True, truncate=True, metadata={"axes": "ZYX"})
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert len(tif.pages) == 1 and tif.series[0].shape == data.shape
    v = open_volume(tmp_path / "big.tif")
    assert v.shape == data.shape and v.provenance["layout"] == "contiguous (ImageJ big stack)"
    np.testing.assert_array_equal(v.array.compute(), data)
    w = pickle.loads(pickle.dumps(v))
    np.testing.assert_array_equal(w.read(w.planes(5, 9)), data[5:9])
    hyper = np.stack([data, data[::-1]], axis=1)  # ZCYX hyperstack in the same layout: channels stay channels
    tifffile.imwrite(tmp_path / "hyper.tif", hyper, imagej=True, truncate=True, metadata={"axes": "ZCYX"})
    np.testing.assert_array_equal(open_volume(tmp_path / "hyper.tif", channel=1).array.compute(), data[::-1])
    raw = (tmp_path / "big.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(CorruptFileError, match=r"'.*cut.tif' is truncated: its ImageJ metadata says 23 images but 1 "):
        open_volume(tmp_path / "cut.tif")  # tifffile alone falls back to the first slice, with a warning
