"""bench/boundary_errors.py: a segmentation whose boundary is moved one voxel into the darker phase has every
error in the truth's boundary layer and every error on the bright side; one with a blob inside a phase does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[2]


def result(tmp_path, truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "boundary_errors.py"), str(tmp_path / "pred.tif"),
                          str(tmp_path / "truth.tif"), "--z", "1,8"], capture_output=True, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    return {k: float(v) for k, v in (kv.split("=") for kv in last.split()[1:])}


def test_a_shifted_boundary_is_all_boundary_layer_and_bright_side(tmp_path):
    truth = np.zeros((9, 20, 23), np.uint8)
    truth[:, :, 11:] = 2  # pore | Ni, a plane at x = 11
    pred = truth.copy()
    pred[:, :, 10] = 2  # Ni one voxel into the pore
    r = result(tmp_path, truth, pred)
    assert abs(r["error_rate"] - 1 / 23) < 1e-4  # one x-plane of 23
    assert r["boundary_share"] == 1.0 and r["bright_side_share"] == 1.0


def test_an_error_inside_a_phase_is_not_in_the_boundary_layer(tmp_path):
    truth = np.ones((9, 20, 23), np.uint8)
    truth[:, :, 18:] = 2
    pred = truth.copy()
    pred[2:6, 5:9, 3:7] = 0  # a dark blob far from the boundary at x = 18
    r = result(tmp_path, truth, pred)
    assert r["boundary_share"] == 0.0 and r["within1_share"] == 0.0 and r["bright_side_share"] == 0.0
