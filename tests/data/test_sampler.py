"""Patch sampler: splits, region confinement, sharding, determinism, 2.5D, augmentation."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from xtrain.config import AugmentConfig, DataConfig
from xtrain.data.sampler import GridPatches, RandomPatches, Split, patch_loader, reflect, split_regions
from xtrain.data.store import open_store, write_store
from xtrain.errors import ConfigError, InvalidInputError

TINY = (37, 61, 53)
NO_AUG = AugmentConfig(flips=False, rot90=False, intensity_scale=0.0, intensity_shift=0.0)
GEOMETRY_AUG = AugmentConfig(intensity_scale=0.0, intensity_shift=0.0)  # values stay decodable


def coord_store(path: Path, shape=TINY, axis: int = 0) -> Path:
    """image = labels = the voxel's coordinate along ``axis``; stats make normalisation the identity."""
    coord = np.indices(shape)[axis]
    with write_store(path, shape) as w:
        w.create("image", shape, np.float32)[:] = coord.astype(np.float32)
        w.create("labels", shape, np.uint8)[:] = coord.astype(np.uint8)
        w.info.stats = {"p0_5": 0.0, "p99_5": 1.0}
    return path


@pytest.fixture(scope="module")
def coords(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coords")
    return {name: coord_store(root / f"{name}.zarr", axis=a) for a, name in enumerate("zyx")}


def items(ds, n=None):
    return [ds[i] for i in range(len(ds) if n is None else n)]


# --------------------------------------------------------------------------- splits


def test_split_default_and_explicit():
    assert split_regions(100, DataConfig()) == Split(train=(0, 76), val=(80, 100))
    assert split_regions(100, DataConfig(train_z=[50, 100], val_z=[0, 40])) == Split(train=(50, 100), val=(0, 40))
    # explicit val only: train is everything before it less the gap
    assert split_regions(100, DataConfig(val_z=[60, 80])).train == (0, 56)


def test_fraction_keeps_first_part_of_training_slab(coords):
    cfg = DataConfig(fraction=0.25, gap=2, val_fraction=0.2, patch=16, samples_per_epoch=60, augment=GEOMETRY_AUG)
    split = split_regions(TINY[0], cfg)
    assert split.train == (0, round(28 * 0.25)) and split.val == (30, 37)
    zs = np.concatenate([im.numpy().ravel() for im, _ in items(RandomPatches(coords["z"], cfg, split.train))])
    assert zs.min() >= 0 and zs.max() < 7


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(train_z=[0, 50]), "outside"),
        (dict(train_z=[-1, 10], val_z=[20, 30]), "outside"),
        (dict(train_z=[10, 10], val_z=[20, 30]), "empty"),
        (dict(train_z=[0, 25], val_z=[20, 30]), "overlap"),
        (dict(train_z=[0, 18], val_z=[20, 30], gap=4), "2 slices apart"),
        (dict(val_fraction=0.95), "no training slices"),
        (dict(val_fraction=0.0), "val_fraction"),
        (dict(fraction=0.0), "fraction"),
        (dict(fraction=1.5), "fraction"),
        (dict(train_z=[0, 1, 2]), "[start, stop)"),
    ],
)
def test_invalid_splits_raise_config_error(kwargs, words):
    with pytest.raises(ConfigError) as info:
        split_regions(TINY[0], DataConfig(**kwargs))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_invalid_sampling_settings(tiny_store):
    for kwargs in (dict(slices=2), dict(axis="w"), dict(patch=0)):
        with pytest.raises(ConfigError):
            RandomPatches(tiny_store, DataConfig(**kwargs), (0, 20))
    with pytest.raises(ConfigError, match="outside"):
        GridPatches(tiny_store, DataConfig(), (30, 40))


# --------------------------------------------------------------------------- region confinement


