"""The fastest CPU inference engine: every engine of ``xtrain.infer.engines`` side by side.

    python bench/engines.py                                    # random-weight U-Nets, synthetic tiles
    python bench/engines.py --model runs/soc/model.pt --data soc.zarr
    python bench/engines.py --size 64 --rounds 1 --planes 3    # dry run (seconds)

Times the same U-Net (width 16, depth 4: the recipe's; BatchNorm and GroupNorm variants, random
weights: timing does not depend on them) on the same tiles, all engines in one run, in
interleaved rounds (the engine order rotates every round), and reports the median.  The tiles are
what ``segment`` feeds the model on the real 501 x 501 volume: ``--tile`` 501, ``--batch`` 1
(``Predictor.batch_for``), C = 1 slice, cut from ``--data`` when given (normalised with the
volume's own statistics), else standard-normal noise.

Also measured, so the engines can be put against the machine's compute limit:

* this CPU's matmul rate: ``torch.matmul`` of two large square matrices (fp32 and bf16) on
  ``--threads`` threads, GFLOP/s = 2 n^3 / t;
* the model's FLOPs per voxel (``torch.utils.flop_counter.FlopCounterMode``, a multiply-add = 2);
* ``<engine>_of_limit`` = Mvox/s * FLOP/voxel / matmul rate (bf16 rate for bf16 engines); the
  matmul is timed before and after the engines and the higher rate kept.  Above 1 means fewer
  FLOPs than direct convolution (oneDNN's Winograd 3x3 kernels), not a faster processor.

Agreement (the share of voxel labels identical to eager fp32): with ``--model`` and ``--data``, the
trained model segments ``--planes`` z-planes of the volume through ``Predictor`` (segment's own
path: normalisation, 501^2 tile, blending) with each engine; without them, the random-weight
models' labels on the timing tiles (a weaker check: random networks have near-ties).

Last line: ``RESULT <norm>_<engine>_vs_eager=<Mvox/s ratio> ... agree_<engine>=<fraction> ...
<engine>_of_limit=... fastest_<norm>=<engine> matmul_fp32_gflops=... matmul_bf16_gflops=...``,
``fastest_<norm>``: the engine that would segment ``--volume-planes`` planes soonest, its setup
(ONNX export, compilation, first call) included, among those keeping >= 99.99 % of eager's labels:
the rule ``segment --engine auto`` follows (``xtrain.infer.engines.AUTO``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xtrain.infer.engines import AGREEMENT, ENGINES, available, create_engine  # noqa: E402
from xtrain.models import create_model  # noqa: E402

log = logging.getLogger("bench.engines")
BF16_ENGINES = ("bf16", "openvino-bf16")


def matmul_gflops(dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    """GFLOP/s of ``torch.matmul`` of two (n, n) matrices of ``dtype`` on torch's threads (best of runs)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up: oneDNN/BLAS picks its kernel
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_voxel(model: torch.nn.Module, channels: int, tile: int) -> float:
    """FLOPs of one forward per output voxel (``FlopCounterMode``; convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(torch.zeros(1, channels, tile, tile))
    return counter.get_total_flops() / tile**2


def timing_tiles(data: str | None, n: int, batch: int, channels: int, tile: int) -> list[np.ndarray]:
    """``n`` batches (batch, C, tile, tile) float32: z-planes of ``data`` normalised by its own
    statistics (spread through the volume), else noise."""
    if data is None:
        rng = np.random.default_rng(0)
        return [rng.standard_normal((batch, channels, tile, tile), dtype=np.float32) for _ in range(n)]
    from xtrain.data.normalise import normalised_volume
    from xtrain.data.volumes import open_volume

    vol = normalised_volume(open_volume(data))
    nz, ny, nx = vol.shape
    zs = np.linspace(channels, nz - channels - 1, n * batch).astype(int)
    t = min(tile, ny, nx)
    h = channels // 2
    planes = [vol.read(((z - h, z + h + 1), (0, t), (0, t))) for z in zs]  # (C, t, t)
    return [np.stack(planes[i * batch:(i + 1) * batch]).astype(np.float32) for i in range(n)]


def time_engines(engines: dict, tiles: list[np.ndarray], rounds: int) -> dict[str, float]:
    """Median seconds per pass over ``tiles`` of each engine, in interleaved rounds (order rotates)."""
    names = list(engines)
    times: dict[str, list[float]] = {e: [] for e in names}
    for r in range(rounds):
        for e in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            for x in tiles:
                engines[e](x)
            times[e].append(time.perf_counter() - t)
    return {e: statistics.median(v) for e, v in times.items()}


def build_engines(model: torch.nn.Module, names: list[str], channels: int, warm: np.ndarray) -> tuple[dict, dict]:
    """{engine: engine} (each called once on ``warm``: compilation, conversion) and {engine: setup seconds}."""
    engines, setup = {}, {}
    for name in names:
        t = time.perf_counter()
        engines[name] = create_engine(name, model, in_channels=channels)
        engines[name](warm)
        setup[name] = time.perf_counter() - t
        log.info("%s ready in %.1f s", name, setup[name])
    return engines, setup


def agreement_on_volume(model_path: str, data: str, names: list[str], planes: int, tile: int) -> dict[str, float]:
    """Share of voxel labels equal to eager's over ``planes`` z-planes in the middle of ``data``,
    segmented by the trained model through ``Predictor`` (segment's normalisation, tiles, blending)."""
    from xtrain.data.normalise import normalised_volume
    from xtrain.data.volumes import open_volume
    from xtrain.infer.predict import Predictor
    from xtrain.models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(model_path)
    model, info = model_from_checkpoint(ckpt, model_path)
    vol = normalised_volume(open_volume(data), train_stats=ckpt.get("stats"))
    nz, ny, nx = vol.shape
    z0 = max(0, nz // 2 - planes // 2)
    core = ((z0, min(nz, z0 + planes)), (0, ny), (0, nx))
    labels = {}
    for name in ["eager", *[n for n in names if n != "eager"]]:
        predictor = Predictor(model, info.in_channels, info.num_classes, tile=tile, halo=16, engine=name)
        labels[name] = predictor.predict(vol, core).argmax(0)
        log.info("%s: labels of %d planes", name, core[0][1] - core[0][0])
    return {n: float(np.mean(labels[n] == labels["eager"])) for n in names}


def agreement_on_tiles(engines: dict, tiles: list[np.ndarray]) -> dict[str, float]:
    ref = [engines["eager"](x).argmax(1) for x in tiles]
    return {n: float(np.mean([np.mean(e(x).argmax(1) == r) for x, r in zip(tiles, ref)])) for n, e in engines.items()}


def fastest_engine(rates: dict[str, float], setup: dict[str, float], agree: dict[str, float], mvox: float) -> str:
    """The engine that segments ``mvox`` million voxels soonest in one worker, setup (export, compilation,
    first call: seconds) + ``mvox`` / rate (Mvox/s), among those keeping >= ``AGREEMENT`` of eager's labels
    (``agree``: share identical).  A faster engine whose setup does not pay back on that volume loses."""
    keep = [e for e in rates if agree[e] >= AGREEMENT]
    return min(keep, key=lambda e: (setup[e] + mvox / rates[e], e))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="trained model.pt for the agreement on the real volume (with --data)")
    p.add_argument("--data", help="the real volume (store or TIFF folder): timing tiles and agreement")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: all installed)")
    p.add_argument("--norms", default="batch,group", help="U-Net norm variants timed")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--tile", type=int, default=501, help="tile edge (segment: one 501^2 tile per real plane)")
    p.add_argument("--batch", type=int, default=1, help="tiles per forward (segment: 1 for 501^2 tiles)")
    p.add_argument("--batches", type=int, default=4, help="forwards per timed pass")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--planes", type=int, default=24, help="z-planes of --data segmented for the agreement")
    p.add_argument("--matmul", type=int, default=1024, help="matrix edge of the matmul rate")
    p.add_argument("--volume-planes", type=int, default=250,
                   help="planes of --tile^2 the fastest engine is chosen for (the real volume: 250 of 501^2)")
    p.add_argument("--size", type=int, default=None, help="dry run: tile edge SIZE, tiny matmul")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.size:
        args.tile, args.matmul = args.size, 256
    names = [e for e in args.engines.split(",") if e]
    missing = [e for e in names if not available(e)]
    names = ["eager", *[e for e in names if e != "eager" and e not in missing]]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")

    fp32, bf16 = matmul_gflops(torch.float32, args.matmul), matmul_gflops(torch.bfloat16, args.matmul)
    tiles = timing_tiles(args.data, args.batches, args.batch, 1, args.tile)
    voxels = sum(x.shape[0] * x.shape[2] * x.shape[3] for x in tiles)
    result: dict[str, str] = {}
    rates: dict[str, dict[str, float]] = {}
    tile_agree: dict[str, dict[str, float]] = {}
    fpv_of: dict[str, float] = {}
    setups: dict[str, dict[str, float]] = {}
    for norm in args.norms.split(","):
        torch.manual_seed(0)
        model = create_model("unet", in_channels=1, num_classes=3, width=args.width, depth=args.depth, norm=norm)
        if norm == "batch":  # trained-like running statistics, so folding changes the weights
            model.train()
            with torch.no_grad():
                model(torch.from_numpy(tiles[0]))
        model.eval()
        fpv = flops_per_voxel(model, 1, min(args.tile, 256))
        engines, setup = build_engines(model, names, 1, tiles[0])
        setups[norm] = setup
        seconds = time_engines(engines, tiles, args.rounds)
        rates[norm] = {e: voxels / s / 1e6 for e, s in seconds.items()}
        tile_agree[norm] = agreement_on_tiles(engines, tiles)
        print(f"\n{norm}Norm U-Net width {args.width} depth {args.depth}: {fpv / 1e3:.1f} kFLOP/voxel, "
              f"{len(tiles)} x {tiles[0].shape} per pass, median of {args.rounds} rounds")
        print(f"{'engine':<14}{'Mvox/s':>8}{'vs eager':>10}{'GFLOP/s':>9}{'setup s':>9}{'labels = eager (tiles)':>24}")
        for e in names:
            ratio = rates[norm][e] / rates[norm]["eager"]
            print(f"{e:<14}{rates[norm][e]:>8.3f}{ratio:>10.3f}{rates[norm][e] * 1e6 * fpv / 1e9:>9.1f}"
                  f"{setup[e]:>9.1f}{tile_agree[norm][e]:>24.6f}")
            result[f"{norm}_{e.replace('-', '_')}_vs_eager"] = f"{ratio:.3f}"
            result[f"{norm}_{e.replace('-', '_')}_setup_s"] = f"{setup[e]:.1f}"
        fpv_of[norm] = fpv
        result[f"{norm}_eager_mvox_s"] = f"{rates[norm]['eager']:.3f}"
        result.setdefault("flop_per_voxel", f"{fpv:.0f}")

    # the matmul rate again after the engines, the higher of the two: other jobs on a shared machine only lower it
    fp32 = max(fp32, matmul_gflops(torch.float32, args.matmul))
    bf16 = max(bf16, matmul_gflops(torch.bfloat16, args.matmul))
    print(f"\nmatmul {args.matmul}^2 on {args.threads} threads (best of before and after): fp32 {fp32:.1f} GFLOP/s, "
          f"bf16 {bf16:.1f} GFLOP/s")
    for norm, flops in fpv_of.items():
        for e in names:
            limit = bf16 if e in BF16_ENGINES else fp32
            result[f"{norm}_{e.replace('-', '_')}_of_limit"] = f"{rates[norm][e] * 1e6 * flops / 1e9 / limit:.3f}"

    if args.model and args.data:
        agree = agreement_on_volume(args.model, args.data, names, args.planes, args.tile)
        source = f"trained model on {args.planes} planes of {args.data}"
    else:
        agree = {e: min(a[e] for a in tile_agree.values()) for e in names}
        source = "random-weight models on the timing tiles"
    print(f"\nlabels identical to eager fp32 ({source}):")
    for e in names:
        print(f"  {e:<14}{agree[e]:.6f}")
        result[f"agree_{e.replace('-', '_')}"] = f"{agree[e]:.6f}"
    mvox = args.volume_planes * args.tile**2 / 1e6
    print(f"\nseconds to segment {args.volume_planes} planes of {args.tile}^2 ({mvox:.1f} Mvox) in one worker, "
          f"setup + voxels / rate, engines keeping >= {AGREEMENT:.2%} of eager's labels:")
    for norm in rates:
        fastest = fastest_engine(rates[norm], setups[norm], agree, mvox)
        print(f"  {norm}Norm: " + ", ".join(f"{e} {setups[norm][e] + mvox / rates[norm][e]:.1f}" for e in names
                                           if agree[e] >= AGREEMENT) + f" -> {fastest}")
        result[f"fastest_{norm}"] = fastest
    result.update(matmul_fp32_gflops=f"{fp32:.1f}", matmul_bf16_gflops=f"{bf16:.1f}")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
