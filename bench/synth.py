"""Benchmark the synthetic generator: speed, and how hard each preset is for multi-Otsu.

    python bench/synth.py                      # 64x256x256 per preset, then one 256^3 volume
    python bench/synth.py --shape 32,128,128 --skip-big

For each preset: generation time, multi-Otsu (xtrain.evaluate.baselines.otsu_segment) Dice per
class against the exact labels, and their mean.  The last line is machine-readable:

    RESULT easy_dice=... medium_dice=... hard_dice=... seconds_256=...

The numbers quoted in xtrain/data/synth.py come from this script.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xtrain.evaluate.baselines import otsu_segment
from xtrain.data.synth import CLASSES, PRESETS, generate


def dice_per_class(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> list[float]:
    """Dice of each class; 1.0 for a class absent from both."""
    out = []
    for c in range(n_classes):
        p, t = pred == c, truth == c
        denom = int(p.sum()) + int(t.sum())
        out.append(1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,256,256", help="Z,Y,X of the per-preset volumes (default 64,256,256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-big", action="store_true", help="skip timing the 256^3 volume")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))

    print(f"shape {shape}, seed {args.seed}")
    print(f"{'preset':8s} {'seconds':>8s} " + " ".join(f"{c:>7s}" for c in CLASSES) + f" {'mean':>7s}")
    mean_dice = {}
    for name in PRESETS:
        t0 = time.perf_counter()
        image, labels, _ = generate(shape, preset=name, seed=args.seed)
        seconds = time.perf_counter() - t0
        dice = dice_per_class(otsu_segment(image), labels, len(CLASSES))
        mean_dice[name] = float(np.mean(dice))
        print(f"{name:8s} {seconds:8.1f} " + " ".join(f"{d:7.4f}" for d in dice) + f" {mean_dice[name]:7.4f}")

    seconds_256 = float("nan")
    if not args.skip_big:
        t0 = time.perf_counter()
        generate((256, 256, 256), preset="hard", seed=args.seed)
        seconds_256 = time.perf_counter() - t0
        print(f"256^3 (hard): {seconds_256:.1f} s")

    print("RESULT " + " ".join(f"{n}_dice={d:.4f}" for n, d in mean_dice.items()) + f" seconds_256={seconds_256:.1f}")


if __name__ == "__main__":
    main()
