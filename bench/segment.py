"""Blockwise segmentation throughput and memory.

    python bench/segment.py                 # 256^3, tiny U-Net (width 8, depth 2), CPU
    python bench/segment.py --size 128 --rss-size 512
    python bench/segment.py --width 16 --depth 4 --norm group --rss-size 0 --zyx

Measures on a synthetic store (a 32 x 256 x 256 synthetic electrode block repeated, so big
volumes are cheap to make):

* segment: ``xtrain.infer.segment`` store -> labels.zarr, in-process, voxels/s end to end
  (reads, normalisation, tiles, blending, argmax, compressed writes, markers);
* (a) forward: the same model over the same tiles (same tile grid, batch size and threads)
  with no I/O and no blending: the ceiling;
* (b) MONAI ``sliding_window_inference`` over the in-memory normalised volume as a batch of
  2D slices, same tile, overlap (2*halo/tile) and Gaussian blending;
* (c) the plain whole-slice loop a user would write: read a z-slice from the store, normalise,
  one forward of the whole slice, argmax into an in-memory array (no tiles, no blending, no
  writing);
* with ``--zyx``: ``segment --axes zyx`` too, for the cost of fusion (zyx_vs_z, target <= 3.5);
* peak RSS (VmHWM) of a worker process segmenting ``--size``^3 and ``--rss-size``^3 (the
  latter stopped after ``--rss-blocks`` blocks: every block has the same size, and memory is
  bounded by the block, not by the volume).

Last line: ``RESULT vs_forward=<segment/(a)> vs_monai=<segment/(b)> vs_plain=<segment/(c)>
zyx_vs_z=<time zyx / time z> rss_mb=<max peak RSS>``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench.segment")


def make_store(path: Path, size: int) -> Path:
    """A size^3 uint16 store of one repeated 32 x 256 x 256 synthetic block (cheap at 1024^3)."""
    from xtrain.data.stats import IntensityStats
    from xtrain.data.store import write_store
    from xtrain.data.synth import synthesize

    base_path = path.parent / "base.zarr"
    if not base_path.exists():
        synthesize(base_path, shape=(32, 256, 256), preset="medium", seed=0)
    from xtrain.data.store import open_store

    base = open_store(base_path).image[:]  # (32, 256, 256)
    reps = (1, -(-size // 256), -(-size // 256))
    slab = np.tile(base, reps)[:, :size, :size]
    shape = (size, size, size)
    with write_store(path, shape, overwrite=True) as w:
        img = w.create("image", shape, base.dtype)
        for sl in w.slabs(size):
            img[sl] = slab[: sl.stop - sl.start]
        stats = IntensityStats(base.dtype)
        stats.update(base)
        w.info.stats = stats.to_dict()
    return path


def make_model(path: Path, width: int, depth: int, norm: str = "batch") -> Path:
    from xtrain.models import create_model, model_kwargs
    from xtrain.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    kw = model_kwargs("unet", in_channels=1, num_classes=3, width=width, depth=depth, norm=norm)
    model = create_model("unet", **kw)
    save_checkpoint({"model_name": "unet", "model_kwargs": kw, "model_state": model.state_dict(), "stats": {},
                     "classes": ["pore", "ysz", "ni"], "config": {}}, path)
    return path


def bench_forward(model_path: Path, size: int, tile: int, halo: int) -> float:
    """(a): the model alone over the segment's tiles, batches and threads; voxels/s."""
    from xtrain.infer.blocks import plan_tiles
    from xtrain.infer.predict import Predictor
    from xtrain.models.checkpoint import model_from_checkpoint
    from xtrain.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model_path)
    p = Predictor(model_from_checkpoint(ckpt, model_path)[0], 1, 3, tile=tile, halo=halo)
    t, starts = plan_tiles(size, tile, halo)
    n_tiles = len(starts) ** 2 * size
    batch = p.batch_for(t, t)
    x = np.random.default_rng(0).random((batch, 1, t, t), dtype=np.float32)
    p.forward(x)  # warm-up
    start = time.perf_counter()
    for _ in range(-(-n_tiles // batch)):
        p.forward(x)
    return size**3 / (time.perf_counter() - start)


def bench_monai(store: Path, model_path: Path, tile: int, halo: int) -> float | None:
    """(b): MONAI sliding_window_inference, same tile/overlap/Gaussian, volume in memory; voxels/s."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        log.warning("monai is not installed (pip install monai): skipping (b)")
        return None
    from xtrain.data.normalise import normalize
    from xtrain.data.store import open_store
    from xtrain.models.checkpoint import model_from_checkpoint
    from xtrain.models.checkpoint import load_checkpoint

    s = open_store(store)
    vol = torch.from_numpy(normalize(s.image[:], s.info.stats))[:, None]  # (Z, 1, Y, X): z-slices as a batch
    model = model_from_checkpoint(load_checkpoint(model_path), model_path)[0].eval()
    t = min(tile, vol.shape[-1])
    batch = int(np.clip((1 << 18) // (t * t), 1, 16))
    start = time.perf_counter()
    with torch.inference_mode():
        for z0 in range(0, vol.shape[0], 64):  # 64 slices at a time: MONAI holds the output in memory
            out = sliding_window_inference(vol[z0:z0 + 64], (t, t), batch, model, overlap=2 * halo / tile,
                                           mode="gaussian")
            torch.softmax(out, dim=1).argmax(1).to(torch.uint8)
    return vol.numel() / (time.perf_counter() - start)


def bench_plain(store: Path, model_path: Path) -> float:
    """(c): the plain whole-slice loop, reading included; voxels/s."""
    from xtrain.data.normalise import normalize
    from xtrain.data.store import open_store
    from xtrain.models.checkpoint import model_from_checkpoint
    from xtrain.models.checkpoint import load_checkpoint

    model = model_from_checkpoint(load_checkpoint(model_path), model_path)[0].eval()
    start = time.perf_counter()
    s = open_store(store)
    out = np.empty(s.shape, np.uint8)
    with torch.inference_mode():
        for z in range(s.shape[0]):
            x = torch.from_numpy(normalize(np.asarray(s.image[z]), s.info.stats))[None, None]  # (1, 1, Y, X)
            out[z] = torch.softmax(model(x), dim=1).argmax(1)[0].to(torch.uint8).numpy()
    return out.size / (time.perf_counter() - start)


def child(args: argparse.Namespace) -> None:
    """Run segment in this process and print its voxels/s and peak RSS (VmHWM)."""
    from xtrain.infer import segment
    from xtrain.malloc import keep_freed_memory

    keep_freed_memory()  # what `xtrain segment` (the CLI, the edge) does before an in-process run

    class Stop(Exception):
        pass

    done = []

    def hook(block):
        done.append(block)
        if args.max_blocks and len(done) >= args.max_blocks:
            raise Stop

    start = time.perf_counter()
    try:
        extra = {"block": tuple(int(v) for v in args.block.split(","))} if args.block else {}
        extra.update(axes=args.axes)
        segment(args.model, args.store, args.out, tile=args.tile, halo=args.halo, overwrite=True, on_block=hook,
                **extra)
    except Stop:
        pass
    dt = time.perf_counter() - start
    voxels = sum(b.voxels for b in done)
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(f"CHILD vox_s={voxels / dt:.1f} rss_kb={int(hwm.split()[1])} blocks={len(done)}", flush=True)


def run_child(store: Path, model: Path, out: Path, args: argparse.Namespace, max_blocks: int = 0) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "--store", str(store), "--model", str(model), "--out", str(out),
           "--tile", str(args.tile), "--halo", str(args.halo), "--max-blocks", str(max_blocks)]
    cmd += (["--block", args.block] if args.block else []) + ["--axes", args.axes]
    r = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in r.stdout.splitlines() if x.startswith("CHILD")), None)
    if r.returncode or line is None:
        raise RuntimeError(f"child failed: {r.stderr[-2000:]}")
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rss-size", type=int, default=1024, help="big volume for the RSS check (0: skip)")
    ap.add_argument("--rss-blocks", type=int, default=3, help="blocks of the big volume to run")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--halo", type=int, default=16)
    ap.add_argument("--axes", default="z", help="--axes of xtrain segment: z or zyx")
    ap.add_argument("--zyx", action="store_true", help="also time --axes zyx (zyx_vs_z)")
    ap.add_argument("--block", default="", help="Z,Y,X block of xtrain segment (default: its own)")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--norm", default="batch", help="the U-Net's norm: batch (folded into the convolutions for "
                    "prediction) or group (configs/soc_unet_cpu.yaml)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--max-blocks", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.child:
        logging.getLogger().setLevel(logging.WARNING)
        return child(args)

    # `xtrain segment` and its Ray workers call keep_freed_memory(); give (a) and (b) the same allocator
    from xtrain.malloc import keep_freed_memory

    keep_freed_memory()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_segment_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        model = make_model(root / "model.pt", args.width, args.depth, args.norm)
        store = make_store(root / f"vol{args.size}.zarr", args.size)
        log.info("torch %s threads, %s^3 volume, unet width %d depth %d, tile %d halo %d", torch.get_num_threads(),
                 args.size, args.width, args.depth, args.tile, args.halo)
        seg, fwd, mon, rss, plain, zyx = [], [], [], [], [], []
        for r in range(args.rounds):  # interleaved, so machine load drifts hit all alike
            c = run_child(store, model, root / "seg.zarr", args)
            seg.append(c["vox_s"])
            rss.append(c["rss_kb"] / 1024)
            plain.append(bench_plain(store, model))
            if args.zyx:
                c = run_child(store, model, root / "zyx.zarr", argparse.Namespace(**{**vars(args), "axes": "zyx"}))
                zyx.append(c["vox_s"])
                rss.append(c["rss_kb"] / 1024)
                log.info("round %d: zyx %.2f Mvox/s", r + 1, zyx[-1] / 1e6)
            log.info("round %d: plain whole-slice loop %.2f Mvox/s", r + 1, plain[-1] / 1e6)
            fwd.append(bench_forward(model, args.size, args.tile, args.halo))
            m = bench_monai(store, model, args.tile, args.halo)
            if m is not None:
                mon.append(m)
            log.info("round %d: segment %.2f Mvox/s (peak RSS %.0f MB), forward %.2f Mvox/s, monai %s", r + 1,
                     seg[-1] / 1e6, rss[-1], fwd[-1] / 1e6, f"{mon[-1] / 1e6:.2f} Mvox/s" if mon else "n/a")
        big_rss = None
        if args.rss_size:
            big = make_store(root / f"vol{args.rss_size}.zarr", args.rss_size)
            c = run_child(big, model, root / "big.zarr", args, max_blocks=args.rss_blocks)
            big_rss = c["rss_kb"] / 1024
            log.info("%d^3: peak RSS %.0f MB over %d blocks (%.2f Mvox/s)", args.rss_size, big_rss, int(c["blocks"]),
                     c["vox_s"] / 1e6)
            shutil.rmtree(big, ignore_errors=True)
        vs_fwd = max(seg) / max(fwd)
        vs_monai = f"{max(seg) / max(mon):.3f}" if mon else "skipped"
        rss_mb = max(rss + ([big_rss] if big_rss else []))
        zyx_vs_z = f"{max(seg) / max(zyx):.3f}" if zyx else "skipped"
        print(f"RESULT vs_forward={vs_fwd:.3f} vs_monai={vs_monai} vs_plain={max(seg) / max(plain):.3f} "
              f"zyx_vs_z={zyx_vs_z} rss_mb={rss_mb:.0f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
