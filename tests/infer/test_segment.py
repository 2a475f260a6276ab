"""Blockwise segmentation: no seams, 1 vs N workers, resume, TIFF in/out, zyx/TTA, normalisation, errors."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import tifffile
import torch
import zarr

from conftest import make_store
from xtrain.cli import main
from xtrain.data.stats import IntensityStats
from xtrain.data.store import open_store, write_store
from xtrain.errors import CorruptFileError, OutputExistsError, RunStateError
from xtrain.infer import open_segmentation, segment
from xtrain.infer.write import work_dir
from xtrain.models import create_model, model_kwargs
from xtrain.models.checkpoint import file_checksum, save_checkpoint

SHAPE = (37, 61, 53)
# small tiles and an unsharded 8x16x16 output layout, so a 37x61x53 volume has many blocks and tiles
FAST = dict(tile=32, halo=4, chunks=(8, 16, 16), shard=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    """A tiny store and a 2.5D (3-slice) U-Net trained on a similar one (conftest.tiny_model)."""
    root = tmp_path_factory.mktemp("infer")
    return {"root": root, "model": tiny_model, "store": make_store(root / "vol.zarr", SHAPE)}


def store_from(path, image, stats_range=None):
    """A store holding ``image`` (with its own statistics)."""
    with write_store(path, image.shape) as w:
        arr = w.create("image", image.shape, image.dtype)
        arr[:] = image
        stats = IntensityStats(image.dtype, stats_range or (float(image.min()), float(image.max())))
        stats.update(image)
        w.info.stats = stats.to_dict()
    return path


def arrays(path):
    g = open_segmentation(path)
    return {k: getattr(g, k)[:] for k in ("labels", "probabilities", "entropy") if getattr(g, k) is not None}


def test_labels_vary_and_attributes_record_the_provenance(data, tmp_path):
    out = segment(data["model"], data["store"], tmp_path / "seg.zarr", **FAST)
    g = open_segmentation(out)
    labels = g.labels[:]
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    assert len(np.unique(labels)) == 3  # a trained model, not a constant map
    truth = open_store(data["store"]).labels[:]
    assert (labels == truth).mean() > 0.6
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    info = attrs["xtrain"]
    assert info["complete"] and info["classes"] == ["pore", "ysz", "ni"]
    src = info["source"]
    assert src["model_name"] == "unet" and src["model_sha256"] == file_checksum(data["model"])
    assert src["volume"] == str(data["store"].resolve()) and src["xtrain_version"] and src["model_config"]
    assert attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    assert np.array_equal(g.image[:], open_store(data["store"]).image[:])  # the input image, copied
    assert not work_dir(out).exists()


@pytest.mark.parametrize("axes", ["z", "zyx"])
def test_no_seams_block_size_does_not_change_a_bit(data, tmp_path, axes):
    small = segment(data["model"], data["store"], tmp_path / "small.zarr", block=(16, 32, 32), axes=axes,
                    probabilities=True, **FAST)
    whole = segment(data["model"], data["store"], tmp_path / "whole.zarr", block=SHAPE, axes=axes,
                    probabilities=True, **FAST)
    a, b = arrays(small), arrays(whole)
    for key in ("labels", "probabilities", "entropy"):
        assert np.array_equal(a[key], b[key]), key
    assert json.loads(json.dumps(open_segmentation(small).info.source["settings"]))["block"] \
        == [16, 32, 32]


def test_ray_workers_give_the_in_process_result(data, tmp_path, ray_cluster):
    one = segment(data["model"], data["store"], tmp_path / "one.zarr", block=(16, 32, 32), threads=1,
                  probabilities=True, **FAST)
    two = segment(data["model"], data["store"], tmp_path / "two.zarr", block=(16, 32, 32), threads=1, workers=2,
                  probabilities=True, **FAST)
    a, b = arrays(one), arrays(two)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


class Crash(Exception):
    pass


def test_resume_after_a_crash_redoes_only_missing_blocks_bit_for_bit(data, tmp_path):
    kw = dict(block=(16, 32, 32), probabilities=True, **FAST)  # 3 x 2 x 2 = 12 blocks
    reference = arrays(segment(data["model"], data["store"], tmp_path / "ref.zarr", **kw))
    out = tmp_path / "seg.zarr"
    first: list[str] = []

    def crash_after_3(block):
        first.append(block.name)
        if len(first) == 3:
            raise Crash

    with pytest.raises(Crash):
        segment(data["model"], data["store"], out, on_block=crash_after_3, **kw)
    # the half-written output never looks finished
    assert not out.exists()
    partial = work_dir(out) / "out.zarr"
    with pytest.raises(CorruptFileError, match="incomplete"):
        open_store(partial)
    with pytest.raises(CorruptFileError, match="incomplete"):
        open_segmentation(partial)
    with pytest.raises(OutputExistsError, match="--resume"):
        segment(data["model"], data["store"], out, **kw)
    with pytest.raises(RunStateError, match="settings"):
        segment(data["model"], data["store"], out, resume=True, **{**kw, "halo": 2})

    redone: list[str] = []
    segment(data["model"], data["store"], out, resume=True, on_block=lambda b: redone.append(b.name), **kw)
    assert len(redone) == 12 - 3 and not set(redone) & set(first)
    result = arrays(out)
    for key in reference:
        assert np.array_equal(result[key], reference[key]), key


def test_tiff_input_and_tiff_output_match_the_zarr_path(data, tmp_path):
    image = open_store(data["store"]).image[:]
    tifffile.imwrite(tmp_path / "vol.tif", image)
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, plane in enumerate(image):
        tifffile.imwrite(folder / f"s_{z}.tif", plane)
    ref = arrays(segment(data["model"], data["store"], tmp_path / "ref.zarr", block=(16, 32, 32), **FAST))["labels"]

    from_tiff = arrays(segment(data["model"], tmp_path / "vol.tif", tmp_path / "a.zarr", block=(16, 32, 32), **FAST))
    assert np.array_equal(from_tiff["labels"], ref)
    out = segment(data["model"], folder, tmp_path / "b.tif", block=(16, 32, 32), **FAST)
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == SHAPE[0] and tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert json.loads(tif.imagej_metadata["Info"])["xtrain"]["source"]["model_name"] == "unet"
        assert np.array_equal(tif.asarray(), ref)
    assert not work_dir(out).exists()


def test_normalisation_uses_the_new_volume_percentiles(data, tmp_path, caplog):
    image = open_store(data["store"]).image[:]
    # the reference with its own percentiles (auto would take the training statistics: same scale)
    ref = arrays(segment(data["model"], data["store"], tmp_path / "ref.zarr", probabilities=True,
                         normalisation="own", **FAST))
    # another scanner gain and offset: its own percentiles give the same normalised data, same labels
    # (uint16: exact)
    scaled = store_from(tmp_path / "scaled.zarr", (image.astype(np.int64) * 2 + 500).astype(np.uint16))
    got = arrays(segment(data["model"], scaled, tmp_path / "s.zarr", probabilities=True, normalisation="own", **FAST))
    assert np.array_equal(got["labels"], ref["labels"]) and np.array_equal(got["probabilities"], ref["probabilities"])
    # auto sees its three phase peaks on another grey scale and maps them onto the training ones
    with caplog.at_level(logging.WARNING, logger="xtrain"):
        out = segment(data["model"], scaled, tmp_path / "auto.zarr", **FAST)
    assert open_segmentation(out).info.source["normalisation"]["mode"] == "peaks"
    assert (arrays(out)["labels"] == ref["labels"]).mean() > 0.995
    assert "unlike the training data" not in caplog.text and "uncertain" not in caplog.text
    # a float32 phase volume (another dtype: its own percentiles, exact), so nearly all labels agree
    phase = store_from(tmp_path / "phase.zarr", (image * np.float32(-1e-3) * -1 + np.float32(-3.0)).astype(np.float32))
    got = arrays(segment(data["model"], phase, tmp_path / "p.zarr", **FAST))["labels"]
    assert (got == ref["labels"]).mean() > 0.999


def test_a_volume_unlike_the_training_data_warns_once(data, tmp_path, caplog):
    rng = np.random.default_rng(0)
    labels = (rng.random(SHAPE) < 0.05).astype(np.int64) * 2  # 95 % pore: a very different histogram
    image = (labels * 1000 + 1000 + rng.normal(0, 50, SHAPE)).astype(np.uint16)
    odd = store_from(tmp_path / "odd.zarr", image)
    with caplog.at_level(logging.WARNING, logger="xtrain"):
        segment(data["model"], odd, tmp_path / "odd_seg.zarr", **FAST)
    lines = [r.getMessage() for r in caplog.records if "unlike the training data" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]


def test_probabilities_sum_to_one_and_entropy_is_bounded(data, tmp_path):
    got = arrays(segment(data["model"], data["store"], tmp_path / "p.zarr", axes="zyx", tta=True, probabilities=True,
                         **FAST))
    p = got["probabilities"].astype(np.float32)
    assert p.shape == (3, *SHAPE) and got["probabilities"].dtype == np.float16
    assert np.allclose(p.sum(0), 1, atol=2e-3) and p.min() >= 0
    e = got["entropy"].astype(np.float32)
    assert e.shape == (1, *SHAPE)  # an OME image with a channel axis
    assert e.min() >= 0 and e.max() <= math.log(3) + 1e-3 and e.max() > 0.1
    assert np.array_equal(got["labels"], p.argmax(0)) or (got["labels"] == p.argmax(0)).mean() > 0.999  # fp16 ties


def test_tta_is_the_average_of_the_flipped_predictions(data, tmp_path):
    """One tile per plane (tile >= Y, X), so the tile grid is flip-symmetric: TTA must equal
    the mean of the plain predictions of the flipped volumes, flipped back."""
    image = open_store(data["store"]).image[:]
    kw = dict(tile=64, halo=4, chunks=(8, 16, 16), shard=False, probabilities=True)
    tta = arrays(segment(data["model"], data["store"], tmp_path / "tta.zarr", tta=True, **kw))["probabilities"]
    mean = np.zeros(tta.shape, np.float64)
    for i, dims in enumerate([(), (1,), (2,), (1, 2)]):
        flipped = store_from(tmp_path / f"f{i}.zarr", np.flip(image, dims).copy())
        p = arrays(segment(data["model"], flipped, tmp_path / f"f{i}_seg.zarr", **kw))["probabilities"]
        mean += np.flip(p.astype(np.float64), tuple(d + 1 for d in dims))
    mean /= 4
    assert np.abs(mean - tta.astype(np.float64)).max() < 2e-3
    plain = arrays(segment(data["model"], data["store"], tmp_path / "plain.zarr", **kw))["probabilities"]
    assert not np.array_equal(plain, tta)


# ----------------------------------------------------------------------------- what other tools open


@pytest.fixture(scope="module")
def voxel_store(data, tmp_path_factory):
    """The test volume with a voxel size of 50 nm (the outputs carry it)."""
    image = open_store(data["store"]).image[:]
    path = tmp_path_factory.mktemp("voxel") / "v.zarr"
    with write_store(path, image.shape) as w:
        w.create_image(image.shape, image.dtype)[:] = image
        stats = IntensityStats(image.dtype, (float(image.min()), float(image.max())))
        stats.update(image)
        w.info.stats, w.info.voxel_size_nm = stats.to_dict(), 50.0
    return path


def test_zarr_output_is_an_ome_image_with_a_prediction_label_image(data, voxel_store, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v05.image import Image

    out = segment(data["model"], voxel_store, tmp_path / "seg.zarr", probabilities=True, **FAST)
    group = zarr.open_group(str(out), mode="r")
    Image.from_zarr(group)  # OME-Zarr 0.5, labels/ included
    for sub in ("probabilities", "entropy"):
        Image.from_zarr(group[sub])
    for sub in ("probabilities", "entropy"):
        axes = dict(group[sub].attrs)["ome"]["multiscales"][0]["axes"]
        assert [a["name"] for a in axes] == ["c", "z", "y", "x"] and axes[0]["type"] == "channel", sub
    nodes = list(Reader(parse_url(str(out)))())
    label = [n for n in nodes if n.load(Label)]
    assert len(label) == 1 and label[0].metadata["name"] == "prediction"
    assert np.allclose(label[0].metadata["color"][2], [0, 158 / 255, 115 / 255, 1])  # Ni green
    seg = open_segmentation(out)
    np.testing.assert_array_equal(seg.image[:], open_store(voxel_store).image[:])
    ref = arrays(segment(data["model"], data["store"], tmp_path / "ref.zarr", **FAST))["labels"]
    np.testing.assert_array_equal(seg.labels[:], ref)  # the image copy changes nothing


def test_tiff_output_is_an_imagej_zyx_stack_with_the_voxel_size(data, voxel_store, tmp_path):
    out = segment(data["model"], voxel_store, tmp_path / "seg.tif", **FAST)
    ref = arrays(segment(data["model"], voxel_store, tmp_path / "ref.zarr", **FAST))["labels"]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX" and tif.series[0].shape == SHAPE
        ij = tif.imagej_metadata
        assert ij["spacing"] == pytest.approx(0.05) and ij["unit"] == "um"
        assert ij["Properties"]["classes"] == "pore,ysz,ni"
        assert json.loads(ij["Info"])["xtrain"]["source"]["kind"] == "segmentation"
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(20.0)  # pixels per um
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(tif.asarray(), ref)


def test_hdf5_output_is_nexus(data, voxel_store, tmp_path):
    import h5py

    out = segment(data["model"], voxel_store, tmp_path / "seg.h5", **FAST)
    ref = arrays(segment(data["model"], voxel_store, tmp_path / "ref.zarr", **FAST))["labels"]
    with h5py.File(out, "r") as f:
        assert f["entry"].attrs["NX_class"] == "NXentry" and f["entry/data"].attrs["NX_class"] == "NXdata"
        assert f["entry/data"].attrs["signal"] == "data"
        data_ = f["entry/data/data"]
        assert data_.chunks is not None and data_.compression == "gzip" and data_.dtype == np.uint8
        assert list(data_.attrs["classes"]) == ["pore", "ysz", "ni"]
        assert list(data_.attrs["voxel_size"]) == pytest.approx([0.05] * 3) and data_.attrs["voxel_size_units"] == "um"
        np.testing.assert_array_equal(data_[:], ref)
        assert f["entry/data/x"][1] == pytest.approx(0.05) and f["entry/data/x"].attrs["units"] == "um"
    assert not work_dir(out).exists()


# ----------------------------------------------------------------------------- the command line


def _bad_model(path, **kwargs):
    kw = model_kwargs("unet", **kwargs)
    save_checkpoint({"model_name": "unet", "model_kwargs": kw, "model_state": create_model("unet", **kw).state_dict(),
                     "classes": ["pore", "ysz", "ni"], "stats": {}}, path)
    return path


def test_cli_segments_and_refuses_an_existing_output(data, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    args = ["segment", str(data["model"]), str(data["store"]), str(out), "--block", "16,64,64", "--tile", "32",
            "--halo", "4"]
    assert main(args) == 0 and open_segmentation(out).labels.shape == SHAPE
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--overwrite" in err and "\n" not in err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("case", ["missing model", "missing volume", "corrupt model", "even channels",
                                  "wrong weights", "bad suffix", "halo too big", "probabilities to tiff",
                                  "probabilities to hdf5"])
def test_bad_input_is_one_line_exit_2_and_no_output(data, tmp_path, capsys, case):
    model, volume, out, extra = str(data["model"]), str(data["store"]), tmp_path / "out.zarr", []
    if case == "missing model":
        model = str(tmp_path / "nope.pt")
    elif case == "missing volume":
        volume = str(tmp_path / "nope.zarr")
    elif case == "corrupt model":
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint" * 10)
        model = str(tmp_path / "bad.pt")
    elif case == "even channels":
        model = str(_bad_model(tmp_path / "even.pt", in_channels=2, width=4, depth=1))
    elif case == "wrong weights":
        model = str(tmp_path / "wrong.pt")
        ckpt = torch.load(data["model"], weights_only=True)
        ckpt["model_kwargs"] = {**ckpt["model_kwargs"], "width": 6}
        save_checkpoint(ckpt, model)
    elif case == "bad suffix":
        out = tmp_path / "out.n5"
    elif case == "halo too big":
        extra = ["--tile", "32", "--halo", "16"]
    elif case == "probabilities to tiff":
        out, extra = tmp_path / "out.tif", ["--probabilities"]
    elif case == "probabilities to hdf5":
        out, extra = tmp_path / "out.nxs", ["--probabilities"]
    assert main(["segment", model, volume, str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtrain segment: error:") and "\n" not in err, err
    assert not out.exists() and not work_dir(out).exists()


# ----------------------------------------------------------------------------- the model's validated settings


@pytest.fixture(scope="module")
def all_axes_model(data, tmp_path_factory):
    """The tiny model's weights in a model.pt that records ``--axes zyx --clean`` (trained on all axes)."""
    ckpt = torch.load(data["model"], weights_only=False)
    ckpt["inference"] = {"axes": "zyx", "clean": True}
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("all_axes") / "model.pt")


