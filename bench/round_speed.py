"""Speed of one labelling round (issue 23 section 3): save the painted planes, fine-tune, segment again.

The round is what napari's "Label loop" widget runs (xtrain/napari): ``save_painted`` (the corrections as a
sparse labels store), ``finetune`` (``xtrain.train.loop.fit`` of the model on that store, in this process: no
Ray) and ``segment_volume`` (``segment --probabilities``, in this process), timed one by one on a synthetic
``--shape`` volume (default 64x256x256, ``xtrain synth`` medium preset) with the tiny model (configs/tiny.yaml,
trained here first, not timed).

Ray's share, measured beside it: the same training budget (``--steps`` x the batch, as one epoch of ``fit`` on
the volume's dense labels) run once in this process and once through Ray Train (1 worker, a private local
Ray); Ray start-up = the Ray run's wall time, ``ray.init`` included, minus the in-process ``fit``'s.  What a
round through ``xtrain train`` would take is then that start-up plus the round's own training and prediction.
Every figure is wall time on a machine shared with whatever else runs: compare them on an idle machine only
(``uptime`` before and after; docs/measurements.md keeps a run on a loaded one apart).

    python bench/round_speed.py                          # 64x256x256, 60 steps, 2 torch threads
    python bench/round_speed.py --shape 32,128,128 --no-ray

Last line: ``RESULT round_s=... save_s=... finetune_s=... predict_s=... ray_startup_s=... round_via_ray_s=...
target_s=60 within_target=...``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xtrain.config import load_config
from xtrain.data.painted import save_painted
from xtrain.data.store import open_segmentation, open_store
from xtrain.data.synth import synthesize
from xtrain.data.volumes import open_volume
from xtrain.napari.finetune import BATCH, STEPS, finetune
from xtrain.napari.loop import segment_volume

REPO = Path(__file__).resolve().parents[1]


def tiny(store: Path, *overrides: str):
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.store={store}", "data.loader_workers=0",
                                                         "train.max_failures=0", *overrides])


def train_model(root: Path, shape: tuple[int, int, int], epochs: int) -> Path:
    """The model the round starts from: configs/tiny.yaml on another synthetic volume (seed 1)."""
    from xtrain.train.loop import fit

    store = synthesize(root / "train.zarr", shape=(min(shape[0], 48), *shape[1:]), preset="medium", seed=1)
    (root / "model").mkdir()
    fit(tiny(store, f"train.epochs={epochs}", "data.slices=3"), root / "model")
    return root / "model" / "model.pt"


def one_round(root: Path, scan: Path, model: Path, planes: list[int], steps: int) -> dict[str, float]:
    """Save ``planes`` (z, the true labels painted whole), fine-tune, segment again: seconds of each."""
    truth = open_store(scan).labels
    painted = np.zeros(open_store(scan).shape, np.uint8)
    for z in planes:
        painted[z] = truth[z] + 1
    t0 = time.perf_counter()
    save_painted(root / "labels.zarr", painted, classes=open_store(scan).info.classes, image=open_volume(scan))
    t1 = time.perf_counter()
    new = finetune(root / "labels.zarr", model, root / "round", steps=steps)
    t2 = time.perf_counter()
    seg = segment_volume(new, scan, root / "segmentation.zarr")
    t3 = time.perf_counter()
    agree = float((open_segmentation(seg).labels[:] == truth[:]).mean())
    return {"save_s": t1 - t0, "finetune_s": t2 - t1, "predict_s": t3 - t2, "agreement": agree}


def ray_startup(root: Path, scan: Path, samples: int) -> tuple[float, float]:
    """(Ray Train wall incl. ray.init, in-process fit wall) of one epoch of ``samples`` patches."""
    from xtrain.runtime import ray_session
    from xtrain.train.loop import WorkerContext, fit
    from xtrain.train.ray_trainer import fit_trainer, make_trainer, prepare_run_dir

    over = ("train.epochs=1", f"data.samples_per_epoch={samples}", f"train.batch_size={BATCH}", "data.val_patches=8",
            "data.slices=3", "train.workers=1")
    (root / "plain").mkdir()
    t0 = time.perf_counter()
    fit(tiny(scan, *over), root / "plain", WorkerContext())
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ray_session(num_cpus=max(1, torch.get_num_threads())):
        cfg = tiny(scan, *over)
        run_dir, _ = prepare_run_dir(root / "ray", cfg, resume=False)
        trainer, attempt = make_trainer(cfg, run_dir, None, cpus_per_worker=max(1, torch.get_num_threads()))
        fit_trainer(trainer, run_dir, attempt=attempt)
    return time.perf_counter() - t0, plain


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="64,256,256", help="synthetic volume Z,Y,X")
    p.add_argument("--steps", type=int, default=STEPS, help="fine-tune steps (batches of %d patches)" % BATCH)
    p.add_argument("--planes", default="10,32,54", help="z-planes painted in the round")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the starting model (not timed)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the 2-core target)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train comparison")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    root = Path(tempfile.mkdtemp(prefix="xtrain-round-"))
    scan = synthesize(root / "scan.zarr", shape=shape, preset="medium", seed=0)
    model = train_model(root, shape, args.epochs)
    before = segment_volume(model, scan, root / "before.zarr")
    old = float((open_segmentation(before).labels[:] == open_store(scan).labels[:]).mean())
    r = one_round(root, scan, model, [int(z) for z in args.planes.split(",")], args.steps)
    total = r["save_s"] + r["finetune_s"] + r["predict_s"]
    print(f"round on {args.shape} ({args.steps} steps x {BATCH} patches, {args.threads} threads): "
          f"save {r['save_s']:.1f} s, fine-tune {r['finetune_s']:.1f} s, predict {r['predict_s']:.1f} s = "
          f"{total:.1f} s; voxels agreeing with the truth {old:.3f} -> {r['agreement']:.3f}", flush=True)
    ray_s = plain_s = float("nan")
    if not args.no_ray:
        ray_s, plain_s = ray_startup(root, scan, args.steps * BATCH)
        print(f"the same {args.steps} steps as one fit epoch: in-process {plain_s:.1f} s, Ray Train {ray_s:.1f} s "
              f"(start-up {ray_s - plain_s:.1f} s)", flush=True)
    startup = ray_s - plain_s
    print(f"RESULT round_s={total:.1f} save_s={r['save_s']:.2f} finetune_s={r['finetune_s']:.1f} "
          f"predict_s={r['predict_s']:.1f} ray_startup_s={startup:.1f} round_via_ray_s={total + startup:.1f} "
          f"agreement_before={old:.3f} agreement_after={r['agreement']:.3f} target_s=60 "
          f"within_target={total <= 60}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
