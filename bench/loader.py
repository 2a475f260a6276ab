"""Lazy Zarr patch sampler vs an in-memory copy: patches/s, training samples/s, memory.

    .venv/bin/python bench/loader.py                   # builds /tmp/bench_loader.zarr once
    .venv/bin/python bench/loader.py --store /tmp/soc.zarr

(1) patches/s of ``RandomPatches`` alone: ``dataset[i]`` in a loop, cold (first pass: the
    cache reads the shards) and warm (second pass), and through ``patch_loader`` with 1 and
    2 workers (each worker has its own, cold, cache), against the same sampler over numpy
    arrays.
(2) training samples/s of a small U-Net (width 16, depth 2, batch 16, patch 64) fed by the
    lazy sampler through ``patch_loader`` with 0/1 workers and 1/2 torch threads, against
    the same loop fed from memory (in-process numpy sampling, 1/2 threads).  Configurations
    are interleaved over ``--rounds`` rounds and the best round is kept, because this machine
    is shared and other jobs come and go (single runs vary by +-8 %).  Every configuration
    calls ``keep_freed_memory()`` as xtrain's training worker does (xtrain/malloc.py); the 1-thread
    pair also runs with glibc's default thresholds ("glibc"), which page-fault the
    activations in again every step.

Each training configuration runs in a fresh interpreter, so memory left behind by an
earlier one (glibc keeps freed zarr chunk buffers) cannot leak into the next.  Memory is the
maximum over the steps of the sum over the interpreter and its DataLoader workers, minus the
interpreter's own value after imports (torch, xtrain) and before any data: both the VmRSS
sum and the PSS sum are printed.  Forked workers share the parent's pages and VmRSS counts
shared pages once per process (a fresh worker already "has" the ~200 MB of torch it shares),
so the RESULT line reports the PSS sum, which splits shared pages between processes and
adds up to what the machine actually spends.  Both numbers include the training itself
(activations, allocator caches: ~200 MB at batch 16), identical for both feeds.

The last line is ``RESULT lazy_vs_memory=... patches_per_s=... rss_mb=...`` where
lazy_vs_memory = best lazy training samples/s / best memory training samples/s, measured
after ``--warmup`` steps (training runs for many epochs: the steady state, with the
decoded-chunk cache warm, is what counts; ``--warmup 0`` shows the cold start, whose cost is
one read per shard: ~1 s for this store), and rss_mb is the loader's own memory: the lazy
feed's PSS minus the training's (the in-memory feed's PSS less its copy of the volume).
``lazy_vs_memory_glibc_default`` is the 1-thread ratio without ``keep_freed_memory()``.

Measured on the 2-core dev machine (2026-11-26): lazy_vs_memory 0.998 (1 thread: 0.999),
loader memory 123 MB, sampler alone 358 patches/s cold and 6483 warm (memory: 6875); with
glibc's default thresholds the 1-thread ratio is 0.945.  An earlier run with 2 rounds gave
0.951 and 244 MB.  Before the cache read whole shards and before ``keep_freed_memory()``
the same measurement gave 0.74-0.87.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xtrain.config import DataConfig  # noqa: E402
from xtrain.data.sampler import RandomPatches, patch_loader, split_regions  # noqa: E402
from xtrain.data.store import open_store  # noqa: E402
from xtrain.malloc import keep_freed_memory  # noqa: E402

SHAPE = (256, 501, 501)


# --------------------------------------------------------------------------- data


def build_store(path: Path, shape=SHAPE, seed: int = 0) -> Path:
    """make_store-like (image = 1000 * label + 1000 + N(0, 50)) with blobby labels, slab by slab."""
    from scipy import ndimage

    from xtrain.data.stats import IntensityStats
    from xtrain.data.store import write_store

    rng = np.random.default_rng(seed)
    f = 8  # blob size in voxels: labels are a thresholded, upsampled coarse random field
    field = rng.normal(size=(shape[0] // f + 2, shape[1] // f + 2, shape[2] // f + 2)).astype(np.float32)
    cuts = np.quantile(field, [1 / 3, 2 / 3])
    with write_store(path, shape, overwrite=True) as w:
        img, lab = w.create("image", shape, np.uint16), w.create("labels", shape, np.uint8)
        stats = IntensityStats(np.uint16)
        for sl in w.slabs(shape[0]):
            a = sl.start // f
            fine = ndimage.zoom(field[a : a + (sl.stop - sl.start) // f + 2], f, order=1)
            fine = fine[sl.start - a * f : sl.stop - a * f, : shape[1], : shape[2]]
            labels = np.digitize(fine, cuts).astype(np.uint8)
            image = (labels * 1000.0 + 1000.0 + rng.normal(0, 50, size=labels.shape)).astype(np.uint16)
            img[sl], lab[sl] = image, labels
            stats.update(image)
        w.info.stats = stats.to_dict()
        w.info.source = {"kind": "bench", "seed": seed}
    return path


class InMemory(RandomPatches):
    """The same sampler over numpy copies of the volume (the baseline)."""

    def __init__(self, path, cfg, region, image: np.ndarray, labels: np.ndarray, **kwargs):
        self._memory = (image, labels)
        super().__init__(path, cfg, region, **kwargs)

    def sources(self):
        return self._memory


# --------------------------------------------------------------------------- memory


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _family(pid: int) -> list[int]:
    """This process and its descendants (DataLoader workers, their helpers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def memory_mb() -> tuple[float, float]:
    """(sum of VmRSS, sum of PSS) of this process and its children, in MB."""
    fam = _family(os.getpid())
    return sum(_status_kb(p, "VmRSS") for p in fam) / 1024, sum(_pss_kb(p) for p in fam) / 1024


# --------------------------------------------------------------------------- model


def small_unet(in_channels: int) -> nn.Module:
    try:
        from xtrain.models import create_model

        return create_model("unet", in_channels=in_channels, num_classes=3, width=16, depth=2)
    except (ImportError, AttributeError, TypeError, ValueError):
        return _InlineUNet(in_channels)


class _InlineUNet(nn.Module):
    """2-level U-Net, width 16 (used when xtrain.models is not available)."""

    def __init__(self, c: int, n: int = 3, w: int = 16):
        super().__init__()

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.e1, self.e2, self.mid = block(c, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.up2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), block(4 * w, 2 * w)
        self.up1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), block(2 * w, w)
        self.out = nn.Conv2d(w, n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, P, P) -> (B, n, P, P)
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        mid = self.mid(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([self.up2(mid), e2], 1))
        return self.out(self.d1(torch.cat([self.up1(d2), e1], 1)))


