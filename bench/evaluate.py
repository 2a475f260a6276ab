"""Classical baselines on the real volume, scored like a model: Dice and microstructure vs manual labels.

    python bench/evaluate.py soc.zarr                    # fit z 0-199, evaluate z 205-249
    python bench/evaluate.py soc.zarr --fit-z 0,200 --eval-z 205,250 --work /tmp/bench-eval

STORE is an ingested store with labels (``xtrain ingest ../shared/data/soc_pxct/images soc.zarr
--labels ../shared/data/soc_pxct/labels --label-map 0:0,128:1,255:2``).  For each baseline
(otsu, kmeans, median-otsu) it runs exactly what the CLI runs:

    xtrain baseline NAME --fit STORE --fit-z 0,200 STORE WORK/NAME.zarr
    xtrain evaluate WORK/NAME.zarr STORE --z 205,250 --json

and prints Dice per class, phase fractions and the PRED/LABELS ratios of TPB density and
interfacial areas.  It also measures the streamed evaluation itself on the whole volume
(otsu vs labels, all slices): seconds, and the peak of Python/numpy allocations
(tracemalloc) for a 64-slice crop and for the whole volume: streaming means the peak is set
by the slab (~25 bytes per voxel of a 32-slice slab), not by the depth.
The last line is machine-readable:

    RESULT otsu_dice=... kmeans_dice=... median_otsu_dice=... otsu_tpb_ratio=... eval_s=... eval_peak_mb=... labels_mb=...
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

from xtrain.evaluate.baselines import BASELINES, fit_baseline, segment_baseline
from xtrain.evaluate.core import evaluate
from xtrain.evaluate.report import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="ingested store with labels")
    parser.add_argument("--fit-z", default="0,200")
    parser.add_argument("--eval-z", default="205,250")
    parser.add_argument("--work", default=None, help="folder for the baseline stores (default: a temporary one)")
    args = parser.parse_args()
    fit_z = tuple(int(v) for v in args.fit_z.split(","))
    eval_z = tuple(int(v) for v in args.eval_z.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-eval-"))
    work.mkdir(parents=True, exist_ok=True)

    results, outs = {}, {}
    for name in BASELINES:
        t0 = time.perf_counter()
        b = fit_baseline(name, args.store, fit_z)
        outs[name] = segment_baseline(b, args.store, work / f"{name}.zarr", overwrite=True)
        seconds = time.perf_counter() - t0
        results[name] = evaluate(outs[name], args.store, z_range=eval_z)
        print(f"{name}: thresholds {', '.join(f'{t:.0f}' for t in b.thresholds)}, fit + segment {seconds:.1f} s")

    first = next(iter(results.values()))
    classes = first["classes"]
    rows = []
    for name, r in results.items():
        ov, ms = r["overlap"], r["microstructure"]
        rows.append([name, *(ov["per_class"][c]["dice"] for c in classes), ov["mean_dice"],
                     r["per_slice"]["summary"]["mean_dice"]["std"],
                     *(ms["pred"]["fractions"][c] for c in classes), ms["ratio"]["tpb"]["density"],
                     *(ms["ratio"]["specific_area"][p] for p in ms["pred"]["specific_area"])])
    ms = first["microstructure"]["labels"]
    rows.append(["labels", "", "", "", "", "", *(ms["fractions"][c] for c in classes), 1.0, 1.0, 1.0, 1.0])
    header = ["baseline", *(f"Dice {c}" for c in classes), "mean Dice", "slice std",
              *(f"frac {c}" for c in classes), "TPB ratio", *(f"area ratio {p}" for p in ms["specific_area"])]
    print(f"\nfit z {fit_z[0]}..{fit_z[1] - 1}, evaluated z {eval_z[0]}..{eval_z[1] - 1} against the manual labels")
    print(table(header, rows))
    print(f"labels: TPB {ms['tpb']['edges_total']} voxel edges, density {ms['tpb']['density']:.3e} "
          f"{ms['units']['tpb_density']}")

    # the streamed evaluation: time, and peak allocations for a 64-slice crop vs the whole volume
    # (streaming: the peak depends on the slab, not on the depth)
    peaks = {}
    for label, z_range in (("64 slices", (0, 64)), ("whole", None)):
        tracemalloc.start()
        t0 = time.perf_counter()
        r = evaluate(outs["otsu"], args.store, z_range=z_range)
        eval_s = time.perf_counter() - t0
        peaks[label] = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        z, y, x = r["shape"]
        labels_mb = 2 * z * y * x / 1e6  # prediction + labels as uint8
        print(f"evaluate {label} ({z}x{y}x{x}): {eval_s:.1f} s, peak allocations {peaks[label]:.0f} MB "
              f"for {labels_mb:.0f} MB of labels (slab 32)")
    peak_mb = peaks["whole"]
    d = {n: r["overlap"]["mean_dice"] for n, r in results.items()}
    print(f"RESULT otsu_dice={d['otsu']:.4f} kmeans_dice={d['kmeans']:.4f} median_otsu_dice={d['median-otsu']:.4f} "
          f"otsu_tpb_ratio={results['otsu']['microstructure']['ratio']['tpb']['density']:.4f} "
          f"eval_s={eval_s:.1f} eval_peak_mb={peak_mb:.0f} labels_mb={labels_mb:.0f}")


if __name__ == "__main__":
    main()
