"""What the damage checks cost: crc32c per chunk, the reader that names a damaged chunk, the open-time check.

    .venv/bin/python bench/checksum.py [--data ../shared/data/soc_pxct] [--slices N] [--seconds 2] [--rounds 5]

Loads the image volume once (the real scan's images/, or a synthetic one when --data is absent)
and writes it twice with the store's default layout (1 x 256 x 256 chunks in 32 x 512 x 512
shards, blosc-zstd): once through ``write_store`` (what ``xtrain ingest`` writes: a crc32c after
every inner chunk, every chunk written) and once as a plain zarr array with the same chunks,
shards and compressor but no crc32c (what xtrain wrote before).  Then, in interleaved rounds
(best round kept: the machine is shared), per CPU second of the reading thread(s):

  patch     random 64 x 64 patches ``arr[z, y:y+64, x:x+64]`` straight from the zarr array
            (one inner chunk decoded per read: where zarr's fixed cost per call dominates)
  shard     whole 32 x 512 x 512 shards ``arr[z0:z0+32]`` (what the training sampler's chunk
            cache reads on a miss, xtrain.data.chunkcache: decoding dominates, so crc32c's
            share is largest here)
  reader    random 64 x 64 patches through ``Volume.source`` (``ZarrReader``, which turns a
            failed decode into an error naming the chunk) against the zarr array itself, the
            same (1, 64, 64) slices
  sampler   random 64 x 64 patches the way the training sampler reads them: through
            ``Volume.source`` and the chunk cache (``CachedArray`` with the default 256 MB budget's
            image share, read unit from ``read_unit``), once the cache is warm (one read per
            shard, what the first patches of an epoch do; a miss costs one ``shard`` read above),
            crc32c store through the reader against the plain array

and once, outside the rounds (it is a one-off cost per open, median of ``--opens`` opens):

  check     ``check_chunks`` of the image array at open (one directory walk + the index of
            each shard), against ``open_store`` without it (zarr's own open of the group)

The last line is machine-readable:

    RESULT crc_patch=... crc_shard=... reader_patch=... crc_sampler=... check_ms=... open_ms=... shards=...

crc_patch / crc_shard / crc_sampler: reads per CPU second with crc32c divided by without (1.0 =
free); reader_patch: through ``ZarrReader`` divided by the zarr array; check_ms: the open-time check,
open_ms: the rest of ``open_store`` (both ms, median), shards: how many shard files the check read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xtrain.data import store as store_mod  # noqa: E402
from xtrain.data.chunkcache import CachedArray, read_unit  # noqa: E402
from xtrain.data.chunks import check_chunks  # noqa: E402
from xtrain.data.layout import compressor, default_layout  # noqa: E402
from xtrain.data.store import open_store, write_store  # noqa: E402
from xtrain.data.volumes import open_volume  # noqa: E402
from xtrain.data.volumes.tiff import open_tiff  # noqa: E402


def load_volume(data: Path, max_slices: int | None) -> tuple[np.ndarray, str]:
    images = data / "images"
    if images.is_dir():
        stack = open_tiff(images)
        z = min(stack.shape[0], max_slices or stack.shape[0])
        vol = stack.read(stack.planes(0, z))
        return vol, f"real volume {images} {vol.shape} {vol.dtype}"
    rng = np.random.default_rng(0)
    shape = (max_slices or 128, 501, 501)
    vol = (20000 + rng.normal(0, 1500, size=shape)).clip(0, 65535).astype(np.uint16)
    return vol, f"synthetic volume {vol.shape} {vol.dtype} ({data} not found)"


def write_both(vol: np.ndarray, tmp: Path) -> tuple[Path, Path]:
    """(xtrain store with crc32c, plain array without) of ``vol``, same chunks, shards and compressor."""
    layout = default_layout(vol.shape)
    with write_store(tmp / "crc.zarr", vol.shape, layout) as w:
        arr = w.create_image(vol.shape, vol.dtype)
        for sl in w.slabs(vol.shape[0]):
            arr[sl] = vol[sl]
        w.info.source = {"kind": "bench"}
    plain = zarr.create_array(str(tmp / "plain.zarr"), shape=vol.shape, dtype=vol.dtype, chunks=layout.chunks,
                              shards=layout.shards, compressors=compressor(vol.dtype), fill_value=0,
                              config={"write_empty_chunks": True})
    plain[:] = vol
    return tmp / "crc.zarr", tmp / "plain.zarr"


def cpu_rate(read, n_reads: int, seconds: float) -> float:
    """Reads per CPU second (process time: hardly moved by other jobs on the machine)."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < n_reads or time.perf_counter() - t0 < seconds:
        read(n)
        n += 1
    return n / max(time.process_time() - c0, 1e-9)


