"""Synthetic PXCT volumes of a Ni-YSZ electrode with exact ground-truth labels.

Two parts, both deterministic functions of ``seed``:

1. Microstructure.  Two independent Gaussian random fields (white noise smoothed by a
   Gaussian of ``feature_px`` voxels): field A decides pore vs solid, field B decides
   Ni vs YSZ inside the solid.  Thresholds are quantiles, so the label fractions hit
   ``fractions`` (pore, YSZ, Ni) almost exactly.  Two fields are needed because one field
   with two thresholds would always put YSZ between pore and Ni, and nickel would never
   touch pore (no triple-phase boundary, unlike a real electrode).  At 30/45/25 % every
   phase percolates: in 200x256x256 (seeds 0-2) the largest connected component holds
   98-100 % of the pore and YSZ and 96-100 % of the Ni (real volume: 85 %, 99 %, 96 %).
2. Scanner.  Each voxel is rendered at 2x resolution (the 8 sub-voxel centres of a 2x2x2
   block, fields interpolated linearly) and the electron densities (pore 0, YSZ 1.63,
   Ni 2.56 e/A^3) are averaged, so voxels on a boundary get partial-volume values.  The
   label is the phase at the voxel centre.  Then: Gaussian PSF blur, Poisson (shot) noise,
   ring artefacts about the rotation axis (the same in every z-slice), a smooth in-plane
   shading, a slow offset drift along z, Gaussian noise, and the beamline's linear map to
   uint16 counts (``OFFSET + GAIN * density``, fitted to the real soc_pxct volume, where
   pore/YSZ/Ni average about 22400/35000/40800 counts).

Presets (``PRESETS``) keep the microstructure and change only the scanner, so the same
seed gives the same labels in every preset.  Multi-Otsu (``xtrain.evaluate.baselines.otsu_segment``)
Dice against the exact labels, 64x256x256, seed 0, measured with ``python bench/synth.py``
(generator version 1):

    preset   pore    YSZ     Ni      mean
    easy     0.983   0.958   0.944   0.962   like the real soc_pxct volume (0.966 vs its manual labels)
    medium   0.974   0.912   0.878   0.921   more blur and noise, faint rings and drift
    hard     0.936   0.770   0.737   0.815   strong drift along z, rings and in-plane shading: one
                                              global threshold cannot fit every slice, context can

Other seeds move the hard score by about +-0.05 (the artefacts' shapes are random too).
A 256^3 volume takes ~10 s to generate on 2 cores (``xtrain synth`` ~24 s including the
compressed store write) and ~0.75 GB at peak (the whole volume is held in memory, ~45 bytes
per voxel).  Per-slice multi-Otsu reaches 0.92 on hard: the z-drift costs about 0.1, the
rings, shading and noise the rest.

Feature size: the mean chord lengths (pore/YSZ/Ni) of the real volume's manual labels are
33/39/36 px; the defaults (``feature_px=12``, ``ni_feature_px=20``) give 31/42/33 px.

Public API: ``generate`` (arrays in memory), ``synthesize`` (a store, as ``xtrain synth``
writes it), ``PRESETS``, ``SynthParams``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ..errors import InvalidInputError, UnknownNameError
from .stats import IntensityStats
from .store import check_output, default_layout, write_store

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump whenever the same (preset, seed, shape) would give different voxels
CLASSES = ("pore", "ysz", "ni")
DENSITY = (0.0, 1.63, 2.56)  # electron density of pore, YSZ, Ni (e/A^3)
OFFSET = 22600.0  # counts of density 0: least-squares fit of the three phase means of soc_pxct
GAIN = 7250.0  # counts per e/A^3 (same fit)
VOXEL_SIZE_NM = 10.0
TRUNCATE = 3.0  # Gaussian kernels are cut at 3 sigma (the field's tails past that are ~1 %)
COARSE_SIGMA = 6.0  # random fields are drawn on a coarser grid while still this smooth there

# One independent random stream per component (SeedSequence.spawn), so that e.g. changing
# the noise of a preset leaves the microstructure untouched.  Append only: reordering
# changes every volume.
_STREAMS = ("pore_field", "ni_field", "poisson", "rings", "shading", "drift", "noise")


@dataclass(frozen=True)
class SynthParams:
    """Everything that defines a synthetic volume apart from its shape and seed.

    The defaults are the microstructure shared by all presets and a clean scanner; the
    presets change only the scanner fields.
    Densities and artefact amplitudes are in e/A^3 (Ni-YSZ contrast is 0.93, pore-YSZ 1.63);
    lengths in output voxels.
    """

    fractions: tuple[float, float, float] = (0.30, 0.45, 0.25)  # pore, YSZ, Ni
    feature_px: float = 12.0  # sigma of the Gaussian that smooths the white noise of field A (pore/solid)
    ni_feature_px: float = 20.0  # the same for field B (Ni/YSZ): coarser, so Ni grains are as big as pores
    psf_px: float = 0.5  # sigma of the Gaussian point-spread function (0: none)
    photons: float = 0.0  # detected photons per e/A^3 per voxel for Poisson noise (0: none)
    noise: float = 0.05  # std of additive Gaussian noise
    rings: float = 0.0  # std of the ring profile (rings sit at ~15 % of the radii)
    shading: float = 0.0  # peak amplitude of a smooth in-plane background
    drift: float = 0.0  # peak amplitude of the slow offset drift along z


PRESETS: dict[str, SynthParams] = {
    # about the real soc_pxct volume (multi-Otsu Dice 0.966 against its manual labels)
    "easy": SynthParams(psf_px=0.8, noise=0.22),
    "medium": SynthParams(psf_px=1.0, photons=100.0, noise=0.24, rings=0.1, drift=0.15),
    # noise alone would leave Otsu at ~0.95: the artefacts make the difference
    "hard": SynthParams(psf_px=1.0, photons=100.0, noise=0.2, rings=0.25, shading=0.3, drift=0.55),
}


# ----------------------------------------------------------------------------- checks


def resolve_preset(preset: str | SynthParams) -> tuple[str, SynthParams]:
    """(name, parameters) of a preset name or of a ``SynthParams`` given directly ("custom")."""
    if isinstance(preset, SynthParams):
        return "custom", preset
    if preset not in PRESETS:
        raise UnknownNameError("preset", str(preset), PRESETS)
    return preset, PRESETS[preset]


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as a (Z, Y, X) tuple of positive ints, or InvalidInputError."""
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise InvalidInputError(f"shape must be 3 positive integers (Z, Y, X), e.g. 64,256,256; got {shape!r}") from None
    if len(dims) != 3 or min(dims) < 1 or any(float(n) != d for n, d in zip(shape, dims)):
        raise InvalidInputError(f"shape must be 3 positive integers (Z, Y, X), e.g. 64,256,256; got {tuple(shape)}")
    return dims  # type: ignore[return-value]


