"""Where a segmentation's errors lie: in the boundary layer of the labels, or inside the phases?

    python bench/boundary_errors.py SEG.zarr TRUTH.zarr --z 5,50
    python bench/boundary_errors.py WORK/seg/unet_scribbles10.zarr WORK/stores/crop.zarr --z 5,50

Reads z-planes [z0, z1) of both label images (``xtrain.evaluate.open_label_volume``: a segmentation's
prediction, a store's ground truth; the slab must fit in memory), and prints:

* the confusion matrix in % of the voxels (rows truth, columns prediction), as ``xtrain evaluate
  --json`` counts it;
* the error rate and the share of all errors at each 3D Euclidean distance (voxels) from the
  nearest boundary voxel of the truth (a voxel with a 6-neighbour of another class), from
  ``scipy.ndimage.distance_transform_edt``.  Distance 0 is the boundary layer itself;
* whether the errors have a direction: for each pair of classes (a, b), a < b, the voxels of a
  predicted as b against those of b predicted as a.  A boundary placed systematically on one side
  shows as one of the two far larger.

Ends with ``RESULT error_rate=… boundary_share=… within1_share=… bright_side_share=…``:
``boundary_share`` the errors at distance 0, ``within1_share`` at most 1.5 voxels away,
``bright_side_share`` the errors that give a voxel a class of higher id (brighter: pore 0 < YSZ 1 <
Ni 2) than its truth.  Unlabelled truth voxels are left out.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from xtrain.data.labels import IGNORE
from xtrain.evaluate.core import open_label_volume
from xtrain.evaluate.metrics import confusion_matrix

BINS = ((0.0, 0.5), (0.5, 1.5), (1.5, 2.5), (2.5, 4.5), (4.5, np.inf))


def boundary_layer(truth: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: voxels with a 6-neighbour of another class (both sides of every face)."""
    out = np.zeros(truth.shape, bool)
    for ax in range(truth.ndim):
        step = np.diff(truth, axis=ax) != 0
        lo, hi = [slice(None)] * truth.ndim, [slice(None)] * truth.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= step
        out[tuple(hi)] |= step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seg", help="the segmentation (xtrain segment's output, or any label image)")
    ap.add_argument("truth", help="the labels to score against (a store with ground truth, or any label image)")
    ap.add_argument("--z", default=None, help="z-planes Z0,Z1 of both (default all)")
    args = ap.parse_args()
    pred_v, truth_v = open_label_volume(args.seg), open_label_volume(args.truth)
    z0, z1 = map(int, args.z.split(",")) if args.z else (0, truth_v.shape[0])
    if pred_v.shape != truth_v.shape:
        ap.error(f"shapes differ: {pred_v.shape} (seg) against {truth_v.shape} (truth); give two label images of one volume")
    if not 0 <= z0 < z1 <= truth_v.shape[0]:
        ap.error(f"--z {z0},{z1} is not a slab of the {truth_v.shape[0]} z-planes; give Z0,Z1 with 0 <= Z0 < Z1 <= {truth_v.shape[0]}")
    box = ((z0, z1), (0, truth_v.shape[1]), (0, truth_v.shape[2]))
    pred, truth = pred_v.read(box), truth_v.read(box)
    labelled = truth != IGNORE
    k = int(max(pred.max(), truth[labelled].max())) + 1
    cm = confusion_matrix(pred, truth, k, IGNORE)  # xtrain evaluate's own count
    print("confusion matrix, % of the labelled voxels (rows truth, columns prediction):")
    for row in cm / cm.sum() * 100:
        print("  " + "  ".join(f"{v:7.3f}" for v in row))
    # the distance transform's zeros are the boundary voxels; unlabelled truth counts as a class of its own here
    dist = ndimage.distance_transform_edt(~boundary_layer(truth))
    err = (pred != truth) & labelled
    n_err = max(int(err.sum()), 1)
    print(f"error rate {err.sum() / labelled.sum():.4f} ({int(err.sum())} voxels)")
    shares = []
    for lo, hi in BINS:
        m = (dist >= lo) & (dist < hi) & labelled
        share = float((err & m).sum() / n_err)
        shares.append(share)
        print(f"  distance [{lo:g}, {hi:g}) voxels: {m.sum() / labelled.sum() * 100:5.1f} % of the voxels, "
              f"error rate {err[m].mean() if m.any() else float('nan'):.4f}, {share * 100:5.1f} % of the errors")
    for a in range(k):
        for b in range(a + 1, k):
            print(f"  class {a} predicted {b}: {cm[a, b]} voxels; class {b} predicted {a}: {cm[b, a]} voxels")
    bright = float(np.triu(cm, 1).sum() / n_err)
    print(f"RESULT error_rate={err.sum() / labelled.sum():.4f} boundary_share={shares[0]:.3f} "
          f"within1_share={shares[0] + shares[1]:.3f} bright_side_share={bright:.3f}")


if __name__ == "__main__":
    main()
