"""GPU check of the training loop: bf16 autocast, DDP under NCCL, U-Net and Pix2Pix.

Runs ``xtrain.train.loop.fit`` in-process on ``cuda`` (the same function every Ray Train
worker runs) inside a one-process NCCL group, so the DistributedDataParallel wrapping with
device_ids, the NCCL all-reduce of the validation confusion matrix and bf16 autocast are
all exercised.  Ray itself is not needed (the device machine has none).  The same run on
the CPU gives the speed-up.

    python bench/gpu_train.py --shape 64,256,256 --epochs 3

Last line: ``RESULT gpu_samples_per_s=... cpu_samples_per_s=... speedup=... unet_dice=... pix2pix_dice=...``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from xtrain.config import load_config
from xtrain.data.synth import synthesize
from xtrain.models.checkpoint import load_checkpoint
from xtrain.train.loop import WorkerContext, fit


def run(store: Path, out: Path, device: torch.device, model: str, epochs: int, batch: int) -> dict:
    overrides = [f"data.store={store}", f"train.epochs={epochs}", f"train.batch_size={batch}", "data.patch=128",
                 "data.samples_per_epoch=1024", "data.val_patches=64", "data.loader_workers=4",
                 f"train.use_gpu={device.type == 'cuda'}"]
    config = "configs/unet.yaml" if model == "unet" else "configs/pix2pix.yaml"
    cfg = load_config(config, overrides)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    metrics = fit(cfg, out, WorkerContext(device=device))
    metrics["wall_s"] = time.perf_counter() - t0
    ckpt = load_checkpoint(out / "model.pt", map_location="cpu")  # a GPU-trained model loads on a CPU
    assert all(t.device.type == "cpu" for t in ckpt["model_state"].values())
    return metrics


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="64,256,256")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cpu-epochs", type=int, default=1, help="epochs of the CPU reference run (0: skip)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    device = torch.device("cuda", 0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = synthesize(tmp / "train.zarr", shape=tuple(int(v) for v in args.shape.split(",")), preset="hard")
        res = {m: run(store, tmp / m, device, m, args.epochs, args.batch if m == "unet" else 4)
               for m in ("unet", "pix2pix")}
        dist.destroy_process_group()
        cpu = None
        if args.cpu_epochs:
            torch.set_num_threads(max(1, (os.cpu_count() or 2)))
            cpu = run(store, tmp / "cpu", torch.device("cpu"), "unet", args.cpu_epochs, args.batch)
    for m, r in res.items():
        print(f"{m:8s} epochs={r['epoch']} val_mean_dice={r['val_mean_dice']:.4f} samples/s={r['samples_per_s']:.1f} "
              f"wall={r['wall_s']:.1f}s")
    gpu_rate = res["unet"]["samples_per_s"]
    cpu_rate = cpu["samples_per_s"] if cpu else float("nan")
    if cpu:
        print(f"cpu      epochs={cpu['epoch']} samples/s={cpu_rate:.1f} ({torch.get_num_threads()} threads)")
    print(f"RESULT gpu_samples_per_s={gpu_rate:.1f} cpu_samples_per_s={cpu_rate:.1f} speedup={gpu_rate / cpu_rate:.1f} "
          f"unet_dice={res['unet']['val_mean_dice']:.4f} pix2pix_dice={res['pix2pix']['val_mean_dice']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
