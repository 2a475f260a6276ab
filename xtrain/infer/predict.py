"""The predictor: class probabilities of one block from 2D tiles, blended by a smooth window.

    predictor = Predictor(model, in_channels=3, num_classes=3, tile=256, halo=16, axes="z")
    probs = predictor.predict(volume, core)          # (K, z, y, x) float32 for the block core

For every slicing axis (``axes="z"``: planes normal to z; ``"zyx"``: also normal to y and
to x, averaged), each plane of the core is cut into overlapping tiles planned per pass to
the plane (``blocks.plan_tiles``: the fewest equal tiles of at most T voxels a side, so a
501 x 501 plane with T = 512 is one tile, and a y-pass plane of a 250-deep volume is one
tile tall) on the *global* grid of blocks.py.  A tile's input is the plane and its neighbours along the
slicing axis (C = in_channels 2.5D slices, mirrored at the volume border, as in training):
(B, C, T, T) -> model -> softmax (B, K, T, T).  Overlapping tiles are blended MONAI-style:

    p(voxel) = sum_t w_t(voxel) * p_t(voxel) / sum_t w_t(voxel)

with w a separable Gaussian window (sigma = T/8, MONAI's default) or a cosine (Hann)
window, so tile borders - where the network has seen least context - count least.
Adjacent tiles overlap by 2 * halo voxels.  ``tta`` averages the probabilities of the
four in-plane flips of every tile.

Why the output is bit-identical whatever the block size or worker count:
  * the tiles and their inputs do not depend on the block (global grid, global mirror);
  * every voxel adds the same tiles in the same (sorted) order, in float32;
  * the model always runs on batches of exactly ``batch_size`` tiles (the last batch is
    zero-padded): oneDNN picks kernels by batch size, and the same tile in a batch of 5
    and of 8 differs in the 7th digit.  It also depends on the thread count, which the
    caller fixes per worker (segment.py records it for --resume).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from ..data.volumes import Volume
from ..geometry import Box, reflect
from ..stop import never
from .blocks import input_box, plan_tiles, tiles_touching

log = logging.getLogger(__name__)

WINDOWS = ("gaussian", "cosine")
AXES = {"z": (0,), "zyx": (0, 1, 2)}
TILE_VOXELS = 1 << 18  # default batch: about 256k input voxels per forward (4 tiles of 256^2)


def window_1d(n: int, kind: str) -> np.ndarray:
    """Blending weights along one tile edge, peak 1, strictly positive (edge voxels of the
    volume are covered by tile edges only, and must not divide by zero)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    if kind == "gaussian":
        w = np.exp(-0.5 * ((i - n / 2) / (0.125 * n)) ** 2)
    elif kind == "cosine":
        w = np.sin(np.pi * i / n) ** 2  # Hann
    else:
        raise ValueError(f"unknown window '{kind}'; valid: {', '.join(WINDOWS)}")
    return np.maximum(w / w.max(), 1e-4)


def window_2d(nu: int, nv: int, kind: str) -> np.ndarray:
    """(nu, nv) float32 separable window."""
    return np.outer(window_1d(nu, kind), window_1d(nv, kind)).astype(np.float32)


class PredictionStopped(Exception):
    """``should_stop()`` turned true while a block was being predicted: the block is abandoned
    (nothing of it is written) and runs again on ``--resume``."""


