"""``xtrain demo``: the whole pipeline on an embedded default, in minutes, on a laptop's CPUs.

    synth (train volume) -> train (Ray Train, 2 DDP workers, planes of all three axes) -> synth (a
      second volume) -> segment (blockwise: the model's validated settings, and z only)
      + multi-Otsu baseline -> compare against the exact labels

Needs no data, no GPU and no config file: the recipe is ``DEMO_CONFIG`` below, so an
installed package runs it from any folder.  Everything lands in OUT (default ``xtrain-demo``):
the volumes, the run ``unet/`` (model.pt, metrics.csv), the predictions and ``report/compare.md``.

The model trains on planes normal to z, y and x (``data.axis: any``), so model.pt records
``--axes zyx --clean`` as its validated settings (``xtrain.models.checkpoint.validated_inference``)
and ``segment`` uses them by default; the table shows that row ("unet", inference "zyx clean
(model's)") beside the same model run on z planes only ("unet-z-only", "z (given)").
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..config import config_from_dict
from ..errors import OutputExistsError

log = logging.getLogger(__name__)

TRAIN_SHAPE = (48, 128, 128)
TEST_SHAPE = (40, 128, 128)
PRESET = "medium"

# A tiny 2D U-Net that learns the medium preset in about a minute on 2 CPU cores.
DEMO_CONFIG: dict[str, Any] = {
    "data": {"patch": 64, "slices": 1, "axis": "any", "val_fraction": 0.25, "gap": 2, "samples_per_epoch": 256,
             "val_patches": 32, "loader_workers": 0},
    "model": {"name": "unet", "kwargs": {"width": 8, "depth": 2, "norm": "batch"}},
    "optim": {"lr": 3e-3, "beta1": 0.9},
    "loss": {"name": "ce+dice"},
    "train": {"epochs": 8, "batch_size": 16, "seed": 0, "workers": 2, "max_failures": 1},
}


def run_demo(out: str | Path = "xtrain-demo", *, workers: int = 2, epochs: int | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Run the pipeline into ``out``; returns the comparison summary and where the report is."""
    from ..data.synth import synthesize
    from ..infer import SegmentOptions, segment
    from ..train.ray_trainer import train
    from .compare import compare

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"demo folder '{out}' already exists; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def step(text: str) -> None:
        log.info("[%5.1f s] %s", time.perf_counter() - t0, text)

    step(f"1/4 synthesising a {PRESET} training volume {TRAIN_SHAPE} with exact labels")
    train_store = synthesize(out / "train.zarr", shape=TRAIN_SHAPE, preset=PRESET, seed=0)
    step(f"2/4 training a tiny U-Net with Ray Train ({workers} DDP workers)")
    values = {**DEMO_CONFIG, "data": {**DEMO_CONFIG["data"], "store": str(train_store.resolve())},
              "train": {**DEMO_CONFIG["train"], "workers": workers, **({"epochs": epochs} if epochs else {})}}
    cfg = config_from_dict(values)
    metrics = train(cfg, out / "unet")
    step(f"3/4 synthesising an unseen test volume {TEST_SHAPE} (another seed) and segmenting it blockwise with "
         "the model's validated settings and with z planes only, next to a multi-Otsu baseline")
    test_store = synthesize(out / "test.zarr", shape=TEST_SHAPE, preset=PRESET, seed=1)
    z_only = segment(out / "unet" / "model.pt", test_store, out / "unet-z-only.zarr", SegmentOptions(axes="z",
                                                                                                   clean=False))
    step("4/4 evaluating all three against the exact labels (Dice, phase fractions, TPB density)")
    result = compare([str(out / "unet"), str(z_only)], str(test_store), out / "report", baselines=["otsu"],
                     fit=str(train_store), segment_options=SegmentOptions(workers=1))
    step("done")
    return {"summary": result["summary"], "report": result["report"], "train_metrics": metrics,
            "seconds": time.perf_counter() - t0}