def patch_reader(arr, shape, seed: int):
    rng = np.random.default_rng(seed)
    zs, ys, xs = (rng.integers(0, max(1, n - e + 1), 100_000) for n, e in zip(shape, (1, 64, 64)))
    return lambda i: arr[int(zs[i % zs.size]), int(ys[i % ys.size]):int(ys[i % ys.size]) + 64,
                         int(xs[i % xs.size]):int(xs[i % xs.size]) + 64]


def reader_patches(source, shape, seed: int):
    """The same patches through a (Z, Y, X) reader (``Volume.source``), which takes slices only."""
    rng = np.random.default_rng(seed)
    zs, ys, xs = (rng.integers(0, max(1, n - e + 1), 100_000) for n, e in zip(shape, (1, 64, 64)))
    return lambda i: source[int(zs[i % zs.size]):int(zs[i % zs.size]) + 1, int(ys[i % ys.size]):int(ys[i % ys.size]) + 64,
                            int(xs[i % xs.size]):int(xs[i % xs.size]) + 64]


def sampler_reader(arr, shape, seed: int):
    """Patches through a fresh chunk cache of the sampler's default size (image: 2/3 of 256 MB)."""
    budget = (256 << 20) * 2 // 3
    cached = CachedArray(arr, budget, read_unit(arr, (0, shape[0]), budget))
    cached[0:shape[0], 0:shape[1], 0:shape[2]]  # warm: every read unit once
    return reader_patches(cached, shape, seed)


def shard_reader(arr, depth: int):
    n = -(-arr.shape[0] // depth)
    return lambda i: arr[(i % n) * depth:(i % n + 1) * depth]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "soc_pxct")
    parser.add_argument("--slices", type=int, default=None, help="use only the first N slices")
    parser.add_argument("--seconds", type=float, default=2.0, help="read time per case and round (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, best kept (default 5)")
    parser.add_argument("--opens", type=int, default=15, help="opens timed for the open-time check (default 15)")
    args = parser.parse_args(argv)

    vol, what = load_volume(args.data, args.slices)
    print(f"{what}: {vol.nbytes / 1e6:.1f} MB raw")
    with tempfile.TemporaryDirectory() as tmp:
        crc_path, plain_path = write_both(vol, Path(tmp))
        crc, plain = open_store(crc_path).image, zarr.open_array(str(plain_path), mode="r")
        assert np.array_equal(crc[:], vol) and np.array_equal(plain[:], vol)
        assert [c["name"] for c in crc.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]][-1] == "crc32c"
        source = open_volume(crc_path).source
        depth = crc.shards[0]
        best: dict[str, float] = {}
        for k in range(args.rounds):
            cases = {
                "patch crc": patch_reader(crc, vol.shape, k), "patch plain": patch_reader(plain, vol.shape, k),
                "shard crc": shard_reader(crc, depth), "shard plain": shard_reader(plain, depth),
                "reader": reader_patches(source, vol.shape, k), "array": reader_patches(crc, vol.shape, k),
                "sampler crc": sampler_reader(source, vol.shape, k), "sampler plain": sampler_reader(plain, vol.shape, k),
            }
            for name, read in cases.items():
                n_reads = 4 if name.startswith("shard") else 50
                best[name] = max(best.get(name, 0.0), cpu_rate(read, n_reads, args.seconds))
        check_s, open_s = [], []
        for _ in range(args.opens):
            t0 = time.perf_counter()
            group = zarr.open_group(str(crc_path), mode="r")
            arrays = store_mod.ome.read_arrays(group)
            t1 = time.perf_counter()
            check_chunks(arrays.image, "bench", complete=True)
            check_s.append(time.perf_counter() - t1)
            open_s.append(t1 - t0)
        shards = -(-vol.shape[0] // depth) * -(-vol.shape[1] // crc.shards[1]) * -(-vol.shape[2] // crc.shards[2])

    print(f"{'case':<14} {'reads/cpu-s':>11}")
    for name, value in best.items():
        print(f"{name:<14} {value:11.1f}")
    crc_patch, crc_shard = best["patch crc"] / best["patch plain"], best["shard crc"] / best["shard plain"]
    reader = best["reader"] / best["array"]
    crc_sampler = best["sampler crc"] / best["sampler plain"]
    check_ms, open_ms = statistics.median(check_s) * 1e3, statistics.median(open_s) * 1e3
    print(f"open: zarr group + arrays {open_ms:.1f} ms, check_chunks {check_ms:.2f} ms ({shards} shards)")
    print(f"RESULT crc_patch={crc_patch:.3f} crc_shard={crc_shard:.3f} reader_patch={reader:.3f} "
          f"crc_sampler={crc_sampler:.3f} check_ms={check_ms:.2f} open_ms={open_ms:.1f} shards={shards}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
