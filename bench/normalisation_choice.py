"""Which normalisation is right for a new volume?  Measured on the real volume's held-out slab.

    python bench/normalisation_choice.py --data soc.zarr --model RUN/model.pt --work /tmp/norm-choice [--every 5]

Takes the slab z 205-249 of the real store (never used for fitting; the recipe selects its
model on it) with its manual labels and builds the volumes a facility really receives:

* ``as_is``: the slab;
* ``circle``: zeros outside the largest centred circle (TomoPy ``circ_mask``, ratio 1);
  scored inside the circle;
* ``low_ni``: the y/x window (``--crop`` pixels, on a 16-pixel grid) with the least nickel;
* ``hot``: 20 voxels set to 65535 (hot pixels), scored everywhere;
* ``gain0.8`` / ``gain1.25``: a * I + b clipped to uint16 (another flux or detector:
  a = 0.8, b = +2000 and a = 1.25, b = -2000): the training statistics are wrong here;
* ``circle_gain1.25``, ``low_ni_gain1.25``: a mask, and a crop, on another grey scale.

Each is written as a uint16 TIFF and segmented with ``xtrain.infer.segment()`` (what ``xtrain
segment MODEL IN OUT --normalisation MODE`` runs) under every mapping (train, own, peaks;
a mapping that gives the same p0.5/p99.5 as one already run is not run twice; ``peaks``
that cannot be fitted is reported as refused), and scored against the labels with
``xtrain.metrics`` (what ``xtrain evaluate`` reports): mean Dice and the largest
phase-fraction error in percentage points.  ``auto`` is what ``choose_mapping`` picks.

The last line is machine-readable:

    RESULT dice_<variant>_<mode>=... auto_<variant>=<mode> ... auto_regret_max=... uncertain=<variants>
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

log = logging.getLogger("bench.normalisation_choice")
MODES = ("train", "own", "peaks")
IGNORE = 255  # label of voxels that are not scored (outside the circle)
NAMES = ("pore", "ysz", "ni")


def circle(shape_yx: tuple[int, int]) -> np.ndarray:
    """TomoPy circ_mask(ratio=1): True inside the largest circle centred in the (Y, X) plane."""
    ny, nx = shape_yx
    yy, xx = np.mgrid[:ny, :nx]
    r = min(ny, nx) / 2
    return (yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2 <= r**2


def low_ni_window(labels: np.ndarray, size: int, step: int = 16) -> tuple[slice, slice]:
    """The (size x size) y/x window on a ``step`` grid with the smallest nickel fraction over the slab."""
    ni = (labels == 2).sum(axis=0).astype(np.float64)
    integral = np.pad(ni.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, where = np.inf, (0, 0)
    for y in range(0, labels.shape[1] - size + 1, step):
        for x in range(0, labels.shape[2] - size + 1, step):
            s = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
            if s < best:
                best, where = s, (y, x)
    return slice(where[0], where[0] + size), slice(where[1], where[1] + size)


def regrey(image: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float64) * gain + offset), 0, 65535).astype(np.uint16)


def fractions(labels: np.ndarray) -> list[float]:
    scored = labels[labels != IGNORE]
    return [float(np.mean(scored == c)) for c in range(3)]


def variants(image: np.ndarray, labels: np.ndarray, crop: int) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """name -> (uint16 image, labels with IGNORE where not scored, description)."""
    inside = circle(image.shape[1:])
    masked = np.where(inside, image, 0).astype(np.uint16)
    masked_labels = np.where(inside, labels, IGNORE).astype(np.uint8)
    ys, xs = low_ni_window(labels, crop)
    hot = image.copy()
    rng = np.random.default_rng(0)
    idx = tuple(rng.integers(0, n, 20) for n in image.shape)
    hot[idx] = 65535
    g08, g125 = (0.8, 2000.0), (1.25, -2000.0)
    return {
        "as_is": (image, labels, "the slab"),
        "circle": (masked, masked_labels, f"zeros outside r={min(image.shape[1:]) / 2:g} ({np.mean(~inside):.1%})"),
        "low_ni": (image[:, ys, xs], labels[:, ys, xs], f"y {ys.start}:{ys.stop} x {xs.start}:{xs.stop}"),
        "hot": (hot, labels, "20 voxels = 65535"),
        "gain0.8": (regrey(image, *g08), labels, "0.8 I + 2000"),
        "gain1.25": (regrey(image, *g125), labels, "1.25 I - 2000"),
        "circle_gain1.25": (regrey(masked, *g125) * inside, masked_labels, "circle, then 1.25 I - 2000"),
        "low_ni_gain1.25": (regrey(image[:, ys, xs], *g125), labels[:, ys, xs], "low_ni, then 1.25 I - 2000"),
    }


def score(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from xtrain.evaluate.metrics import confusion_matrix, scores

    m = confusion_matrix(pred, truth, 3, ignore_index=IGNORE)
    s = scores(m, NAMES)
    true_f, pred_f = m.sum(1) / m.sum(), m.sum(0) / m.sum()
    return {"dice": s["mean_dice"], "frac_pp": float(np.max(np.abs(pred_f - true_f)) * 100),
            **{f"dice_{n}": s["per_class"][n]["dice"] for n in NAMES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the ingested real volume (store with labels)")
    ap.add_argument("--model", required=True, type=Path, help="model.pt trained on the store's other slices")
    ap.add_argument("--z", default="205,250", help="held-out slices Z0,Z1")
    ap.add_argument("--every", type=int, default=1, help="every N-th slice of the slab only (the recipe's model is "
                    "2D: each slice is segmented on its own, so this subsamples the scores; the statistics are "
                    "those of the slices kept)")
    ap.add_argument("--crop", type=int, default=96, help="edge of the low-nickel y/x window (pixels)")
    ap.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    ap.add_argument("--work", type=Path, default=None, help="keep variants and segmentations here (reused)")
    ap.add_argument("--cached", action="store_true", help="score only the segmentations already in --work "
                    "(others: 'not run')")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_norm_choice_"))
    work.mkdir(parents=True, exist_ok=True)

    from xtrain.data.stats import histogram_peaks
    from xtrain.data.volumes import open_volume as open_source
    from xtrain.evaluate import open_label_volume
    from xtrain.errors import InvalidInputError
    from xtrain.infer import open_segmentation, segment
    from xtrain.data.normalise import normalised_volume
    from xtrain.models.checkpoint import load_checkpoint

    z0, z1 = (int(v) for v in args.z.split(","))
    train = load_checkpoint(args.model)["stats"]
    tpeaks, why = histogram_peaks(train)
    log.info("training statistics: p0.5 %.0f p99.5 %.0f, phase peaks %s %s", train["p0_5"], train["p99_5"],
             [round(p) for p in tpeaks], why)
    source = open_source(args.data, dataset="image")
    image = np.asarray(source.read(source.planes(z0, z1)))[:: args.every]
    truth = open_label_volume(args.data)
    labels = np.asarray(truth.read(truth.planes(z0, z1)))[:: args.every]
    table = {}
    chosen = variants(image, labels, args.crop)
    only = args.only.split(",") if args.only else list(chosen)
    log.info("slab z %d-%d every %d: %s; low-nickel window of %d px", z0, z1 - 1, args.every, image.shape, args.crop)
    for name in only:
        img, truth, what = chosen[name]
        tif = work / f"{name}.tif"
        if not tif.exists():
            tifffile.imwrite(tif, img)
        row: dict = {"what": what, "shape": list(img.shape), "fractions": fractions(truth)}
        done: dict[tuple[float, float], str] = {}
        for mode in ("auto", *MODES):
            try:
                m = normalised_volume(open_source(tif), train_stats=train, mode=mode).mapping
            except InvalidInputError as exc:
                row[mode] = {"refused": str(exc)}
                continue
            if mode == "auto":
                row["auto"] = {"mode": m["mode"], "uncertain": m["uncertain"], "reason": m["reason"],
                               "peaks": [round(p) for p in (m["peaks"] or {}).get("peaks", [])]}
                continue
            key = (round(m["lo"], 2), round(m["hi"], 2))
            entry = {"lo": m["lo"], "hi": m["hi"]}
            if key in done:
                entry.update(row[done[key]])
            else:
                out = work / f"{name}_{mode}.zarr"
                start = time.perf_counter()
                if args.cached and not out.exists():
                    row[mode] = {"not_run": True}
                    continue
                if not out.exists():
                    segment(args.model, tif, out, normalisation=mode, axes="z", clean=False)  # as measured
                pred = np.asarray(open_segmentation(out).labels[:])
                entry.update(score(pred, truth), seconds=round(time.perf_counter() - start, 1))
                done[key] = mode
            row[mode] = entry
            log.info("%s %s: %s", name, mode, {k: v for k, v in entry.items() if k in ("dice", "frac_pp")})
        table[name] = row
        (work / "table.json").write_text(json.dumps(table, indent=1))

    def cell(row, mode):
        e = row.get(mode, {})
        if "refused" in e or "not_run" in e:
            return "refused" if "refused" in e else "not run"
        return f"{e['dice']:.3f} / {e['frac_pp']:.1f}"

    print(f"training peaks {[round(p) for p in tpeaks]}; cells: mean Dice / largest phase-fraction error (pp)")
    print("| variant | pore/YSZ/Ni | train | own | peaks | auto |")
    print("|---|---|---|---|---|---|")
    res: dict[str, str] = {}
    regret = []
    for name, row in table.items():
        auto = row["auto"]
        f = "/".join(f"{v:.2f}" for v in row["fractions"])
        flag = ", uncertain" if auto["uncertain"] else ""
        print(f"| {name} ({row['what']}) | {f} | {cell(row, 'train')} | {cell(row, 'own')} | {cell(row, 'peaks')} | "
              f"{auto['mode']}{flag} (peaks {auto['peaks']}) |")
        for mode in MODES:
            if "dice" in row.get(mode, {}):
                res[f"dice_{name}_{mode}"] = f"{row[mode]['dice']:.4f}"
        res[f"auto_{name}"] = auto["mode"]
        measured = [row[m]["dice"] for m in MODES if "dice" in row.get(m, {})]
        if measured and "dice" in row.get(auto["mode"], {}):
            best = max(measured)
            regret.append(best - row[auto["mode"]]["dice"])
    res["auto_regret_max"] = f"{max(regret):.4f}" if regret else "nan"
    res["uncertain"] = ",".join(n for n, r in table.items() if r["auto"]["uncertain"]) or "none"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in res.items()))


if __name__ == "__main__":
    sys.exit(main())