def test_segment_runs_the_models_validated_settings_unless_told_otherwise(data, all_axes_model, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="xtrain"):
        default = segment(all_axes_model, data["store"], tmp_path / "default.zarr", **FAST)
    assert "axes zyx, clean (the model's validated settings; --axes z or --no-clean to override)" in caplog.text
    src = open_segmentation(default).info.source
    assert (src["settings"]["axes"], src["settings"]["clean"]) == ("zyx", True)
    assert src["inference"]["chosen_by"] == {"axes": "model", "clean": "model"}
    # the same bits as asking for them of the z-trained model
    explicit = segment(data["model"], data["store"], tmp_path / "explicit.zarr", axes="zyx", clean=True, **FAST)
    assert np.array_equal(arrays(default)["labels"], arrays(explicit)["labels"])
    assert open_segmentation(explicit).info.source["inference"]["chosen_by"] == {"axes": "options", "clean": "options"}
    # the CLI's --axes / --no-clean override the model's; without them its settings run
    out = tmp_path / "cli.zarr"
    assert main(["segment", str(all_axes_model), str(data["store"]), str(out), "--tile", "32", "--halo", "4",
                 "--axes", "z", "--no-clean"]) == 0
    src = open_segmentation(out).info.source
    assert (src["settings"]["axes"], src["settings"]["clean"]) == ("z", False)
    # a z-trained model (conftest.tiny_model: data.axis z) records z without clean-up
    z_model = segment(data["model"], data["store"], tmp_path / "z.zarr", tile=32, halo=4)
    src = open_segmentation(z_model).info.source
    assert src["inference"]["chosen_by"] == {"axes": "model", "clean": "model"} and src["settings"]["axes"] == "z"
    assert np.array_equal(arrays(out)["labels"], arrays(z_model)["labels"])
    # a model.pt from before the record: xtrain's default, z without clean-up
    ckpt = torch.load(data["model"], weights_only=False)
    del ckpt["inference"]
    old = segment(save_checkpoint(ckpt, tmp_path / "old.pt"), data["store"], tmp_path / "old.zarr", tile=32, halo=4)
    src = open_segmentation(old).info.source
    assert src["inference"]["chosen_by"] == {"axes": "default", "clean": "default"} and not src["settings"]["clean"]
    assert np.array_equal(arrays(old)["labels"], arrays(z_model)["labels"])


