"""SegmentOptions: one validate() for every option, refusals naming the value and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from xtrain.errors import InvalidInputError
from xtrain.infer.options import SegmentOptions


@pytest.mark.parametrize("changes, message", [
    ({"block": (0, 4, 4)}, "block (0, 4, 4) must be three positive sizes"),
    ({"block": (4, 4)}, "block (4, 4) must be three positive sizes"),
    ({"chunks": (1, 0, 1)}, "chunks (1, 0, 1) must be three positive sizes"),
    ({"tile": 4}, "tile 4 is too small; use at least 8"),
    ({"tile": 32, "halo": 16}, "halo 16 must be >= 0 and less than half the tile (32)"),
    ({"halo": -1}, "halo -1 must be >= 0"),
    ({"axes": "xy"}, "axes 'xy' is not one of z, zyx"),
    ({"window": "box"}, "window 'box' is not one of gaussian, cosine"),
    ({"normalisation": "minmax"}, "normalisation 'minmax' is not one of auto, train, own, peaks"),
    ({"workers": 0}, "workers 0 must be at least 1"),
    ({"threads": 0}, "threads 0 must be at least 1"),
    ({"batch_size": 0}, "batch size 0 must be at least 1"),
])
def test_a_bad_option_is_refused_when_made(changes, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SegmentOptions(**changes)
    with pytest.raises(InvalidInputError):  # replace() checks the new value too
        dataclasses.replace(SegmentOptions(), **changes)


@pytest.mark.parametrize("out, options, message", [
    ("out.n5", {}, "must end in .zarr"),
    ("out.tif", {"probabilities": True}, "--probabilities needs a .zarr output"),
    ("out.nxs", {"probabilities": True}, "use e.g. 'out.zarr'"),
])
def test_the_output_is_checked_against_the_options(out, options, message):
    with pytest.raises(InvalidInputError, match=message):
        SegmentOptions(**options).validate(Path(out))


@pytest.mark.parametrize("out", ["a.zarr", "a.tif", "a.TIFF", "a.h5", "a.hdf5", "a.nxs"])
def test_every_output_format_is_accepted(out):
    SegmentOptions().validate(Path(out))


def test_options_are_frozen_plain_values():
    o = SegmentOptions(block=[8, 16, 16], chunks=[1, 2, 3], mask=Path("m.tif"))  # lists from YAML / JSON
    assert o.block == (8, 16, 16) and o.chunks == (1, 2, 3) and o.mask == "m.tif"
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tile = 3  # type: ignore[misc]
    assert not o.use_ray and SegmentOptions(workers=2).use_ray and SegmentOptions(gpu=True).use_ray
    assert "block" in SegmentOptions.names() and "overwrite" in SegmentOptions.names()
    assert SegmentOptions().axes is None and SegmentOptions().clean is None  # None: the model's validated settings


def test_segment_takes_options_by_name_and_refuses_an_unknown_one(tmp_path):
    from xtrain.infer import segment

    with pytest.raises(TypeError, match="tiles"):
        segment("model.pt", "vol.zarr", tmp_path / "out.zarr", tiles=32)
    with pytest.raises(InvalidInputError, match="halo 40"):
        segment("model.pt", "vol.zarr", tmp_path / "out.zarr", SegmentOptions(tile=64), halo=40)
    assert not (tmp_path / "out.zarr").exists()
