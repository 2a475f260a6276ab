"""Which parts of the CPU recipe help: short trainings with one change each, scored on the validation slab.

    python bench/recipe_ablation.py --data soc.zarr                       # all variants, ~5 min each
    python bench/recipe_ablation.py --data soc.zarr --only recipe,batch_norm_sync --epochs 6

Every variant is ``xtrain train --config configs/soc_unet_cpu.yaml`` with the same shortened
budget (``--epochs`` x ``--samples`` patches, same seed) and one change:

================  ==================================================================================
recipe            the config as it is (cosine + warm-up, EMA, GroupNorm, patches on all three axes,
                  one slice)
batch_norm_sync   BatchNorm over the global batch of all workers (``norm=batch``,
                  ``train.sync_bn=true``)
batch_norm        BatchNorm statistics of each worker's own 8 patches (``norm=batch``,
                  ``train.sync_bn=false``)
no_ema            no weight EMA (``train.ema_decay=0``)
constant_lr       no schedule (``optim.schedule=constant``)
axis_z            patches normal to z only (``data.axis=z``)
slices_3          2.5D: three neighbouring slices as channels (``data.slices=3``)
================  ==================================================================================

The scores are those of model.pt's epoch in ``metrics.csv`` (selected by the config's
``train.select``): whole validation planes z 205-249 along z, exactly as ``segment --axes z``
predicts them, so each row is the validation slab's mean Dice, TPB density / labels' and the
largest phase-fraction error.  One seed per variant: differences below ~0.002 Dice are within
run-to-run noise (compare ``recipe`` with ``--seeds 2``).  Ends with one line
``RESULT <variant>_dice=… <variant>_tpb=… <variant>_frac_pp=… <variant>_samples_per_s=… …``
(samples/s: the median training rate over the epochs; global-batch BatchNorm all-reduces
every BatchNorm layer's statistics, which costs time on CPU).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from quality import xtrain  # bench/quality.py: run the CLI, timed

log = logging.getLogger("bench.recipe_ablation")
VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "batch_norm_sync": ["model.kwargs={width: 16, depth: 4, norm: batch, dropout: 0.0}", "train.sync_bn=true"],
    "batch_norm": ["model.kwargs={width: 16, depth: 4, norm: batch, dropout: 0.0}", "train.sync_bn=false"],
    "no_ema": ["train.ema_decay=0"],
    "constant_lr": ["optim.schedule=constant"],
    "axis_z": ["data.axis=z"],
    "slices_3": ["data.slices=3"],
}


def selected_row(metrics_csv: Path) -> tuple[dict[str, float], float]:
    """The metrics.csv row of the epoch model.pt holds (its val_score equals the final best_score),
    and the median training samples/s over all epochs (robust to one epoch slowed by other load)."""
    with open(metrics_csv, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    best = rows[-1]["best_score"]
    return next(r for r in rows if r["val_score"] == best), float(np.median([r["samples_per_s"] for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the ingested real volume (store with labels)")
    ap.add_argument("--config", default="configs/soc_unet_cpu.yaml")
    ap.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=768, help="patches per epoch")
    ap.add_argument("--seeds", type=int, default=1, help="seeds of the 'recipe' variant (its noise)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_ablation_"))
    work.mkdir(parents=True, exist_ok=True)
    runs = [(n, s) for n in names for s in (range(args.seeds) if n == "recipe" else [0])]
    result: list[str] = []
    try:
        for name, seed in runs:
            tag = name if seed == 0 else f"{name}_seed{seed}"
            out = work / tag
            sets = [f"train.epochs={args.epochs}", f"data.samples_per_epoch={args.samples}", f"train.seed={seed}",
                    *VARIANTS[name]]
            if (out / "model.pt").exists():  # a rerun with --workdir keeps the finished variants
                dt = float("nan")
            else:
                shutil.rmtree(out, ignore_errors=True)  # an interrupted variant starts again
                dt, _ = xtrain("train", "--config", args.config, "--data", str(args.data.resolve()), "--out",
                               str(out), "--workers", str(args.workers), *[x for s in sets for x in ("--set", s)])
            r, sps = selected_row(out / "metrics.csv")
            log.info("%-12s epoch %d  mean Dice %.4f  pore %.4f  ysz %.4f  ni %.4f  TPB ratio %.3f  "
                     "max fraction error %.2f pp  %.1f samples/s  %.1f min", tag, r["epoch"], r["val_mean_dice"],
                     r["val_dice_pore"], r["val_dice_ysz"], r["val_dice_ni"], r["val_tpb_ratio"],
                     r["val_fraction_error_pp"], sps, dt / 60)
            result += [f"{tag}_dice={r['val_mean_dice']:.4f}", f"{tag}_tpb={r['val_tpb_ratio']:.3f}",
                       f"{tag}_frac_pp={r['val_fraction_error_pp']:.2f}", f"{tag}_samples_per_s={sps:.1f}"]
        print("RESULT " + " ".join(result))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
