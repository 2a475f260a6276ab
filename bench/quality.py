"""Segmentation quality of the CPU recipe on the real volume: train, segment z / zyx / zyx+clean, evaluate.

    python bench/quality.py --data soc.zarr                      # trains configs/soc_unet_cpu.yaml (~30 min)
    python bench/quality.py --data soc.zarr --model RUN/model.pt # evaluate an existing model only
    python bench/quality.py --data soc.zarr --set train.epochs=6 # a shorter training (--set passes through)
    python bench/quality.py --data soc.zarr --model RUN/model.pt --suspects  # + one change each (below)

Every step is the CLI a user runs, timed end to end:

1. ``xtrain train --config configs/soc_unet_cpu.yaml --data soc.zarr --out WORK/run --workers 2``
   (trains on z 0-199, selects model.pt on z 205-249);
2. ``xtrain segment WORK/run/model.pt soc.zarr WORK/<variant>.zarr --axes z`` / ``--axes zyx`` /
   ``--axes zyx --clean`` (the whole volume; segment times are compared side by side);
3. ``xtrain evaluate WORK/<variant>.zarr soc.zarr --z 205,250 --json --no-percolation``.

``--suspects`` adds variants with one change each: ``--normalisation own`` / ``train``, 256²
tiles (3x3 blended tiles per 501² plane instead of one), ``--clean`` after the z pass, and
``--axes zyx`` on 64x512x512 blocks (the y/x passes then see planes only 64 + halo deep instead
of the whole volume).

Prints one table row per variant (mean Dice, per-phase Dice, TPB density / labels', largest
phase-fraction error in percentage points, segment time) and ends with
``RESULT dice_z=… tpb_z=… dice_zyx=… tpb_zyx=… dice_zyx_clean=… tpb_zyx_clean=… frac_pp_z=…
frac_pp_zyx=… frac_pp_zyx_clean=… zyx_vs_z_time=… train_min=…``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.quality")
REPO = Path(__file__).resolve().parents[1]
# every variant names both settings: the recipe's model.pt records zyx --clean, which segment uses otherwise
VARIANTS = {"z": ["--axes", "z", "--no-clean"], "zyx": ["--axes", "zyx", "--no-clean"],
            "zyx_clean": ["--axes", "zyx", "--clean"]}
# --suspects: one change each against "z" / "zyx", for issue 11's list of suspects
SUSPECTS = {
    "z_own": ["--axes", "z", "--no-clean", "--normalisation", "own"],  # the volume's own percentiles
    "z_train": ["--axes", "z", "--no-clean", "--normalisation", "train"],  # the training statistics
    "z_tile256": ["--axes", "z", "--no-clean", "--tile", "256"],  # 3x3 Gaussian-blended 256^2 tiles per 501^2 plane
    "z_clean": ["--axes", "z", "--clean"],
    "zyx_block64": ["--axes", "zyx", "--no-clean", "--block", "64,512,512"],  # y/x planes only 64 (+halo) deep
}


def xtrain(*args: str) -> tuple[float, str]:
    """Run ``xtrain ARGS`` (this interpreter); (seconds, stdout).  Fails loudly."""
    cmd = [sys.executable, "-m", "xtrain.cli", *args]
    log.info("$ xtrain %s", " ".join(args))
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    dt = time.perf_counter() - start
    if r.returncode:
        raise RuntimeError(f"xtrain {' '.join(args)} failed ({r.returncode}): {r.stderr[-3000:]}")
    return dt, r.stdout


def scores(result: dict) -> dict[str, float]:
    ov, micro = result["overlap"], result["microstructure"]
    fr_p, fr_t = micro["pred"]["fractions"], micro["labels"]["fractions"]
    return {
        "dice": ov["mean_dice"],
        **{f"dice_{c}": v["dice"] for c, v in ov["per_class"].items()},
        "tpb": micro["pred"]["tpb"]["density"] / micro["labels"]["tpb"]["density"],
        "frac_pp": max(abs(fr_p[c] - fr_t[c]) for c in fr_t) * 100,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the ingested real volume (store with labels)")
    ap.add_argument("--config", default="configs/soc_unet_cpu.yaml")
    ap.add_argument("--model", type=Path, default=None, help="skip training: evaluate this model.pt")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training overrides")
    ap.add_argument("--workers", type=int, default=2, help="training workers (segment runs in-process)")
    ap.add_argument("--z", default="205,250", help="evaluated slices Z0,Z1 (default the validation slab)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default: a temporary folder)")
    ap.add_argument("--suspects", action="store_true",
                    help=f"also segment + evaluate {', '.join(SUSPECTS)} (one change each)")
    ap.add_argument("--only", default="", help="comma-separated variants to run (default: all asked for)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    data = str(args.data.resolve())
    try:
        train_min = float("nan")
        model = args.model
        if model is None:
            run = work / "run"
            sets = [x for s in args.set for x in ("--set", s)]
            dt, _ = xtrain("train", "--config", args.config, "--data", data, "--out", str(run), "--workers",
                           str(args.workers), *sets)
            train_min = dt / 60
            model = run / "model.pt"
            log.info("trained in %.1f min", train_min)
        rows: dict[str, dict[str, float]] = {}
        variants = {**VARIANTS, **(SUSPECTS if args.suspects else {})}
        if args.only:
            variants = {n: variants[n] for n in args.only.split(",")}
        for name, flags in variants.items():
            out = work / f"{name}.zarr"
            dt, _ = xtrain("segment", str(model), data, str(out), *flags, "--overwrite")
            _, text = xtrain("evaluate", str(out), data, "--z", args.z, "--json", "--no-percolation")
            rows[name] = {**scores(json.loads(text)), "seconds": dt}
            r = rows[name]
            log.info("%-10s mean Dice %.4f  pore %.4f  ysz %.4f  ni %.4f  TPB ratio %.3f  max fraction error %.2f pp"
                     "  segment %.0f s", name, r["dice"], r.get("dice_pore", float("nan")),
                     r.get("dice_ysz", float("nan")), r.get("dice_ni", float("nan")), r["tpb"], r["frac_pp"],
                     r["seconds"])
        if not set(VARIANTS) <= set(rows):
            print("RESULT " + " ".join(f"dice_{n}={r['dice']:.4f} tpb_{n}={r['tpb']:.3f} frac_pp_{n}={r['frac_pp']:.2f} "
                                        f"seconds_{n}={r['seconds']:.0f}" for n, r in rows.items()))
            return
        z, zyx, zc = rows["z"], rows["zyx"], rows["zyx_clean"]
        extra = " ".join(f"dice_{n}={r['dice']:.4f} tpb_{n}={r['tpb']:.3f} frac_pp_{n}={r['frac_pp']:.2f}"
                         for n, r in rows.items() if n in SUSPECTS)
        print(f"RESULT dice_z={z['dice']:.4f} tpb_z={z['tpb']:.3f} dice_zyx={zyx['dice']:.4f} tpb_zyx={zyx['tpb']:.3f} "
              f"dice_zyx_clean={zc['dice']:.4f} tpb_zyx_clean={zc['tpb']:.3f} frac_pp_z={z['frac_pp']:.2f} "
              f"frac_pp_zyx={zyx['frac_pp']:.2f} frac_pp_zyx_clean={zc['frac_pp']:.2f} "
              f"zyx_vs_z_time={zyx['seconds'] / z['seconds']:.2f} train_min={train_min:.1f}" + (" " + extra if extra else ""))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
