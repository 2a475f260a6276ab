"""Training and validation patches read straight from a store.

    split = split_regions(store.shape[0], cfg.data)           # z-slabs: train, gap, val
    train = RandomPatches(path, cfg.data, split.train, rank=r, world_size=w, seed=cfg.train.seed)
    val = GridPatches(path, cfg.data, split.val, rank=r, world_size=w)
    loader = patch_loader(train, cfg.train.batch_size, cfg.data.loader_workers)
    for epoch in range(epochs):
        train.set_epoch(epoch)                                 # before iter(loader)
        for image, label in loader: ...                        # (B, C, P, P) float32, (B, P, P) int64

Why it looks like this:

* The image and labels are opened through the volume layer (``open_volume``: the one place
  that opens files; statistics and classes are the layer's ``Volume.stats`` / ``classes``),
  but patches index the source ``zarr.Array`` (``Volume.source``) through a chunk cache, not
  the Dask array: a patch is a few thin chunks, and building a Dask graph and calling
  ``.compute()`` per patch costs more than the read itself (bench/loader.py).  Dask is for
  volume-wide work elsewhere.
* A dataset keeps its ``Volume`` s (which pickle as spec and options) and reopens them on first
  use in each process (after a fork or unpickling, detected by the process id:
  ``Volume.reopened``), so every DataLoader worker and every Ray worker has its own handle and
  its own zarr IO loop, and refuses a store written again since the dataset was made.
* Splits are contiguous z-slabs separated by ``gap`` slices: neighbouring slices are
  nearly identical, so a random per-slice split would leak validation data into training.
  No patch ever reads a slice outside its region (2.5D neighbours and y/x-plane patches
  included).
* Randomness: item ``i`` of rank ``r`` in epoch ``e`` uses only
  ``np.random.default_rng([seed, e, r + i * world_size])``.  Results therefore do not depend
  on the number of DataLoader workers or on which worker reads which item, ranks get
  disjoint shards, and a run is reproducible.  The epoch travels with every index through
  ``EpochSampler``, so ``set_epoch`` also reaches persistent workers.
* Sparse labels (a store whose label census, ``StoreInfo.labels``, is not dense;
  ``xtrain.data.label_index``): a training item is drawn around a labelled voxel (uniform over the
  labelled voxels of the region), in the plane normal to the axis whose plane through that voxel
  holds the most labels (a painted z-plane gives z-normal patches, a painted y-plane y-normal
  ones), at a uniform offset inside the patch.  Unlabelled pixels keep ``IGNORE`` (the losses'
  ``ignore_index``: never a class), and the rows of held-out validation planes are ``IGNORE`` too.
  Same determinism: item i of rank r in epoch e still uses only ``default_rng([seed, e, r + i * w])``.
  ``data.unlabelled_fraction`` f > 0 (for self-training, train/self_training.py): the item's first draw
  picks, with probability f, the dense draw uniformly over the region instead (patches that are nearly
  all unlabelled); the held-out planes' rows are ``IGNORE`` in those patches too.
* Edges: every index outside the volume (patch larger than the volume, 2.5D neighbours at
  the ends, y/x patches taller than the region) is *reflected* back inside the region
  (mirror without repeating the edge: -1 -> 1, like ``np.pad(mode="reflect")``).  Labels
  are reflected the same way, so padded pixels carry the label of the voxel they mirror:
  the loss sees plausible, aligned data and needs no ignore index.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from ..config import DataConfig, check_slabs_apart
from ..errors import ConfigError, InvalidInputError
from .chunkcache import CachedArray, read_unit
from ..geometry import reflect
from .labels import IGNORE
from .normalise import normalize
from .label_index import LabelIndex, label_index, store_census
from .volumes import Volume, open_volume

log = logging.getLogger(__name__)

AXES = ("z", "y", "x")

# Start method of DataLoader workers.  fork, forkserver and spawn all gave identical items
# with zarr 3.1 (zarr resets its IO loop and locks in a forked child, and the dataset reopens
# the store per process; tests/data/test_sampler.py forks after the parent has used zarr).
# fork was chosen: first batch ~1 s vs ~10 s for spawn/forkserver on the 2-core dev machine
# (those re-import torch in every worker), and forked workers share torch's pages with the
# parent.  Pass multiprocessing_context="forkserver" where forking a threaded process is a
# concern (Python >= 3.12 warns about it, e.g. inside Ray actors).
DEFAULT_MP_CONTEXT = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else "spawn"


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Half-open z ranges [z0, z1) of the training and validation slabs."""

    train: tuple[int, int]
    val: tuple[int, int] | None  # None: sparse labels validate on held-out planes, or not at all (data/label_index.py)