def inference_model(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``model`` for prediction: eval mode, every Conv2d -> BatchNorm2d pair inside
    an ``nn.Sequential`` folded into one convolution (``torch.nn.utils.fuse_conv_bn_eval``;
    the same function of the input up to float rounding, about 1e-7), in ``channels_last``
    memory format.  The caller's model is left as it was (training validates a live model).

    Why: on 2 CPU cores a width-16 depth-4 U-Net on (4, 1, 256, 256) batches runs at
    0.61 Mvox/s as is, 0.87 in channels_last and 0.97 with BatchNorm folded in as well
    (oneDNN's NHWC convolutions skip a reorder per layer).  Training stays in the default
    format: there channels_last was slower (GroupNorm, 128^2 patches: 12.0 vs 16.3 patches/s).
    """
    model = copy.deepcopy(model).eval()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                conv, norm = seq[i], seq[i + 1]
                # without running statistics eval-mode BatchNorm normalises by the batch: not foldable
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None:
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return model.to(device=device, memory_format=torch.channels_last)


class Predictor:
    """Blended 2D/2.5D tile prediction of block cores (no I/O besides ``volume.read``)."""

    hard = False  # soft probabilities (the threshold baselines' ThresholdPredictor predicts one-hot ones)

    def __init__(self, model: nn.Module, in_channels: int, num_classes: int, *, tile: int = 256, halo: int = 16,
                 axes: str = "z", tta: bool = False, window: str = "gaussian", batch_size: int | None = None,
                 device: str | torch.device = "cpu"):
        if in_channels < 1 or in_channels % 2 == 0:
            raise ValueError(f"in_channels={in_channels} must be odd (a centre slice and its neighbours)")
        if not 0 <= 2 * halo < tile:
            raise ValueError(f"halo={halo} must satisfy 0 <= 2*halo < tile={tile}")
        self.model = inference_model(model, device)
        self.device = torch.device(device)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.context = in_channels // 2  # neighbour slices on each side of the centre slice
        self.tile, self.halo, self.stride = tile, halo, tile - 2 * halo
        self.axes = AXES[axes]
        self.tta, self.window = tta, window
        self.batch_size = batch_size

    # ------------------------------------------------------------------ the model on tiles

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(B, C, U, V) float32 normalised -> (B, K, U, V) float32 probabilities (TTA-averaged)."""
        flips = [()] + ([(2,), (3,), (2, 3)] if self.tta else [])
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        total = None
        with torch.inference_mode():
            for dims in flips:
                logits = self.model(t.flip(dims) if dims else t).float()
                p = torch.softmax(logits, dim=1)
                p = p.flip(dims) if dims else p
                total = p if total is None else total + p
        return (total / len(flips)).contiguous().cpu().numpy()  # back to (B, K, U, V) row-major

    def batch_for(self, tu: int, tv: int) -> int:
        return self.batch_size or int(np.clip(TILE_VOXELS // (tu * tv), 1, 16))

    # ------------------------------------------------------------------ one block

    def input_box(self, core: Box, shape: tuple[int, int, int]) -> Box:
        """The box a block with ``core`` reads: its tiles and 2.5D slices (``blocks.input_box``)."""
        return input_box(core, shape, self.axes, self.tile, self.stride, self.context)

    def predict(self, volume: Volume, core: Box, should_stop: Callable[[], bool] = never) -> np.ndarray:
        """Probabilities (K, z, y, x) float32 of the block ``core`` (reads only its read box).

        ``should_stop`` is asked before every batch of tiles; once it is true the block is
        abandoned with ``PredictionStopped`` (a 250x501x501 ``--axes zyx`` block takes minutes
        on a CPU, longer than Slurm's warning before SIGKILL)."""
        box = self.input_box(core, volume.shape)
        data = volume.read(box)  # (z, y, x) normalised, the core plus its tiles and 2.5D slices
        out = np.zeros((self.num_classes, *(b - a for a, b in core)), np.float32)
        for axis in self.axes:
            self._axis_pass(data, box, core, volume.shape, axis, out, should_stop)  # adds the pass into out
        if len(self.axes) > 1:
            out /= len(self.axes)
        return out

    def _axis_pass(self, data: np.ndarray, box: Box, core: Box, shape: tuple[int, int, int],
                   axis: int, out: np.ndarray, should_stop: Callable[[], bool] = never) -> None:
        """Add the blended probabilities of the core from the planes normal to ``axis`` into
        ``out`` (K, z, y, x)."""
        u, v = (d for d in range(3) if d != axis)
        order = (axis, u, v)  # plane axes keep volume order: (Y, X) for z, (Z, X) for y, (Z, Y) for x
        view = data.transpose(order)  # (A, U, V) read box
        lo = [box[d][0] for d in order]
        (a0, a1), (u0, u1), (v0, v1) = (core[d] for d in order)
        (tu, starts_u), (tv, starts_v) = plan_tiles(shape[u], self.tile, self.halo), plan_tiles(shape[v], self.tile,
                                                                                                self.halo)
        tiles = [(su, sv)  # sorted: every voxel adds its tiles in the same order in any block
                 for su in tiles_touching(starts_u, tu, u0, u1).tolist()
                 for sv in tiles_touching(starts_v, tv, v0, v1).tolist()]
        # one tile covers the whole plane: nothing to blend (weights 1 keep the probabilities exact)
        whole = len(starts_u) == 1 and len(starts_v) == 1
        w = np.ones((tu, tv), np.float32) if whole else window_2d(tu, tv, self.window)

        # where each tile meets the core, in tile and in core coordinates; and the weight sum
        cuts = []
        wsum = np.zeros((u1 - u0, v1 - v0), np.float32)
        for su, sv in tiles:
            iu0, iu1, iv0, iv1 = max(su, u0), min(su + tu, u1), max(sv, v0), min(sv + tv, v1)
            in_tile = (slice(iu0 - su, iu1 - su), slice(iv0 - sv, iv1 - sv))
            in_core = (slice(iu0 - u0, iu1 - u0), slice(iv0 - v0, iv1 - v0))
            cuts.append((in_tile, in_core, w[in_tile]))
            wsum[in_core] += w[in_tile]

        acc = np.zeros((self.num_classes, a1 - a0, u1 - u0, v1 - v0), np.float32)  # (K, A, U, V)
        items = [(p, t) for p in range(a0, a1) for t in range(len(tiles))]
        batch = self.batch_for(tu, tv)
        h = self.context
        for start in range(0, len(items), batch):
            if should_stop():
                raise PredictionStopped(f"stopped at tile batch {start // batch} of the axis-{axis} pass")
            chunk = items[start:start + batch]
            x = np.zeros((batch, self.in_channels, tu, tv), np.float32)  # zero rows pad the last batch
            for i, (p, t) in enumerate(chunk):
                su, sv = tiles[t]
                channels = reflect(np.arange(p - h, p + h + 1), 0, shape[axis]) - lo[0]
                x[i] = view[:, su - lo[1]:su - lo[1] + tu, sv - lo[2]:sv - lo[2] + tv][channels]
            probs = self.forward(x)  # (B, K, tu, tv)
            for i, (p, t) in enumerate(chunk):
                in_tile, in_core, wt = cuts[t]
                acc[(slice(None), p - a0, *in_core)] += probs[(i, slice(None), *in_tile)] * wt
        acc /= wsum
        # (K, A, U, V) -> (K, Z, Y, X)
        out += acc.transpose(0, *(1 + order.index(d) for d in range(3)))