def _check_params(p: SynthParams) -> None:
    f = np.asarray(p.fractions, dtype=float)
    if f.shape != (3,) or np.any(f <= 0) or not math.isclose(float(f.sum()), 1.0, abs_tol=1e-6):
        raise InvalidInputError(f"fractions must be 3 positive numbers summing to 1, got {p.fractions}")
    for name in ("feature_px", "ni_feature_px"):
        if getattr(p, name) <= 0:
            raise InvalidInputError(f"{name} must be > 0, got {getattr(p, name)}")
    for name in ("psf_px", "photons", "noise", "rings", "shading", "drift"):
        if getattr(p, name) < 0:
            raise InvalidInputError(f"{name} must be >= 0, got {getattr(p, name)}")


# ----------------------------------------------------------------------------- microstructure


def _gaussian_field(shape: tuple[int, int, int], sigma: float, rng: np.random.Generator, halo: int) -> np.ndarray:
    """Smoothed white noise, float32 (Z+2h, Y+2h, X+2h), unit-free (only its quantiles matter).

    The field is so smooth that it is drawn on a grid ``k`` times coarser, where it is
    still smoothed over ``sigma / k >= COARSE_SIGMA`` nodes, and linearly interpolated back:
    the interpolation error is below 1/(8 * COARSE_SIGMA^2) ~ 0.3 % of the field's std,
    for 2k^3 times less filtering work (the bulk of the run time at k=1).

    The noise is drawn with a margin of one kernel radius, cut after filtering along each
    axis, so the field is stationary right up to the faces: no mirror images (mode
    "reflect") and no periodicity (mode "wrap").  ``halo`` extra voxels stay on every side
    for the sub-voxel interpolation.
    """
    k = max(1, int(sigma // COARSE_SIGMA))
    sigma_c = sigma / k
    radius = int(math.ceil(TRUNCATE * sigma_c))
    fine = tuple(n + 2 * halo for n in shape)
    nodes = tuple((n - 1) // k + 2 for n in fine)  # coarse nodes covering the fine grid, plus one
    field = rng.standard_normal(tuple(n + 2 * radius for n in nodes), dtype=np.float32)
    for axis in range(3):  # separable: three 1D passes, each trimming its own margin
        field = ndimage.gaussian_filter1d(field, sigma_c, axis=axis, truncate=TRUNCATE, mode="constant")
        keep = [slice(None)] * 3
        keep[axis] = slice(radius, field.shape[axis] - radius)
        field = np.ascontiguousarray(field[tuple(keep)])
    if k == 1:
        return field[: fine[0], : fine[1], : fine[2]]
    for axis in range(3):  # fine voxel j sits at coarse coordinate j / k
        pos = np.arange(fine[axis]) / k
        i0 = np.floor(pos).astype(np.intp)
        w = np.expand_dims((pos - i0).astype(np.float32), tuple(a for a in range(3) if a != axis))
        field = np.take(field, i0, axis=axis) * (1 - w) + np.take(field, i0 + 1, axis=axis) * w
    return field


def _shift_quarter(field: np.ndarray, axis: int, step: int) -> np.ndarray:
    """Linear interpolation a quarter voxel towards ``step`` (-1 or +1) along ``axis``.

    ``field`` has a one-voxel halo along ``axis``; the result has none.  A quarter voxel is
    where the centres of the 2x2x2 sub-voxels of a voxel lie.
    """
    n = field.shape[axis] - 2
    centre = [slice(None)] * 3
    centre[axis] = slice(1, n + 1)
    neighbour = [slice(None)] * 3
    neighbour[axis] = slice(1 + step, n + 1 + step)
    out = field[tuple(centre)] * np.float32(0.75)
    out += field[tuple(neighbour)] * np.float32(0.25)
    return out


def microstructure(shape: tuple[int, int, int], params: SynthParams,
                   streams: dict[str, np.random.Generator]) -> tuple[np.ndarray, np.ndarray]:
    """Labels (Z, Y, X) uint8 at voxel centres and partial-volume density (Z, Y, X) float32.

    The density is the mean over the 8 sub-voxels of each voxel (2x rendering, then 2x2x2
    mean) without ever holding the 8x larger volume.
    """
    a = _gaussian_field(shape, params.feature_px, streams["pore_field"], halo=1)
    b = _gaussian_field(shape, params.ni_feature_px, streams["ni_field"], halo=1)
    inner = (slice(1, -1),) * 3
    pore_frac, _, ni_frac = params.fractions
    # Quantile thresholds: pore = A below its pore_frac quantile; Ni = B above the quantile
    # that leaves ni_frac of all voxels inside the solid.
    t_a = np.float32(np.quantile(a[inner], pore_frac))
    solid = a[inner] >= t_a
    t_b = np.float32(np.quantile(b[inner][solid], 1.0 - ni_frac / (1.0 - pore_frac)))
    labels = solid.astype(np.uint8)
    labels += solid & (b[inner] > t_b)
    del solid

    # Count, over the 8 sub-voxels, how many are solid and how many are Ni.
    n_solid = np.zeros(shape, dtype=np.uint8)
    n_ni = np.zeros(shape, dtype=np.uint8)
    for sz in (-1, 1):
        az, bz = _shift_quarter(a, 0, sz), _shift_quarter(b, 0, sz)
        for sy in (-1, 1):
            azy, bzy = _shift_quarter(az, 1, sy), _shift_quarter(bz, 1, sy)
            for sx in (-1, 1):
                sub_solid = _shift_quarter(azy, 2, sx) >= t_a
                n_solid += sub_solid
                n_ni += sub_solid & (_shift_quarter(bzy, 2, sx) > t_b)
    del a, b, az, bz, azy, bzy
    rho_ysz, rho_ni = np.float32(DENSITY[1]), np.float32(DENSITY[2])
    density = n_solid.astype(np.float32) * (rho_ysz / 8)
    density += n_ni.astype(np.float32) * ((rho_ni - rho_ysz) / 8)
    return labels, density


# ----------------------------------------------------------------------------- scanner


def _rings(shape_yx: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(Y, X) float32 ring pattern of unit std per ring: sharp rings about a rotation axis
    near the slice centre, as a miscalibrated detector pixel leaves them in every slice."""
    ny, nx = shape_yx
    cy = (ny - 1) / 2 + rng.uniform(-0.05, 0.05) * ny
    cx = (nx - 1) / 2 + rng.uniform(-0.05, 0.05) * nx
    radius = np.hypot(*np.meshgrid(np.arange(ny) - cy, np.arange(nx) - cx, indexing="ij"))
    n_r = int(radius.max()) + 2
    profile = rng.standard_normal(n_r) * (rng.random(n_r) < 0.15)  # one ring at ~15 % of the radii
    return np.interp(radius, np.arange(n_r), profile).astype(np.float32)


def _shading(shape_yx: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(Y, X) float32 smooth background in [-1, 1]: a few plane waves as long as the slice."""
    ny, nx = shape_yx
    y = np.arange(ny, dtype=np.float64)[:, None] / max(ny, 1)
    x = np.arange(nx, dtype=np.float64)[None, :] / max(nx, 1)
    out = np.zeros((ny, nx))
    for _ in range(4):
        ky, kx = rng.uniform(-1.0, 1.0, size=2)
        out += rng.standard_normal() * np.cos(2 * np.pi * (ky * y + kx * x) + rng.uniform(0, 2 * np.pi))
    peak = np.abs(out).max()
    return (out / peak if peak > 0 else out).astype(np.float32)


def _drift(depth: int, rng: np.random.Generator) -> np.ndarray:
    """(Z,) float32 slow curve in [-1, 1]: a ramp plus one slow oscillation over the depth."""
    t = np.linspace(0.0, 1.0, depth)
    curve = rng.uniform(-1, 1) * (2 * t - 1) + np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 2 * np.pi))
    peak = np.abs(curve).max()
    return (curve / peak if peak > 0 else curve).astype(np.float32)


def scanner(density: np.ndarray, params: SynthParams, streams: dict[str, np.random.Generator]) -> np.ndarray:
    """What the beamline delivers for a (Z, Y, X) density: uint16 counts, same shape."""
    x = density
    if params.psf_px > 0:
        x = ndimage.gaussian_filter(x, params.psf_px, truncate=TRUNCATE, mode="reflect")
    if params.photons > 0:
        # Shot noise of the detected photons; float64 lam is what numpy's Poisson sampler takes.
        lam = np.maximum(x, 0, dtype=np.float64) * params.photons
        x = (streams["poisson"].poisson(lam) / params.photons).astype(np.float32)
        del lam
    _, ny, nx = x.shape
    if params.rings > 0:
        x += np.float32(params.rings) * _rings((ny, nx), streams["rings"])[None]
    if params.shading > 0:
        x += np.float32(params.shading) * _shading((ny, nx), streams["shading"])[None]
    if params.drift > 0:
        x += np.float32(params.drift) * _drift(x.shape[0], streams["drift"])[:, None, None]
    if params.noise > 0:
        x += np.float32(params.noise) * streams["noise"].standard_normal(x.shape, dtype=np.float32)
    counts = x * np.float32(GAIN)
    counts += np.float32(OFFSET)
    np.rint(counts, out=counts)
    np.clip(counts, 0, 65535, out=counts)
    return counts.astype(np.uint16)


# ----------------------------------------------------------------------------- public API


def phase_levels() -> dict[str, int]:
    """Noise-free uint16 value of each pure phase."""
    return {name: int(round(OFFSET + GAIN * rho)) for name, rho in zip(CLASSES, DENSITY)}


def generate(shape: Sequence[int], preset: str | SynthParams = "medium",
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A synthetic volume in memory: (image (Z, Y, X) uint16, labels (Z, Y, X) uint8, info).

    ``info`` is what ``synthesize`` stores as ``source``: kind, generator version, preset,
    seed, shape, the parameters, the pure-phase levels and the label fractions.
    """
    dims = check_shape(shape)
    name, params = resolve_preset(preset)
    _check_params(params)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    t0 = time.perf_counter()
    children = np.random.SeedSequence(int(seed)).spawn(len(_STREAMS))
    streams = {key: np.random.default_rng(child) for key, child in zip(_STREAMS, children)}
    labels, density = microstructure(dims, params, streams)
    image = scanner(density, params, streams)
    del density
    fractions = np.bincount(labels.ravel(), minlength=len(CLASSES)) / labels.size
    info = {
        "kind": "synthetic",
        "generator": "xtrain.data.synth",
        "version": GENERATOR_VERSION,
        "preset": name,
        "seed": int(seed),
        "shape": list(dims),
        "params": dataclasses.asdict(params),
        "levels": phase_levels(),
        "fractions": {c: round(float(f), 6) for c, f in zip(CLASSES, fractions)},
    }
    log.debug("generated %s %s seed %d in %.1f s", name, dims, seed, time.perf_counter() - t0)
    return image, labels, info


def synthesize(out: str | os.PathLike, shape: Sequence[int] = (128, 256, 256), preset: str | SynthParams = "medium",
               seed: int = 0, chunks: tuple[int, int, int] | None = None, overwrite: bool = False) -> Path:
    """Write a synthetic volume as a store (``image`` uint16 + ``labels`` uint8) at ``out``."""
    dims = check_shape(shape)
    resolve_preset(preset)  # fail on a bad name before any work
    check_output(out, overwrite)
    log.info("synthesising a %s volume %s (seed %d)", preset if isinstance(preset, str) else "custom",
             "x".join(map(str, dims)), seed)
    image, labels, info = generate(dims, preset=preset, seed=seed)
    with write_store(out, dims, default_layout(dims, chunks), overwrite=overwrite) as w:
        img = w.create("image", dims, np.uint16)
        lab = w.create("labels", dims, np.uint8)
        stats = IntensityStats(np.uint16)
        for sl in tqdm(list(w.slabs(dims[0])), desc="writing", unit="slab", disable=None):
            img[sl] = image[sl]
            lab[sl] = labels[sl]
            stats.update(image[sl])
        w.info.classes = list(CLASSES)
        w.info.voxel_size_nm = VOXEL_SIZE_NM
        w.info.stats = stats.to_dict()
        w.info.source = info
    return Path(out)