def test_an_in_process_run_leaves_the_torch_thread_count_as_it_was(data, tmp_path):
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    out = segment(data["model"], data["store"], tmp_path / "t.zarr", threads=want, **FAST)
    assert open_segmentation(out).info.source["settings"]["threads"] == want
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_two_segment_resume_runs_into_one_output_one_refuses_naming_the_others_pid(tiny_model, tmp_path, capsys):
    """Two real ``xtrain segment ... --resume`` processes into one OUT (autosubmit #2027): the second
    refuses in one line naming the first one's pid, exit 2; the first finishes a complete output."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from xtrain.io import lock_path

    store = make_store(tmp_path / "vol.zarr", shape=(13, 48, 45), seed=5)
    out = tmp_path / "seg.zarr"
    args = ["segment", str(tiny_model), str(store), str(out), "--resume", "--tile", "32", "--halo", "4"]
    repo = Path(__file__).resolve().parents[2]
    first = subprocess.Popen([sys.executable, "-m", "xtrain.cli", *args], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(repo)})
    lock = lock_path(out)
    t0 = time.monotonic()
    while not (lock.exists() and lock.read_text().startswith(f"{first.pid} ")):
        assert first.poll() is None and time.monotonic() - t0 < 120, "the first segment never took the lock"
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)  # frozen while it holds the lock: the second one surely overlaps it
    try:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"xtrain segment: error: another 'xtrain segment' is writing '{out}' (pid {first.pid} "
                              "on ") and "\n" not in err, err
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert open_segmentation(out)["labels"].shape == (13, 48, 45)
    assert not lock.exists() and not work_dir(out).exists()