# --------------------------------------------------------------------------- measurements


def sampler_rate(ds, n: int) -> float:
    ds[0]
    t = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - t)


def loader_rate(ds, batch: int, workers: int, batches: int) -> float:
    loader = patch_loader(ds, batch, workers)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t)
    del it, loader
    gc.collect()
    return rate


def train_rate(ds, batch: int, workers: int, threads: int, steps: int, warmup: int = 2) -> tuple[float, float, float]:
    """(samples/s, max RSS sum MB, max PSS sum MB) of ``steps`` training steps after ``warmup``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = small_unet(ds.cfg.slices)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = patch_loader(ds, batch, workers)
    it = iter(loader)
    rss = pss = 0.0
    t = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t = time.perf_counter()
        image, label = next(it)  # (B, C, P, P), (B, P, P)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(image), label).backward()
        opt.step()
        r, p = memory_mb()
        rss, pss = max(rss, r), max(pss, p)
    rate = steps * batch / (time.perf_counter() - t)
    del it, loader
    gc.collect()
    return rate, rss, pss


def run_one(path: Path, args, kind: str, workers: int, threads: int, malloc: str, rnd: int) -> dict:
    """One training configuration in a fresh interpreter (clean RSS), result as a dict."""
    cmd = [sys.executable, __file__, "--store", str(path), "--one", f"{kind},{workers},{threads},{rnd},{malloc}",
           "--batch", str(args.batch), "--patch", str(args.patch), "--slices", str(args.slices),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--cache-mb", str(args.cache_mb)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def one(path: Path, args) -> None:
    """Child mode (--one KIND,WORKERS,THREADS,ROUND,MALLOC): train and print one JSON line."""
    kind, w, t, rnd, malloc = args.one.split(",")
    base_rss = _status_kb(os.getpid(), "VmRSS") / 1024  # interpreter + torch, no data yet
    base_pss = _pss_kb(os.getpid()) / 1024
    cfg, region = data_config(path, args)
    if kind == "memory":
        store = open_store(path)
        ds = InMemory(path, cfg, region, np.asarray(store.image[:]), np.asarray(store.labels[:]), seed=0)
    else:
        ds = RandomPatches(path, cfg, region, seed=0)
    ds.set_epoch(int(rnd))
    if malloc == "kept":
        # what xtrain's training worker does (before fit); after the in-memory copy is made, so that the buffers of that
        # one-off whole-volume read are not kept in the baseline's heap.  "glibc": the defaults
        keep_freed_memory()
    rate, rss, pss = train_rate(ds, args.batch, int(w), int(t), args.steps, args.warmup)
    print(json.dumps({"rate": rate, "rss": rss - base_rss, "pss": pss - base_pss}))


def data_config(path: Path, args) -> tuple[DataConfig, tuple[int, int]]:
    cfg = DataConfig(store=str(path), patch=args.patch, slices=args.slices, cache_mb=args.cache_mb,
                     samples_per_epoch=args.batch * (args.steps + args.warmup + 8) * 4)
    return cfg, split_regions(open_store(path).shape[0], cfg).train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="store to read (default: build /tmp/bench_loader.zarr)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--slices", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per configuration")
    ap.add_argument("--warmup", type=int, default=30,
                    help="untimed training steps first: training runs for many epochs, so the steady state "
                         "(decoded-chunk cache warm) is what counts; 0 measures a cold start")
    ap.add_argument("--cache-mb", type=int, default=DataConfig.cache_mb, help="data.cache_mb of the lazy sampler")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (best kept)")
    ap.add_argument("--samples", type=int, default=300, help="patches for the sampler-alone rates")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = args.store or Path("/tmp/bench_loader.zarr")
    if args.one:
        return one(path, args)

    if args.store is None and not path.exists():
        print(f"building {path} {SHAPE} ...", flush=True)
        build_store(path)
    store = open_store(path)
    cfg, region = data_config(path, args)
    lazy = RandomPatches(path, cfg, region, seed=0)
    print(f"store {path} shape {store.shape} {store.image.dtype} chunks {store.image.chunks} "
          f"shards {store.image.shards}; train z={region}; cores {os.cpu_count()}")

    # (1) the sampler alone
    rows = [("lazy dataset[i]", sampler_rate(lazy, args.samples)),  # cold: the first pass reads the shards
            ("lazy dataset[i], warm", sampler_rate(lazy, args.samples))]
    for w in (1, 2):
        rows.append((f"lazy patch_loader {w} worker{'s' * (w > 1)}", loader_rate(lazy, args.batch, w, 12)))
    mem = InMemory(path, cfg, region, np.asarray(store.image[:]), np.asarray(store.labels[:]), seed=0)
    rows.append(("memory dataset[i]", sampler_rate(mem, args.samples)))
    del mem
    print("\n(1) sampler alone               patches/s")
    for name, rate in rows:
        print(f"    {name:29s} {rate:9.0f}")
    sampler = dict(rows)

    # (2) training: each configuration in its own interpreter, rounds interleaved
    # 2 threads only with 0/1 workers: with 2 cores, 2 threads + 2 workers is oversubscribed by construction
    # "kept": keep_freed_memory() as xtrain's training worker calls it; "glibc": glibc's default thresholds,
    # shown for the 1-thread in-process pair (they page-fault the activations in every step)
    configs = [("memory", 0, 1, "kept"), ("memory", 0, 2, "kept"), ("lazy", 0, 1, "kept"), ("lazy", 1, 1, "kept"),
               ("lazy", 0, 2, "kept"), ("lazy", 1, 2, "kept"),
               ("memory", 0, 1, "glibc"), ("lazy", 0, 1, "glibc")]
    best: dict[tuple, dict] = {}
    print()
    for rnd in range(args.rounds):
        for key in configs:
            res = run_one(path, args, *key, rnd)
            if key not in best or res["rate"] > best[key]["rate"]:
                best[key] = res
            print(f"    round {rnd} {key[0]:6s} workers={key[1]} threads={key[2]} malloc={key[3]}: "
                  f"{res['rate']:6.1f} samples/s",
                  flush=True)

    print(f"\n(2) training, U-Net w16 d2, batch {args.batch}, patch {args.patch}, {args.steps} steps after "
          f"{args.warmup} warm-up steps, cache_mb {args.cache_mb}, "
          f"best of {args.rounds}; MB above each interpreter's baseline")
    print(f"    {'feed':8s} {'workers':>7s} {'threads':>7s} {'malloc':>6s} {'samples/s':>10s} {'RSS sum':>8s} "
          f"{'PSS sum':>8s}")
    for (kind, w, t, m), r in best.items():
        print(f"    {kind:8s} {w:7d} {t:7d} {m:>6s} {r['rate']:10.1f} {r['rss']:8.0f} {r['pss']:8.0f}")
    mem_key = max((k for k in best if k[0] == "memory" and k[3] == "kept"), key=lambda k: best[k]["rate"])
    lazy_key = max((k for k in best if k[0] == "lazy" and k[3] == "kept"), key=lambda k: best[k]["rate"])
    ratio = best[lazy_key]["rate"] / best[mem_key]["rate"]
    glibc = best[("lazy", 0, 1, "glibc")]["rate"] / best[("memory", 0, 1, "glibc")]["rate"]
    kept_gain = best[("memory", 0, 1, "kept")]["rate"] / best[("memory", 0, 1, "glibc")]["rate"]
    w = lazy_key[1]
    patches = sampler.get(f"lazy patch_loader {w} worker{'s' * (w > 1)}", sampler["lazy dataset[i], warm"])
    print(f"\nbest lazy: workers={lazy_key[1]} threads={lazy_key[2]}; best memory: threads={mem_key[2]}")
    print(f"glibc's default malloc thresholds, 1 thread in-process: lazy/memory {glibc:.3f}; keep_freed_memory() "
          f"makes memory-fed training x{kept_gain:.2f} faster")
    # The training itself (activations, allocator caches) is in every figure; the in-memory
    # feed's figure minus its numpy copy of the volume estimates it, and what the lazy feed
    # adds on top is the loader's own memory (chunk cache, DataLoader workers).
    volume_mb = (store.image.nbytes + store.labels.nbytes) / 2**20
    training_mb = best[mem_key]["pss"] - volume_mb
    loader_mb = best[lazy_key]["pss"] - training_mb
    print(f"memory: lazy feed {best[lazy_key]['pss']:.0f} MB PSS, in-memory feed {best[mem_key]['pss']:.0f} MB of which "
          f"{volume_mb:.0f} MB is the volume: training ~{training_mb:.0f} MB, loader ~{loader_mb:.0f} MB")
    print(f"RESULT lazy_vs_memory={ratio:.3f} patches_per_s={patches:.0f} rss_mb={loader_mb:.0f} "
          f"lazy_vs_memory_glibc_default={glibc:.3f}")


if __name__ == "__main__":
    main()