def split_regions(depth: int, cfg: DataConfig) -> Split:
    """Training and validation z-slabs of a volume ``depth`` slices deep.

    Explicit ``cfg.train_z`` / ``cfg.val_z`` win.  Otherwise validation is the last
    ``val_fraction`` of z and training is everything before it less ``gap`` slices.
    ``cfg.fraction`` then keeps the *first* fraction of the training slab: a contiguous
    sub-slab rather than scattered slices, because scattered slices would be near-copies of
    their left-out neighbours (a "25 %" subset that is really most of the information), and
    because the subsets nest (0.25 inside 0.5 inside 1.0), so data-size studies add data.
    The settings themselves are checked by ``DataConfig``; here only what needs ``depth``.
    """
    train = (int(cfg.train_z[0]), int(cfg.train_z[1])) if cfg.train_z is not None else None
    val = (int(cfg.val_z[0]), int(cfg.val_z[1])) if cfg.val_z is not None else None
    if val is None:
        n_val = max(1, int(round(depth * cfg.val_fraction)))
        val = (depth - n_val, depth)
    if train is None:
        train = (0, val[0] - cfg.gap)
        if train[1] <= 0:
            raise ConfigError(
                f"a volume of {depth} slices with validation slab {list(val)} and data.gap={cfg.gap} leaves no "
                f"training slices; lower data.val_fraction or data.gap, or set data.train_z/data.val_z"
            )
    for name, (z0, z1) in (("train_z", train), ("val_z", val)):
        if z0 < 0 or z1 > depth:
            raise ConfigError(f"data.{name}={[z0, z1]} is outside the volume's z range [0, {depth}); set it within")
    check_slabs_apart(train, val, cfg.gap)
    if cfg.fraction < 1.0:
        keep = max(1, int(round((train[1] - train[0]) * cfg.fraction)))
        train = (train[0], train[0] + keep)
    return Split(train=train, val=val)


def sparse_split(depth: int, cfg: DataConfig) -> Split:
    """The training region of a sparse store validated on held-out planes (no validation slab):
    ``data.train_z``, or the whole volume; ``data.fraction`` keeps its first part as in ``split_regions``."""
    train = (int(cfg.train_z[0]), int(cfg.train_z[1])) if cfg.train_z is not None else (0, depth)
    if train[1] > depth:
        raise ConfigError(f"data.train_z={list(train)} is outside the volume's z range [0, {depth}); set it within")
    if cfg.fraction < 1.0:
        train = (train[0], train[0] + max(1, int(round((train[1] - train[0]) * cfg.fraction))))
    return Split(train=train, val=None)


# --------------------------------------------------------------------------- reading


def _window_start(rng: np.random.Generator, lo: int, hi: int, p: int) -> int:
    """Start of a random length-p window over [lo, hi): inside it, or covering it when p > hi - lo."""
    a, b = sorted((lo, hi - p))
    return int(rng.integers(a, b + 1))


def _read(array: Any, index: list[np.ndarray]) -> np.ndarray:
    """Gather ``array[ix_(*index)]`` with one read of the bounding box (contiguous in practice)."""
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    block = np.asarray(array[box])
    local = [i - s.start for i, s in zip(index, box)]
    if all(len(i) == s.stop - s.start and np.array_equal(i, np.arange(len(i))) for i, s in zip(local, box)):
        return block  # the window lies inside the volume: no gather copy needed
    return block[np.ix_(*local)]


