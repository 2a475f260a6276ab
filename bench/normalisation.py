"""Does a voxel's class depend on what surrounds the sample?  Circular mask, outlier, crop without nickel.

    python bench/normalisation.py --work /tmp/bench-norm [--old-python PY --old-path DIR]

Trains the tests' tiny 2.5D U-Net (conftest.tiny_model: a few epochs on a 33x50x47 store whose
image is 1000 * class + 1000 + noise), then segments a new 17x101x101 volume of the same kind:

* as it is (the reference);
* masked like TomoPy's ``circ_mask`` (zeros outside a circle of radius 45): mean Dice inside
  the circle against the true labels, and agreement with the reference;
* with normalisation own / train / auto, and (``--old-python``/``--old-path``: another
  xtrain checkout, e.g. the commit before issue 12) with the old code, in a subprocess.

The last line is machine-readable:

    RESULT dice_unmasked=... dice_masked=... dice_masked_old=... agree_masked=... ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SHAPE = (17, 101, 101)


def dice(a: np.ndarray, b: np.ndarray, k: int = 3) -> float:
    return float(np.mean([2 * np.sum((a == c) & (b == c)) / max(np.sum(a == c) + np.sum(b == c), 1)
                          for c in range(k) if np.any(b == c)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None)
    parser.add_argument("--old-python", default=None, help="python of an older xtrain install")
    parser.add_argument("--old-path", default=None, help="PYTHONPATH of the older xtrain checkout")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-norm-"))
    work.mkdir(parents=True, exist_ok=True)

    from conftest import make_store, tiny_config
    from xtrain.infer import open_segmentation, segment
    from xtrain.train.loop import fit

    model = work / "run" / "model.pt"
    if not model.exists():
        (work / "run").mkdir(exist_ok=True)
        fit(tiny_config(make_store(work / "train.zarr", shape=(33, 50, 47), seed=1), "train.epochs=6",
                        "data.slices=3"), work / "run")

    rng = np.random.default_rng(11)
    truth = rng.integers(0, 3, size=SHAPE, dtype=np.uint8)
    image = (truth.astype(np.float64) * 1000 + 1000 + rng.normal(0, 50, size=SHAPE)).astype(np.uint16)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    inside = (yy - 50) ** 2 + (xx - 50) ** 2 <= 45**2
    masked = np.where(inside, image, 0).astype(np.uint16)
    tifffile.imwrite(work / "full.tif", image)
    tifffile.imwrite(work / "masked.tif", masked)
    core = np.broadcast_to(inside, SHAPE)
    opts = dict(tile=64, halo=8, axes="z", clean=False)  # the z pass, whatever the model records

    def run(name: str, src: str, **kw) -> np.ndarray:
        out = work / f"{name}.zarr"
        if not out.exists():
            segment(model, work / src, out, **opts, **kw)
        return np.asarray(open_segmentation(out).labels[:])

    ref = run("full", "full.tif")
    res = {"dice_unmasked": dice(ref[core], truth[core])}
    for mode in ("auto", "own", "train"):
        seg = run(f"masked_{mode}", "masked.tif", normalisation=mode)
        res[f"dice_masked_{mode}"] = dice(seg[core], truth[core])
        res[f"agree_masked_{mode}"] = float(np.mean(seg[core] == ref[core]))
    if args.old_python and args.old_path:
        out = work / "masked_old.zarr"
        code = (f"from xtrain.infer import segment; segment({str(model)!r}, {str(work / 'masked.tif')!r}, "
                f"{str(out)!r}, tile=64, halo=8)")
        if not out.exists():
            subprocess.run([args.old_python, "-c", code], check=True, cwd=args.old_path,  # cwd: not this checkout
                           env={"PYTHONPATH": args.old_path, "PATH": "/usr/bin:/bin"})
        seg = np.asarray(open_segmentation(out).labels[:])
        res["dice_masked_old"] = dice(seg[core], truth[core])
        res["agree_masked_old"] = float(np.mean(seg[core] == ref[core]))
    print(json.dumps(res, indent=1))
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
