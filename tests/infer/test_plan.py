"""plan(): pure planning of a segmentation - blocks cover the volume once, read boxes hold the
write boxes and every tile and 2.5D slice they need, settings resolved, a mismatch named."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from xtrain.data.volumes import array_volume
from xtrain.errors import InvalidInputError, SettingsMismatchError
from xtrain.geometry import reflect
from xtrain.infer.blocks import plan_tiles
from xtrain.infer.options import SegmentOptions
from xtrain.infer.plan import Plan, PredictorInfo, Previous, Resources, default_block, plan

SHAPE = (37, 61, 53)
MODEL = PredictorInfo("model", "unet", 3, ("pore", "ysz", "ni"), "abc", context=1)  # a 3-slice 2.5D model
THRESHOLD = PredictorInfo("threshold", "median-otsu", 3, ("pore", "ysz", "ni"), "def", context=1)
FAST = dict(tile=32, halo=4, chunks=(8, 16, 16), shard=False)


@pytest.fixture(scope="module")
def volume():
    return array_volume(np.zeros(SHAPE, np.uint16), spec="vol")


def coverage(job: Plan, shape) -> np.ndarray:
    count = np.zeros(shape, np.int32)
    for b in job.blocks:
        count[tuple(slice(a, c) for a, c in b.core)] += 1
    return count


def contains(outer, inner) -> bool:
    return all(a0 <= b0 and b1 <= a1 for (a0, a1), (b0, b1) in zip(outer, inner))


def needed_box(core, shape, axes, tile, halo, context):
    """Independently: the union over slicing axes of every tile (of plan_tiles' grid) that
    overlaps the core, across the axis, and the core +- context slices (mirrored) along it."""
    lo, hi = list(shape), [0, 0, 0]
    for axis in axes:
        for d in range(3):
            c0, c1 = core[d]
            if d == axis:
                idx = reflect(np.arange(c0 - context, c1 + context), 0, shape[d])
                first, last = int(idx.min()), int(idx.max()) + 1
            else:
                t, starts = plan_tiles(shape[d], tile, halo)
                touching = [int(s) for s in starts if s < c1 and s + t > c0]  # brute force over the grid
                first, last = min(touching), max(touching) + t
            lo[d], hi[d] = min(lo[d], first), max(hi[d], last)
    return tuple(zip(lo, hi))


@pytest.mark.parametrize("block", [(16, 32, 32), (5, 7, 9), (37, 61, 53), (100, 100, 100)])
@pytest.mark.parametrize("axes", ["z", "zyx"])
def test_blocks_cover_the_volume_once_and_read_boxes_hold_their_tiles(volume, block, axes):
    job = plan(volume, MODEL, SegmentOptions(block=block, axes=axes, clean=False, **FAST))
    assert (coverage(job, SHAPE) == 1).all()  # disjoint cores, nothing left out
    assert [b.index for b in job.blocks] == sorted(b.index for b in job.blocks)  # z-major
    axis_list = (0,) if axes == "z" else (0, 1, 2)
    for b in job.blocks:
        assert contains(b.read, b.core)
        assert b.read == needed_box(b.core, SHAPE, axis_list, 32, 4, 1), b


def test_clean_reads_the_tiles_of_the_core_grown_by_one_voxel(volume):
    job = plan(volume, MODEL, SegmentOptions(block=(16, 32, 32), axes="z", clean=True, **FAST))
    for b in job.blocks:
        grown = tuple((max(0, a - 1), min(n, c + 1)) for (a, c), n in zip(b.core, SHAPE))
        assert b.read == needed_box(grown, SHAPE, (0,), 32, 4, 1)


def test_a_threshold_baseline_reads_its_filter_reach(volume):
    job = plan(volume, THRESHOLD, SegmentOptions(block=(8, 61, 53), axes="z", clean=True, **FAST))
    for b in job.blocks:
        assert b.read == tuple((max(0, a - 2), min(n, c + 2)) for (a, c), n in zip(b.core, SHAPE))  # median + clean
    assert not any("inference" in n for n in job.notes)  # a threshold has no inference mode to report


def test_the_read_box_is_what_the_predictor_reads(volume, tiny_model):
    """The plan's read box and ``Predictor.input_box`` agree (the runner checks it on every block)."""
    from xtrain.infer.runner import ModelSource

    job = plan(volume, MODEL, SegmentOptions(block=(16, 32, 32), axes="zyx", clean=True, **FAST))
    predictor = ModelSource(str(tiny_model)).build(job.settings)
    for b in job.blocks:
        grown = tuple((max(0, a - 1), min(n, c + 1)) for (a, c), n in zip(b.core, SHAPE))
        assert b.read == predictor.input_box(grown, SHAPE)


def test_blocks_round_up_to_whole_shards_and_say_so(volume):
    job = plan(volume, MODEL, SegmentOptions(block=(5, 7, 9), **FAST))
    assert job.settings.block == (8, 16, 16) and job.settings.chunks == (8, 16, 16)
    assert any("rounded up to 8,16,16" in n for n in job.notes)
    sharded = plan(volume, MODEL, SegmentOptions(block=(5, 7, 9)))  # default layout: 32 x 512 x 512 shards
    assert sharded.settings.block == (32, 61, 53) and len(sharded.blocks) == 2


def test_the_record_is_what_resume_compares(volume):
    job = plan(volume, MODEL, SegmentOptions(block=(16, 32, 32), **FAST), resources=Resources(cpus=2, threads=3))
    rec = job.record
    assert rec["volume"] == "vol" and rec["shape"] == list(SHAPE) and rec["model_sha256"] == "abc"
    assert rec["settings"] == {"block": [16, 32, 32], "tile": 32, "halo": 4, "axes": "z", "tta": False,
                               "probabilities": False, "window": "gaussian", "batch_size": None, "threads": 3,
                               "chunks": [8, 16, 16], "shard": False, "clean": False}
    assert job.workers == 1 and not job.use_ray and not job.resume and not job.complete


def test_resume_names_the_setting_that_differs_and_reuses_the_recorded_threads(volume):
    first = plan(volume, MODEL, SegmentOptions(**FAST), resources=Resources(cpus=2, threads=1))
    interrupted = Previous("out.zarr", first.record, complete=False)
    again = plan(volume, MODEL, SegmentOptions(**FAST), interrupted, Resources(cpus=2, threads=2))
    assert again.settings.threads == 1 and again.resume and not again.complete  # recorded threads: same bits
    with pytest.raises(SettingsMismatchError, match="interrupted run 'out.zarr'.*tile was 32, now 48"):
        plan(volume, MODEL, SegmentOptions(**{**FAST, "tile": 48}), interrupted)
    finished = Previous("out.zarr", first.record, complete=True)
    assert plan(volume, MODEL, SegmentOptions(**FAST), finished).complete
    other = PredictorInfo("model", "unet", 3, ("pore", "ysz", "ni"), "xyz", context=1)
    with pytest.raises(SettingsMismatchError, match="finished output 'out.zarr'.*model_sha256 was 'abc', now 'xyz'"):
        plan(volume, other, SegmentOptions(**FAST), finished)


def test_workers_and_threads_on_ray_and_a_gpu_request_without_gpus(volume):
    job = plan(volume, MODEL, SegmentOptions(workers=2, **FAST), resources=Resources(cpus=6, threads=1))
    assert job.use_ray and job.workers == 2 and job.settings.threads == 3  # cores / workers
    gpu = plan(volume, MODEL, SegmentOptions(gpu=True, **FAST), resources=Resources(cpus=8, gpus=4))
    assert gpu.workers == 4 and gpu.gpu  # one per GPU
    with pytest.raises(InvalidInputError, match="--gpu was given but the Ray cluster has no GPUs"):
        plan(volume, MODEL, SegmentOptions(gpu=True, **FAST), resources=Resources(cpus=8, gpus=0))


ZYX_CLEAN = {"axes": "zyx", "clean": True}


@pytest.mark.parametrize("axes, clean, recorded, want, chosen, reason", [
    (None, None, ZYX_CLEAN, ("zyx", True), ("model", "model"), "the model's validated settings; --axes z"),
    ("z", None, ZYX_CLEAN, ("z", True), ("options", "model"), "axes: given; clean: the model's validated setting"),
    (None, False, ZYX_CLEAN, ("zyx", False), ("model", "options"), "clean: given"),
    (None, None, None, ("z", False), ("default", "default"), "xtrain's default"),
    ("zyx", True, None, ("zyx", True), ("options", "options"), "axes: given; clean: given"),
])
def test_the_inference_mode_is_the_options_else_the_models_else_z(volume, axes, clean, recorded, want, chosen,
                                                                  reason):
    info = PredictorInfo("model", "unet", 3, ("pore", "ysz", "ni"), "abc", 1, recorded)
    job = plan(volume, info, SegmentOptions(axes=axes, clean=clean, **FAST))
    assert (job.settings.axes, job.settings.clean) == want
    assert (job.inference["chosen_by"]["axes"], job.inference["chosen_by"]["clean"]) == chosen
    assert reason in job.inference["reason"] and job.inference["reason"] in job.notes[0]
    # the block default follows the resolved axes: zyx on this small volume is one block
    assert job.settings.block == tuple(min(b, n) for b, n in zip(default_block(want[0], SHAPE), SHAPE))


def test_plan_reads_nothing():
    """A volume whose reads fail plans all the same: plan is metadata only."""
    import dask.array as da

    broken = da.map_blocks(lambda b: 1 / 0, da.zeros((9, 10, 11), chunks=3), dtype=np.float64)
    vol = array_volume(broken, spec="broken")
    job = plan(vol, MODEL, SegmentOptions(block=(3, 10, 11), tile=32, halo=4, chunks=(3, 10, 11), shard=False))
    assert len(job.blocks) == 3
    with pytest.raises(ZeroDivisionError):
        vol.read(job.blocks[0].read)


def test_default_blocks():
    assert default_block("z", (250, 501, 501)) == (32, 1024, 1024)
    assert default_block("zyx", (250, 501, 501)) == (250, 501, 501)  # under ZYX_WHOLE_VOXELS: one block
    assert default_block("zyx", (1024, 1024, 1024)) == (64, 512, 512)
    assert list(itertools.islice(default_block("zyx", SHAPE), 3)) == list(SHAPE)