class _StorePatches(Dataset):
    """Common part: the store's image and labels through the volume layer, reopened per process,
    region checks, the patch read."""

    def __init__(self, store_path: str | os.PathLike, cfg: DataConfig, region: tuple[int, int]):
        self.store_path = str(store_path)
        self.cfg = cfg
        # validated now, in the constructing process (metadata only): a labelled xtrain store
        image = open_volume(self.store_path)
        if image.kind != "store":
            raise InvalidInputError(f"'{store_path}' is not an xtrain store (it is {image.kind}); training reads a "
                                    "labelled store: make one with 'xtrain ingest IMAGES OUT.zarr --labels LABELS'")
        labels = open_volume(self.store_path, dataset="labels")  # InvalidInputError: the store has no labels
        if "p0_5" not in image.stats:
            raise InvalidInputError(f"store '{store_path}' has no intensity stats; recreate it with 'xtrain ingest'")
        self._volumes: tuple[Volume, Volume] = (image, labels)
        self._arrays: tuple[CachedArray, CachedArray] | None = None
        self._pid = os.getpid()
        self.stats: dict[str, Any] = image.stats  # the normalisation the patches get (``normalize``)
        self.classes = image.classes
        self.shape: tuple[int, int, int] = image.shape
        z0, z1 = int(region[0]), int(region[1])
        if not 0 <= z0 < z1 <= self.shape[0]:
            raise ConfigError(f"region z={[z0, z1]} is empty or outside the volume's z range [0, {self.shape[0]})")
        self.region = (z0, z1)

    @property
    def volumes(self) -> tuple[Volume, Volume]:
        """(image, labels) ``Volume`` s opened by *this* process: handles inherited through fork or
        pickle are dropped, so each DataLoader/Ray worker owns its handles and zarr IO loop."""
        if self._pid != os.getpid():
            self._volumes = tuple(v.reopened() for v in self._volumes)  # type: ignore[assignment]
            self._pid = os.getpid()
            self._arrays = None
        return self._volumes

    def sources(self) -> tuple[Any, Any]:
        """(image, labels) as the array-likes patches are read from directly (``Volume.source``)."""
        image, labels = self.volumes
        return image.source, labels.source

    @property
    def arrays(self) -> tuple[CachedArray, CachedArray]:
        """(image, labels) behind this process's chunk cache (image gets 2/3 of cache_mb)."""
        sources = self.sources()
        if self._arrays is None:
            budget = self.cfg.cache_mb << 20
            self._arrays = tuple(  # type: ignore[assignment]
                CachedArray(a, b, read_unit(a, self.region, b))
                for a, b in ((sources[0], budget * 2 // 3), (sources[1], budget // 3))
            )
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_pid"] = -1  # reopened where it is unpickled
        return state

    def _bounds(self, axis: int) -> tuple[int, int]:
        """Where indices along ``axis`` may go: the region in z, the whole volume in y and x."""
        return self.region if axis == 0 else (0, self.shape[axis])

    def _patch(self, axis: int, centre: int, starts: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Raw image (C, P, P) and labels (P, P) of the plane normal to ``axis`` through ``centre``.

        The plane's two axes keep volume order: (Y, X) for z, (Z, X) for y, (Z, Y) for x.
        Channels are the slices centre-h .. centre+h along ``axis`` (h = slices // 2).
        """
        p, h = self.cfg.patch, self.cfg.slices // 2
        plane = [a for a in range(3) if a != axis]
        index: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * 3
        index[axis] = reflect(np.arange(centre - h, centre + h + 1), *self._bounds(axis))
        for a, s in zip(plane, starts):
            index[a] = reflect(np.arange(s, s + p), *self._bounds(a))
        image_array, label_array = self.arrays
        image = np.moveaxis(_read(image_array, index), axis, 0)  # (C, P, P)
        index[axis] = np.array([centre])
        labels = np.moveaxis(_read(label_array, index), axis, 0)[0]  # (P, P)
        return image, labels

    def _tensors(self, image: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(labels, dtype=np.int64)
        )


# --------------------------------------------------------------------------- training


class RandomPatches(_StorePatches):
    """Random P x P training patches of one z-region; a map-style dataset sharded by rank.

    ``len`` is ``samples_per_epoch // world_size``.  Item ``i`` is global sample
    ``rank + i * world_size`` of the epoch, drawn from ``default_rng([seed, epoch, global])``.
    Items: ``(image (C, P, P) float32 normalised, labels (P, P) int64)``.

    The random draws happen in a fixed order whatever the augmentation settings (axis,
    position, then rot90, flips, scale, shift, noise choice), so two runs that differ only
    in augmentation - e.g. the noise study - see the same patches, and the same samples
    get noise whenever ``noise_fraction`` is the same.
    """

    def __init__(self, store_path: str | os.PathLike, cfg: DataConfig, region: tuple[int, int], *,
                 rank: int = 0, world_size: int = 1, seed: int = 0, train: bool = True,
                 hidden: dict[str, frozenset[int]] | None = None):
        super().__init__(store_path, cfg, region)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size, self.seed, self.train = rank, world_size, seed, train
        census = store_census(self._volumes[0].info.get("labels"))
        # sparse labels: patches around labelled voxels, in the plane that holds them (module docstring)
        self.index: LabelIndex | None = None
        if census is not None:
            self.index = label_index(self._volumes[1], census, self.region, hidden)
        elif cfg.unlabelled_fraction > 0:
            log.warning("data.unlabelled_fraction=%g has no effect: the labels of '%s' are dense (every patch "
                        "is drawn uniformly)", cfg.unlabelled_fraction, self.store_path)
        self.epoch = 0
        self.start = 0  # items of the epoch already trained on (mid-epoch resume)
        self.length = cfg.samples_per_epoch // world_size
        if self.length < 1:
            raise ConfigError(
                f"data.samples_per_epoch={cfg.samples_per_epoch} is less than one per worker ({world_size} workers); "
                f"raise data.samples_per_epoch"
            )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's samples; call before ``iter(loader)`` (``EpochSampler`` reads it then).

        ``start`` skips the epoch's first items: a run resumed mid-epoch continues with
        exactly the items an uninterrupted run would have seen next.
        """
        self.epoch = int(epoch)
        self.start = int(start)

    def __len__(self) -> int:
        return self.length

    def global_index(self, i: int) -> int:
        return self.rank + i * self.world_size

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = index if isinstance(index, tuple) else (self.epoch, index)
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, epoch, self.global_index(i)])
        axis, centre, starts = self._geometry(rng) if self._uniform(rng) else self._sparse_geometry(rng)
        raw, labels = self._patch(axis, centre, starts)  # (C, P, P), (P, P)
        if self.index is not None:
            labels = self._hide(axis, starts, labels)
        image = normalize(raw, self.stats)
        if self.train:
            image, labels = self._augment(rng, image, labels)
        return self._tensors(image, labels)

    def _uniform(self, rng: np.random.Generator) -> bool:
        """Whether this item is drawn uniformly over the region (``_geometry``): always for dense labels; for
        sparse ones with probability ``data.unlabelled_fraction``, by one extra draw made only when it is > 0
        (at 0 the item's draws, and so every item, are those of a run without the setting)."""
        if self.index is None:
            return True
        return self.cfg.unlabelled_fraction > 0 and bool(rng.random() < self.cfg.unlabelled_fraction)

    def _geometry(self, rng: np.random.Generator) -> tuple[int, int, tuple[int, int]]:
        """Dense labels (and sparse ones' ``data.unlabelled_fraction`` share): slicing axis, centre slice and
        in-plane window starts, uniformly in the region."""
        cfg = self.cfg
        drawn_axis = int(rng.integers(3))
        axis = drawn_axis if cfg.axis == "any" else AXES.index(cfg.axis)
        centre = int(rng.integers(*self._bounds(axis)))
        starts = tuple(_window_start(rng, *self._bounds(a), cfg.patch) for a in range(3) if a != axis)
        return axis, centre, starts  # type: ignore[return-value]

    def _sparse_geometry(self, rng: np.random.Generator) -> tuple[int, int, tuple[int, int]]:
        """Sparse labels: a labelled voxel uniformly from the index; the slicing axis whose plane through
        the voxel holds the most labelled voxels (a painted z-plane: z-normal patches; ties drawn at
        random; ``data.axis`` other than any fixes it); the window around the voxel at a uniform offset,
        kept inside the bounds where the patch fits (the voxel stays inside the patch)."""
        assert self.index is not None
        p = self.cfg.patch
        voxel = self.index.coords[int(rng.integers(len(self.index)))]
        weights = self.index.axis_weights(voxel)
        tie = rng.random(3)  # drawn whatever the axis setting: the draws that follow stay in step
        if self.cfg.axis != "any":
            axis = AXES.index(self.cfg.axis)
        else:
            axis = int(np.lexsort((tie, weights))[-1])  # most labels, then the larger random key
        starts = []
        for a in (a for a in range(3) if a != axis):
            lo, hi = self._bounds(a)
            start = int(voxel[a]) - int(rng.integers(p))
            starts.append(min(max(start, lo), max(lo, hi - p)) if hi - lo >= p else lo - (p - (hi - lo)) // 2)
        return axis, int(voxel[axis]), tuple(starts)  # type: ignore[return-value]

    def _hide(self, axis: int, starts: tuple[int, int], labels: np.ndarray) -> np.ndarray:
        """``IGNORE`` on the rows/columns of a (P, P) label patch that lie in held-out planes."""
        assert self.index is not None
        plane = [a for a in range(3) if a != axis]
        for k, (a, s) in enumerate(zip(plane, starts)):
            held = self.index.hidden.get(AXES[a])
            if not held:
                continue
            rows = np.isin(reflect(np.arange(s, s + self.cfg.patch), *self._bounds(a)), sorted(held))
            if rows.any():
                labels = labels.copy()
                if k == 0:
                    labels[rows, :] = IGNORE
                else:
                    labels[:, rows] = IGNORE
        return labels

    def _augment(self, rng: np.random.Generator, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        aug = self.cfg.augment
        k = int(rng.integers(4))
        flip_a, flip_b = rng.random(2) < 0.5
        scale = rng.uniform(1.0 - aug.intensity_scale, 1.0 + aug.intensity_scale)
        shift = rng.uniform(-aug.intensity_shift, aug.intensity_shift)
        noisy = rng.random() < aug.noise_fraction
        if aug.rot90 and k:
            image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k, axes=(0, 1))
        if aug.flips and flip_a:
            image, labels = image[:, ::-1, :], labels[::-1, :]
        if aug.flips and flip_b:
            image, labels = image[:, :, ::-1], labels[:, ::-1]
        image = image * np.float32(scale) + np.float32(shift)
        if noisy and aug.noise_std > 0:
            image = image + rng.normal(0.0, aug.noise_std, size=image.shape).astype(np.float32)
        return image, labels


# --------------------------------------------------------------------------- validation


class GridPatches(_StorePatches):
    """Fixed z-plane P x P tiles covering a z-region; rank r takes tiles r::world_size.

    Tiles start at 0, P, 2P, ... in y and x; the last one is moved back to end at the
    volume's edge (a small overlap rather than padding), and a volume narrower than P gets
    one reflected tile.  So every voxel of the region is covered, edge voxels of the last
    row/column of tiles twice.  With more tiles than ``cfg.val_patches`` the tiles of
    evenly spaced z-slices are kept (all tiles of a kept slice, so no xy-position is
    favoured; at least one slice, whose tiles are then evenly thinned): at most
    ``val_patches`` in total, the same for every rank count.  No augmentation.
    Items: ``(image (C, P, P) float32, labels (P, P) int64)``; ``position(i)`` is (z, y0, x0).
    """

    def __init__(self, store_path: str | os.PathLike, cfg: DataConfig, region: tuple[int, int], *,
                 rank: int = 0, world_size: int = 1):
        super().__init__(store_path, cfg, region)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        z0, z1 = self.region
        ys, xs = _tile_starts(self.shape[1], cfg.patch), _tile_starts(self.shape[2], cfg.patch)
        tiles = np.array([(y, x) for y in ys for x in xs], dtype=np.int64)  # (T, 2)
        n_slices = min(z1 - z0, max(1, cfg.val_patches // len(tiles)))
        # slice centres of n equal parts of the region: unique, spread, deterministic
        zs = z0 + ((np.arange(n_slices) + 0.5) * (z1 - z0) / n_slices).astype(np.int64)
        if len(tiles) > cfg.val_patches:
            keep = ((np.arange(cfg.val_patches) + 0.5) * len(tiles) / cfg.val_patches).astype(np.int64)
            tiles = tiles[keep]
        grid = np.array([(z, y, x) for z in zs for y, x in tiles], dtype=np.int64)  # (N, 3)
        self.positions = grid[rank::world_size]
        log.debug("grid: %d tiles in %d slices of z=%s, rank %d/%d takes %d", len(grid), n_slices, self.region,
                  rank, world_size, len(self.positions))

    def __len__(self) -> int:
        return len(self.positions)

    def position(self, i: int) -> tuple[int, int, int]:
        z, y, x = self.positions[i]
        return int(z), int(y), int(x)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = index[1] if isinstance(index, tuple) else index
        if not 0 <= i < len(self.positions):
            raise IndexError(f"index {i} out of range for {len(self.positions)} tiles")
        z, y, x = self.position(i)
        raw, labels = self._patch(0, z, (y, x))
        return self._tensors(normalize(raw, self.stats), labels)


def _tile_starts(size: int, p: int) -> list[int]:
    """0, p, 2p, ... with the last tile ending at ``size`` (one tile at 0 when size <= p)."""
    if size <= p:
        return [0]
    return list(range(0, size - p, p)) + [size - p]


# --------------------------------------------------------------------------- loading


class EpochSampler(Sampler):
    """Yields ``(epoch, i)``: the epoch is read in the main process when iteration starts.

    Persistent DataLoader workers hold their own copy of the dataset, so ``set_epoch`` on
    the main-process dataset would never reach them; passing the epoch with each index does.
    ``shuffle`` only changes the order items arrive in (seeded by seed and epoch), never
    their content.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = False, seed: int = 0):
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed

    def __len__(self) -> int:
        return len(self.dataset) - int(getattr(self.dataset, "start", 0))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(getattr(self.dataset, "epoch", 0))
        start = int(getattr(self.dataset, "start", 0))
        order = np.arange(len(self.dataset))  # type: ignore[arg-type]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 1 << 40]).permutation(order)
        return iter([(epoch, int(i)) for i in order[start:]])


def _worker_init(worker_id: int) -> None:
    # One intra-op thread per worker (torch does this too; explicit because the patch work
    # is numpy and the cores belong to the training loop).
    torch.set_num_threads(1)


def patch_loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool = False, *,
                 drop_last: bool = False, prefetch_factor: int = 4,
                 multiprocessing_context: str | None = None) -> DataLoader:
    """A DataLoader for ``RandomPatches`` / ``GridPatches`` (settings measured by bench/loader.py).

    * ``workers`` worker processes, persistent (no restart cost per epoch) with
      ``prefetch_factor`` batches each in flight; 0 reads in the training process.
    * start method ``DEFAULT_MP_CONTEXT`` (fork where available: instant start; zarr 3 resets
      its IO loop in the child and the dataset reopens the store per process).
    * ``pin_memory`` only when CUDA is available (it only helps host-to-GPU copies).
    * batches of ``(B, C, P, P)`` float32 and ``(B, P, P)`` int64.
    """
    sampler = BatchSampler(EpochSampler(dataset, shuffle, getattr(dataset, "seed", 0)), batch_size, drop_last)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = dict(
            persistent_workers=True,
            prefetch_factor=prefetch_factor,
            multiprocessing_context=multiprocessing_context or DEFAULT_MP_CONTEXT,
            worker_init_fn=_worker_init,
        )
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), **extra)