@pytest.mark.parametrize("axis", ["z", "y", "x", "any"])
@pytest.mark.parametrize("patch, slices", [(32, 3), (64, 1)])
def test_random_patches_never_leave_their_region(coords, axis, patch, slices):
    cfg = DataConfig(patch=patch, slices=slices, axis=axis, samples_per_epoch=12, augment=GEOMETRY_AUG)
    split = split_regions(TINY[0], cfg)
    for region in (split.train, split.val):
        for image, label in items(RandomPatches(coords["z"], cfg, region, seed=1)):
            assert image.shape == (slices, patch, patch) and label.shape == (patch, patch)
            assert region[0] <= image.min() and image.max() < region[1], (axis, region)
            assert region[0] <= label.min() and label.max() < region[1]


def test_reflect_indices():
    assert reflect(np.arange(-3, 8), 2, 6).tolist() == [3, 4, 5, 4, 3, 2, 3, 4, 5, 4, 3]
    assert reflect(np.arange(-2, 3), 4, 5).tolist() == [4] * 5


# --------------------------------------------------------------------------- 2.5D


@pytest.mark.parametrize("axis", ["z", "y", "x"])
def test_25d_channels_are_the_neighbouring_slices(coords, axis):
    a = "zyx".index(axis)
    cfg = DataConfig(patch=16, slices=3, axis=axis, samples_per_epoch=40, augment=NO_AUG)
    region = (5, 20)
    bounds = region if a == 0 else (0, TINY[a])
    for image, label in items(RandomPatches(coords[axis], cfg, region, train=False)):
        centre = int(label[0, 0])
        assert (label == centre).all()  # a plane normal to the slicing axis
        expected = reflect(np.arange(centre - 1, centre + 2), *bounds)
        assert [float(image[c].min()) for c in range(3)] == expected.tolist()
        assert [float(image[c].max()) for c in range(3)] == expected.tolist()


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("world", [2, 3])
def test_random_shards_are_disjoint_and_match_the_single_rank_samples(tiny_store, world):
    cfg = DataConfig(patch=16, samples_per_epoch=12)
    single = RandomPatches(tiny_store, cfg, (0, 30), seed=3)
    seen = []
    for rank in range(world):
        ds = RandomPatches(tiny_store, cfg, (0, 30), rank=rank, world_size=world, seed=3)
        assert len(ds) == 12 // world
        for i in range(len(ds)):
            g = ds.global_index(i)
            seen.append(g)
            assert torch.equal(ds[i][0], single[g][0])  # item depends only on (seed, epoch, global index)
    assert sorted(seen) == list(range(world * (12 // world)))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("patch", [32, 64])
def test_grid_shards_cover_the_region_exactly(tiny_store, world, patch):
    cfg = DataConfig(patch=patch, val_patches=10_000)
    region = (30, 37)
    cover = np.zeros((region[1] - region[0],) + TINY[1:], dtype=np.int64)
    positions = []
    for rank in range(world):
        ds = GridPatches(tiny_store, cfg, region, rank=rank, world_size=world)
        for i in range(len(ds)):
            z, y, x = ds.position(i)
            positions.append((z, y, x))
            cover[z - region[0], y : y + patch, x : x + patch] += 1
    assert len(set(positions)) == len(positions)  # disjoint shards
    assert (cover >= 1).all()  # every voxel of the region
    assert {p[0] for p in positions} == set(range(*region))


def test_grid_items_are_the_store_data(tiny_store):
    store = open_store(tiny_store)
    cfg = DataConfig(patch=32, slices=3, val_patches=10_000)
    ds = GridPatches(tiny_store, cfg, (30, 37))
    for i in (0, 5, len(ds) - 1):
        z, y, x = ds.position(i)
        image, label = ds[i]
        assert np.array_equal(label.numpy(), store.labels[z, y : y + 32, x : x + 32])
        lo, hi = store.info.stats["p0_5"], store.info.stats["p99_5"]
        raw = image[1].numpy() * (hi - lo) + lo
        assert np.allclose(raw, store.image[z, y : y + 32, x : x + 32], atol=0.05)


def test_grid_cap_takes_whole_slices_evenly_spaced(tiny_store):
    region = (0, 30)
    ds = GridPatches(tiny_store, DataConfig(patch=32, val_patches=12), region)  # 4 tiles per slice
    zs = [ds.position(i)[0] for i in range(len(ds))]
    assert len(ds) == 12 and sorted(set(zs)) == [5, 15, 25]
    assert len(GridPatches(tiny_store, DataConfig(patch=32, val_patches=2), region)) == 2
    shards = [GridPatches(tiny_store, DataConfig(patch=32, val_patches=12), region, rank=r, world_size=2)
              for r in range(2)]
    assert sum(len(s) for s in shards) == 12


# --------------------------------------------------------------------------- determinism and loading


def test_same_items_with_0_and_2_workers_and_epochs_differ(tiny_store):
    cfg = DataConfig(patch=32, slices=3, samples_per_epoch=48)
    ds = RandomPatches(tiny_store, cfg, (0, 30), seed=7)
    ds[0]  # the parent has used zarr before forking: workers must still work

    def epoch_batches(loader, epoch):
        ds.set_epoch(epoch)
        return [torch.cat(t) for t in zip(*[(im, lb.float()) for im, lb in loader])]

    serial = patch_loader(ds, 8, 0)
    parallel = patch_loader(ds, 8, 2)
    for epoch in (0, 1):
        a, b = epoch_batches(serial, epoch), epoch_batches(parallel, epoch)  # persistent workers
        assert all(torch.equal(x, y) for x, y in zip(a, b)), epoch
    e0, e1 = epoch_batches(serial, 0), epoch_batches(serial, 1)
    assert not torch.equal(e0[0], e1[0])
    assert all(torch.equal(x, y) for x, y in zip(e0, epoch_batches(serial, 0)))  # reproducible


def test_pickle_drops_the_store_handle(tiny_store):
    ds = RandomPatches(tiny_store, DataConfig(patch=16), (0, 30))
    first = ds[5]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._arrays is None and all(v._reader is None and v._array is None for v in copy._volumes)
    assert torch.equal(copy[5][0], first[0])


def test_the_store_is_opened_through_the_volume_layer(tiny_store):
    """Patches come from the layer's Volume (its source array, its statistics), equal to what its
    Dask array holds; a worker reopens that Volume and refuses a store written again meanwhile
    (same path, other data and statistics) instead of reading it with the old normalisation."""
    import shutil

    import zarr

    from conftest import make_store
    from xtrain.data.volumes import open_volume
    from xtrain.errors import InvalidInputError

    cfg = DataConfig(patch=32, slices=3, val_patches=10_000)
    ds = GridPatches(tiny_store, cfg, (30, 37))
    image, labels = open_volume(tiny_store), open_volume(tiny_store, dataset="labels")
    assert ds.stats == image.stats and ds.classes == image.classes == ["pore", "ysz", "ni"]
    z, y, x = ds.position(len(ds) - 1)
    _, label = ds[len(ds) - 1]
    assert np.array_equal(label.numpy(), labels.array[z, y:y + 32, x:x + 32].compute())
    # read directly (cached chunks), not a Dask graph per patch: the zarr array behind the reader that names
    # a damaged chunk (xtrain.data.volumes.zarr.ZarrReader)
    assert isinstance(ds.arrays[0].array.array, zarr.Array) and ds.arrays[0].unit == ds.arrays[0].array.shards

    worker = pickle.dumps(ds)  # what a spawned DataLoader worker or a Ray worker receives
    shutil.rmtree(tiny_store)
    make_store(tiny_store, seed=5)  # same shape, other voxels and statistics
    with pytest.raises(InvalidInputError, match="changed since it was opened"):
        pickle.loads(worker)[0]


def test_training_refuses_a_volume_that_is_not_a_labelled_store(tmp_path):
    import tifffile

    from xtrain.errors import InvalidInputError

    tifffile.imwrite(tmp_path / "scan.tif", np.zeros((9, 40, 40), np.uint16))
    with pytest.raises(InvalidInputError, match="is not an xtrain store .*xtrain ingest"):
        RandomPatches(tmp_path / "scan.tif", DataConfig(patch=16), (0, 9))


@pytest.mark.parametrize("patch", [32, 64])
def test_odd_sized_volume(tiny_store, patch):
    cfg = DataConfig(patch=patch, slices=3, axis="any", samples_per_epoch=16)
    for image, label in items(RandomPatches(tiny_store, cfg, (0, 30))):
        assert image.shape == (3, patch, patch) and image.dtype == torch.float32
        assert label.shape == (patch, patch) and label.dtype == torch.int64
        assert torch.isfinite(image).all() and set(label.unique().tolist()) <= {0, 1, 2}


# --------------------------------------------------------------------------- augmentation


def label_from_image(image: torch.Tensor, stats) -> np.ndarray:
    """tiny_store: image = 1000 * label + 1000 + N(0, 50)."""
    raw = image.numpy() * (stats["p99_5"] - stats["p0_5"]) + stats["p0_5"]
    return np.rint((raw - 1000) / 1000).astype(np.int64)


def test_flips_and_rotations_keep_image_and_labels_aligned(tiny_store):
    stats = open_store(tiny_store).info.stats
    cfg = DataConfig(patch=32, slices=3, axis="any", samples_per_epoch=24, augment=GEOMETRY_AUG)
    plain = RandomPatches(tiny_store, cfg, (0, 30), train=False)
    augmented = RandomPatches(tiny_store, cfg, (0, 30), train=True)
    changed = 0
    for i in range(len(augmented)):
        image, label = augmented[i]
        assert np.array_equal(label_from_image(image[1], stats), label.numpy())
        changed += not torch.equal(image, plain[i][0])
    assert changed > 12  # 7 of 8 flip/rotation combinations change the patch


def test_noise_reaches_the_requested_fraction_of_samples(tiny_store):
    stats = open_store(tiny_store).info.stats
    scale = stats["p99_5"] - stats["p0_5"]

    def noisy(noise_std, n):
        aug = replace(NO_AUG, noise_std=noise_std, noise_fraction=0.5)
        cfg = DataConfig(patch=8, samples_per_epoch=n, augment=aug)
        ds = RandomPatches(tiny_store, cfg, (0, 30))
        flags = []
        for image, label in items(ds):
            clean = (label.numpy() * 1000 + 1000 - stats["p0_5"]) / scale  # noise-free normalised image
            flags.append(float(np.std(image[0].numpy() - clean)) > 0.2)  # store noise: 50 / scale ~ 0.02
        return np.array(flags)

    flags = noisy(1.0, 400)
    assert 0.4 <= flags.mean() <= 0.6
    # which samples get noise depends only on the item RNG, not on the noise strength
    assert np.array_equal(noisy(0.5, 100), flags[:100])


# --------------------------------------------------------------------------- sparse labels


def index_store(path: Path, labelled: np.ndarray, shape=TINY, seed: int = 0) -> tuple[Path, np.ndarray]:
    """image = the voxel's flat index (exact in float32), labels random classes where ``labelled``, IGNORE
    elsewhere, with the census; stats make normalisation the identity.  Returns (path, dense labels)."""
    from xtrain.data.labels import IGNORE, census

    dense = np.random.default_rng(seed).integers(0, 3, size=shape, dtype=np.uint8)
    labels = np.where(labelled, dense, IGNORE).astype(np.uint8)
    with write_store(path, shape) as w:
        w.create("image", shape, np.float32)[:] = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        w.create("labels", shape, np.uint8)[:] = labels
        w.info.stats = {"p0_5": 0.0, "p99_5": 1.0}
        w.info.labels = census(labels).to_dict()
    return path, labels


def voxels(image: torch.Tensor, shape=TINY) -> np.ndarray:
    """(P, P, 3) voxel coordinates of the centre channel of an index_store patch."""
    flat = image[image.shape[0] // 2].numpy().astype(np.int64)
    return np.stack(np.unravel_index(flat, shape), axis=-1)


def test_sparse_patches_lie_where_the_labels_are_and_agree_with_the_store(tmp_path):
    from conftest import planes
    from xtrain.data.labels import IGNORE

    mask = planes(TINY, "z", at=(4, 19)) | planes(TINY, "x", at=(40,))
    path, labels = index_store(tmp_path / "s.zarr", mask)
    cfg = DataConfig(patch=16, slices=3, axis="any", samples_per_epoch=120, augment=GEOMETRY_AUG)
    ds = RandomPatches(path, cfg, (0, 30), seed=2)
    assert len(ds.index) == mask[:30].sum()  # labelled voxels of the region only
    normals = set()
    for image, label in items(ds):
        v = voxels(image)
        known = label.numpy() != IGNORE
        assert known.any()  # the drawn labelled voxel is in its patch
        assert set(np.unique(label.numpy())) <= {0, 1, 2, IGNORE}
        z, y, x = v[known].T
        assert np.array_equal(label.numpy()[known], labels[z, y, x])  # labelled pixels are the store's labels
        assert np.array_equal(known, labels[tuple(v.reshape(-1, 3).T)].reshape(known.shape) != IGNORE)
        assert (v[..., 0] < 30).all()  # never outside the region
        normals.add(next(a for a in range(3) if len(np.unique(v[..., a])) == 1))  # the plane's normal
        on_z = np.isin(v[known][:, 0], [4, 19]).all()
        on_x = (v[known][:, 2] == 40).all()
        assert on_z or on_x
    assert normals == {0, 2}  # painted z-planes give z-normal patches, the painted x-plane x-normal ones


def test_sparse_items_are_pure_functions_of_seed_epoch_and_global_index(tmp_path):
    from conftest import planes

    path, _ = index_store(tmp_path / "s.zarr", planes(TINY, "z", at=(7,)))
    cfg = DataConfig(patch=16, samples_per_epoch=12)
    single = RandomPatches(path, cfg, (0, 30), seed=3)
    for rank in range(2):
        ds = RandomPatches(path, cfg, (0, 30), rank=rank, world_size=2, seed=3)
        for i in range(len(ds)):
            assert torch.equal(ds[i][0], single[ds.global_index(i)][0])
            assert torch.equal(ds[i][1], single[ds.global_index(i)][1])
    copy = pickle.loads(pickle.dumps(single))
    assert all(torch.equal(a, b) for a, b in zip(copy[5], single[5]))


@pytest.mark.parametrize("unlabelled_fraction, axis, index", [
    (0.0, 1, 30),  # patches around labels: z-normal ones cross the held-out y-plane's rows
    (0.9, 0, 9),  # nearly all uniform patches (data.unlabelled_fraction): they cross the held-out z-plane
], ids=["around-labels", "unlabelled-patches"])
def test_held_out_planes_never_reach_a_training_patch(tmp_path, unlabelled_fraction, axis, index):
    from conftest import planes
    from xtrain.data.labels import IGNORE

    mask = planes(TINY, "z", at=(3, 9, 15)) | planes(TINY, "y", at=(30,))
    path, _ = index_store(tmp_path / "s.zarr", mask)
    cfg = DataConfig(patch=32, axis="any", samples_per_epoch=80, unlabelled_fraction=unlabelled_fraction,
                     augment=GEOMETRY_AUG)
    ds = RandomPatches(path, cfg, (0, 30), hidden={"z": frozenset({9}), "y": frozenset({30}), "x": frozenset()})
    crossed = 0
    for image, label in items(ds):
        v = voxels(image)
        known = label.numpy() != IGNORE
        assert not (v[known][:, 0] == 9).any() and not (v[known][:, 1] == 30).any()
        crossed += (v[..., axis] == index).any()
    assert crossed > 10  # the held-out plane's voxels were in the patches, and their labels were hidden


def test_the_label_index_reads_slabs_and_equals_the_labelled_voxels(tmp_path):
    from xtrain.data.labels import census
    from xtrain.data.label_index import label_index
    from xtrain.data.volumes import open_volume

    rng = np.random.default_rng(4)
    mask = np.zeros(TINY, bool)
    mask[rng.integers(0, 37, 300), rng.integers(0, 61, 300), rng.integers(0, 53, 300)] = True  # scribble-like dots
    path, labels = index_store(tmp_path / "s.zarr", mask)
    index = label_index(open_volume(path, dataset="labels"), census(labels), (2, 35))
    assert np.array_equal(index.coords, np.argwhere(mask[2:35]) + [2, 0, 0])
    assert index.coords.dtype == np.int32
    with pytest.raises(InvalidInputError, match="no labelled voxel in the training region"):
        label_index(open_volume(path, dataset="labels"), census(np.full(TINY, 255, np.uint8)), (0, 37))


@pytest.mark.parametrize("painted, held, words", [
    ((5,), (), "1 labelled plane: no validation hold-out (it needs 6 whole labelled planes); training runs its fixed "
               "schedule and model.pt is the last epoch's EMA weights"),
    ((2, 7, 12, 17, 22), (), "5 labelled planes: no validation hold-out"),
    ((2, 6, 10, 14, 18, 22), (("z", 14),), "6 labelled planes: validating on 1 held out whole (z 14), training on "
                                           "the other 5; model.pt is the best epoch"),
    ((0, 3, 6, 9, 12, 15, 18, 21, 24, 27), (("z", 6), ("z", 21)), "validating on 2 held out whole (z 6, z 21)"),
])
def test_the_validation_rule_for_few_labelled_planes(painted, held, words):
    from conftest import planes
    from xtrain.data.labels import census
    from xtrain.data.label_index import hold_out

    labels = np.where(planes(TINY, "z", at=painted), 1, 255).astype(np.uint8)
    hold = hold_out(census(labels), (0, 30), 0.2)
    assert hold.planes == held and words in hold.message and not hold.scribbles


def test_scribbles_are_not_held_out():
    from xtrain.data.labels import census
    from xtrain.data.label_index import hold_out

    labels = np.full(TINY, 255, np.uint8)
    for k, z in enumerate((3, 8, 13, 18, 23, 28)):  # a stroke on each of six z-planes: no plane is painted
        labels[z, 5:50, 4 + 8 * k:8 + 8 * k] = 1
    hold = hold_out(census(labels), (0, 30), 0.2, ema=False)
    assert hold.planes == () and hold.message.startswith("partial labels (scribbles) on 6 z-planes: no validation")
    assert hold.scribbles  # the training log then suggests the pairwise loss (tests/train/test_pairwise.py)
    assert hold.message.endswith("model.pt is the last epoch's weights")


def test_scribble_patches_lie_around_the_strokes_in_their_plane(tmp_path):
    """Strokes (partial labels) on three y-planes: every patch is y-normal, through a stroke, and holds it."""
    from xtrain.data.labels import IGNORE

    mask = np.zeros(TINY, bool)
    for k, y in enumerate((10, 30, 50)):
        mask[3 + 5 * k:30, y, 6 + 10 * k:9 + 10 * k] = True  # a stroke 3 wide along z in the plane y
    path, labels = index_store(tmp_path / "s.zarr", mask)
    cfg = DataConfig(patch=16, axis="any", samples_per_epoch=60, augment=GEOMETRY_AUG)
    ds = RandomPatches(path, cfg, (0, 37), seed=5)
    seen = set()
    for image, label in items(ds):
        v = voxels(image)
        known = label.numpy() != IGNORE
        assert known.any() and len(np.unique(v[..., 1])) == 1  # a y-normal patch holding labels
        assert np.array_equal(label.numpy()[known], labels[tuple(v[known].T)])
        seen.add(int(v[0, 0, 1]))
    assert seen == {10, 30, 50}


# --------------------------------------------------------------------------- sparse labels: unlabelled patches


def test_unlabelled_fraction_draws_that_share_of_patches_uniformly(tmp_path):
    """One painted z-plane (z 7) and z-normal patches: a patch around a label is centred on z 7; one drawn
    uniformly over z 0-29 is elsewhere with probability 29/30, and there it holds no label at all."""
    from conftest import planes
    from xtrain.data.labels import IGNORE

    path, _ = index_store(tmp_path / "s.zarr", planes(TINY, "z", at=(7,)))
    for f in (0.0, 0.3, 0.75):
        cfg = DataConfig(patch=16, samples_per_epoch=400, unlabelled_fraction=f, augment=GEOMETRY_AUG)
        off_plane = 0
        for image, label in items(RandomPatches(path, cfg, (0, 30), seed=1)):
            centre = np.unique(voxels(image)[..., 0])
            assert len(centre) == 1  # z-normal
            if centre[0] != 7:
                off_plane += 1
                assert (label.numpy() == IGNORE).all()
        expected = f * 29 / 30
        assert abs(off_plane / 400 - expected) < 0.07, (f, off_plane)  # binomial sd <= 0.025


def test_unlabelled_patches_are_pure_functions_of_seed_epoch_and_index_and_resume_exactly(tmp_path):
    from conftest import planes
    from xtrain.data.labels import IGNORE

    path, _ = index_store(tmp_path / "s.zarr", planes(TINY, "z", at=(7, 20)))
    cfg = DataConfig(patch=16, axis="any", samples_per_epoch=24, unlabelled_fraction=0.5)
    single = RandomPatches(path, cfg, (0, 30), seed=3)
    again = pickle.loads(pickle.dumps(RandomPatches(path, cfg, (0, 30), seed=3)))
    for epoch in (0, 2):
        assert all(torch.equal(a, b) for i in range(24) for a, b in zip(single[(epoch, i)], again[(epoch, i)]))
    assert not torch.equal(single[(0, 5)][0], single[(2, 5)][0])  # another epoch, other patches
    for rank in range(2):  # ranks shard the same samples
        ds = RandomPatches(path, cfg, (0, 30), rank=rank, world_size=2, seed=3)
        assert all(torch.equal(ds[i][0], single[ds.global_index(i)][0]) for i in range(len(ds)))
    single.set_epoch(2, start=8)  # a resume mid-epoch: the items an uninterrupted epoch would see next
    resumed = torch.cat([image for image, _ in patch_loader(single, 4, 0)])
    assert torch.equal(resumed, torch.stack([again[(2, i)][0] for i in range(8, 24)]))
    assert sum(bool((again[(1, i)][1] == IGNORE).all()) for i in range(24)) > 3  # some patches are unlabelled


def test_unlabelled_fraction_on_dense_labels_says_it_has_no_effect(coords, caplog):
    cfg = DataConfig(patch=16, samples_per_epoch=4, unlabelled_fraction=0.5)
    with caplog.at_level("WARNING", logger="xtrain"):
        ds = RandomPatches(coords["z"], cfg, (0, 30), seed=1)
    assert "data.unlabelled_fraction=0.5 has no effect: the labels of" in caplog.text
    plain = RandomPatches(coords["z"], replace(cfg, unlabelled_fraction=0.0), (0, 30), seed=1)
    assert all(torch.equal(a, b) for i in range(4) for a, b in zip(ds[i], plain[i]))  # the same patches
