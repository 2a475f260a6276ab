"""The one-shot GPU check (run by ``bench/gpu_check.sh`` on a lent H200; no Ray, zarr/dask carried as wheels).

    bash bench/gpu_check.sh                       # on the GPU machine: 512^3, about 5 minutes
    python bench/gpu_check.py --dry-run           # here, on the CPU: every step at a tiny size (about a minute)

Times, on one GPU:

1. ``segment`` of a 512^3 synthetic store (a 32 x 256 x 256 synthetic block repeated: bench/segment.py's
   make_store) with a random-weight U-Net width 16 depth 4 (GroupNorm, the recipe's: timing does not
   depend on the weights), in this process on the GPU (``gpu=True, workers=1``: no Ray), engine bf16,
   ``--axes z`` and ``--axes zyx``, end to end (read, normalise, tiles, blend, argmax, write): Mvox/s;
2. the bare forward of the same model on the same 512^2 tiles: through the engine (numpy in and out,
   segment's batch of 1 and a batch of 8) and on tensors already on the GPU: Mvox/s, the ceiling of 1;
3. the engines of ``xtrain.infer.engines`` that have GPU builds (eager, compile, bf16; onnxruntime when
   its CUDA provider is there), side by side on the same tiles: Mvox/s and labels identical to eager fp32;
4. training throughput of the U-Net and Pix2Pix (``bench/gpu_train.py``: bf16, NCCL DDP wrapper): samples/s.

Each step is skipped (and says so) once ``--budget`` seconds have passed, so the whole run stays inside
the device time.  Last line: ``RESULT seg_z_mvox_s=... seg_zyx_mvox_s=... forward_b1_mvox_s=...
forward_b8_mvox_s=... forward_gpu_mvox_s=... seg_z_vs_forward=... <engine>_mvox_s=... agree_<engine>=...
unet_samples_per_s=... pix2pix_samples_per_s=...``.

``--dry-run`` runs every step on the CPU at ``--size 48`` with the packages the GPU machine lacks
(ray, openvino, imagecodecs, hdf5plugin, bioimageio) made unimportable, so a missing import or a wrong
call shows up here, not in the lease.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_GPU_MACHINE = ("ray", "openvino", "imagecodecs", "hdf5plugin", "bioimageio", "napari", "mlflow")


def block_absent_packages() -> None:
    """Make the packages the GPU machine does not have unimportable (``import ray`` raises ImportError)."""
    for name in ABSENT_ON_GPU_MACHINE:
        sys.modules[name] = None  # type: ignore[assignment]


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, step: str, need: float) -> bool:
        if self.left() >= need:
            return True
        print(f"skipped {step}: {self.left():.0f} s of the budget left, it needs about {need:.0f} s")
        return False


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_segment(model: Path, store: Path, out: Path, axes: str, gpu: bool, engine: str, tile: int) -> float:
    """Seconds of one ``segment`` call, in this process (no Ray)."""
    from xtrain.infer import segment

    t = time.perf_counter()
    segment(model, store, out, axes=axes, gpu=gpu, workers=1, engine=engine, tile=tile, overwrite=True)
    return time.perf_counter() - t


def forward_rates(net, device, tile: int, planes: int) -> dict[str, float]:
    """Mvox/s of the bare bf16 forward on ``planes`` tiles of tile^2: through the engine (numpy in and
    out) at batch 1 (segment's for 512^2 tiles) and 8, and on GPU tensors (no copies) at batch 8."""
    import numpy as np
    import torch

    from xtrain.infer.engines import create_engine

    engine = create_engine("bf16", net, in_channels=1, device=device)
    rates = {}
    for batch in (1, 8):
        x = np.random.default_rng(0).standard_normal((batch, 1, tile, tile), dtype=np.float32)
        engine(x)  # warm-up: cuDNN picks its kernels for this shape
        n = max(1, planes // batch)
        t = time.perf_counter()
        for _ in range(n):
            engine(x)
        rates[f"forward_b{batch}_mvox_s"] = n * batch * tile**2 / (time.perf_counter() - t) / 1e6
    x = torch.randn(8, 1, tile, tile, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        engine.module(x)
        sync(device)
        n = max(1, planes // 8)
        t = time.perf_counter()
        for _ in range(n):
            engine.module(x)
        sync(device)
    rates["forward_gpu_mvox_s"] = n * 8 * tile**2 / (time.perf_counter() - t) / 1e6
    return rates


def engine_rates(net, device, tile: int, planes: int) -> dict[str, float]:
    """Mvox/s and agreement with eager fp32 of every engine with a build for ``device``, batch 8."""
    import numpy as np

    from xtrain.infer.engines import GPU_ENGINES, available, create_engine

    names = [e for e in GPU_ENGINES if available(e)] if device.type == "cuda" else ["eager", "compile", "bf16"]
    x = np.random.default_rng(1).standard_normal((8, 1, tile, tile), dtype=np.float32)
    n = max(1, planes // 8)
    out, ref = {}, None
    for name in names:
        try:
            t0 = time.perf_counter()
            engine = create_engine(name, net, in_channels=1, device=device)
            labels = engine(x).argmax(1)  # warm-up (compilation) and the labels
            setup = time.perf_counter() - t0
        except Exception as exc:  # an engine without a build here (onnxruntime without CUDA) is reported, not fatal
            print(f"engine {name}: not run ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
            continue
        ref = labels if name == "eager" else ref
        t = time.perf_counter()
        for _ in range(n):
            engine(x)
        rate = n * 8 * tile**2 / (time.perf_counter() - t) / 1e6
        agree = float(np.mean(labels == ref)) if ref is not None else float("nan")
        print(f"engine {name:<12} {rate:8.4g} Mvox/s  labels = eager {agree:.6f}  setup {setup:.1f} s")
        out[f"{name.replace('-', '_')}_mvox_s"], out[f"agree_{name.replace('-', '_')}"] = rate, agree
    return out


def training(dry_run: bool, shape: str, epochs: int) -> dict[str, float]:
    """``bench/gpu_train.py`` in a subprocess; its RESULT line's samples/s (dry run: its imports only)."""
    script = str(ROOT / "bench" / "gpu_train.py")
    if dry_run:  # no CUDA here: check that it imports under the GPU machine's packages
        code = (f"import sys; [sys.modules.__setitem__(m, None) for m in {ABSENT_ON_GPU_MACHINE!r}]; "
                f"import runpy; sys.argv = [{script!r}, '--help']; runpy.run_path({script!r}, run_name='__main__')")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        print(f"gpu_train.py imports: {'ok' if done.returncode == 0 else done.stderr.strip().splitlines()[-1]}")
        return {}
    done = subprocess.run([sys.executable, script, "--shape", shape, "--epochs", str(epochs), "--cpu-epochs", "0"],
                          capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if re.match(r"(unet|pix2pix) +epochs", line)]
    print("\n".join(lines) or (done.stdout + done.stderr)[-2000:])
    return {f"{m}_samples_per_s": float(re.search(r"samples/s=([\d.]+)", line).group(1))
            for line in lines for m in ("unet", "pix2pix") if line.startswith(m)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="volume edge (default 512; 48 with --dry-run)")
    p.add_argument("--budget", type=float, default=420, help="seconds; later steps are skipped past it")
    p.add_argument("--train-shape", default="64,256,256")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="on the CPU, tiny, without the GPU machine's absent packages")
    args = p.parse_args()
    if args.dry_run:
        block_absent_packages()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    from segment import make_model, make_store  # bench/segment.py
    from xtrain.models.checkpoint import load_checkpoint, model_from_checkpoint

    size = args.size or (48 if args.dry_run else 512)
    tile = min(512, size)
    gpu = not args.dry_run
    if gpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is false); use --dry-run on a CPU")
        return 0
    device = torch.device("cuda" if gpu else "cpu")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if gpu else 'CPU (dry run)'}, {size}^3")
    budget, res = Budget(args.budget), {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        store = make_store(tmp / "vol.zarr", size)
        model = make_model(tmp / "model.pt", 16, 4, "group")
        print(f"store {size}^3 written in {time.perf_counter() - t:.1f} s")
        voxels = size**3
        for axes, need in (("z", 60), ("zyx", 120)):
            if budget.allows(f"segment --axes {axes}", need):
                s = time_segment(model, store, tmp / f"{axes}.zarr", axes, gpu, "bf16", tile)
                res[f"seg_{axes}_mvox_s"] = voxels / s / 1e6
                print(f"segment --axes {axes} bf16: {s:.1f} s, {res[f'seg_{axes}_mvox_s']:.4g} Mvox/s end to end")
        net = model_from_checkpoint(load_checkpoint(model), model)[0]
        if budget.allows("bare forward", 30):
            res.update(forward_rates(net, device, tile, size))
            print("bare forward bf16: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items() if k.startswith("forward")))
            if "seg_z_mvox_s" in res:
                res["seg_z_vs_forward"] = res["seg_z_mvox_s"] / res["forward_b1_mvox_s"]
        if budget.allows("engines", 150):
            res.update(engine_rates(net, device, tile, size))
    if budget.allows("training", 150):
        res.update(training(args.dry_run, args.train_shape if gpu else "16,48,48", args.train_epochs))
    print(f"total {time.perf_counter() - budget.start:.0f} s")
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
