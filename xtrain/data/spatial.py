"""Where a volume lies in space: voxel size and origin per axis (z, y, x), in nm.

    voxel_size((20, 10, 10))          # (20.0, 10.0, 10.0): z, y, x in nm; one number: isotropic
    length_nm(0.02, "µm")             # 20.0; None for a unit that is not a length xtrain knows
    regular_axis([1.0, 1.02, 1.04])   # (1.0, 0.02): first voxel centre and step of an axis' coordinates
    cropped_origin(origin, voxel, 5)  # the origin of slices 5.. : z moved by 5 voxels
    level_transform(voxel, origin, (2, 2, 2))   # OME scale and translation of a pyramid level

The one value that travels from every input to every output is the pair ``voxel_size_nm`` (z, y, x)
and ``origin_nm`` (z, y, x): the physical position of the centre of voxel (0, 0, 0), as an
OME-Zarr ``translation`` places it.  Both are None when the input does not say (densities are then
per voxel); an input that gives a voxel size but no origin has origin (0, 0, 0), which is what
every format means by it.  What each format's metadata says and how it is written:
docs/formats.md, "Spatial metadata".

Units are read by name (OME ``UnitsLength`` symbols, UDUNITS-2 names as OME-Zarr and NeXus use
them, ImageJ's 'micron', plurals, 'µ' as the micro sign or the Greek mu, ImageJ's escaped
'\\u00B5m').  'pixel' and 'reference frame' mean uncalibrated; any other name is not taken as nm:
the reader warns and the voxel size is unknown.  Outputs are written in micrometres.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SpatialMetadataError

log = logging.getLogger(__name__)

Zyx = tuple[float, float, float]
AXES = ("z", "y", "x")
_SI = {"y": 1e-15, "z": 1e-12, "a": 1e-9, "f": 1e-6, "p": 1e-3, "n": 1.0, "µ": 1e3, "u": 1e3, "m": 1e6,
       "c": 1e7, "d": 1e8, "": 1e9, "da": 1e10, "h": 1e11, "k": 1e12}
_PREFIX = {"yocto": "y", "zepto": "z", "atto": "a", "femto": "f", "pico": "p", "nano": "n", "micro": "µ",
           "milli": "m", "centi": "c", "deci": "d", "": "", "deca": "da", "deka": "da", "hecto": "h", "kilo": "k"}
# nm per unit: the SI lengths by symbol and by name (metre/meter, singular and plural), then the rest
LENGTH_NM: dict[str, float] = {
    **{f"{p}m": f for p, f in _SI.items()},
    **{f"{name}{m}{s}": _SI[p] for name, p in _PREFIX.items() for m in ("meter", "metre") for s in ("", "s")},
    "micron": 1e3, "microns": 1e3, "å": 0.1, "angstrom": 0.1, "angstroms": 0.1, "ångström": 0.1,
    "in": 2.54e7, "inch": 2.54e7, "inches": 2.54e7, "ft": 3.048e8, "foot": 3.048e8, "feet": 3.048e8,
    "yd": 9.144e8, "yard": 9.144e8, "mi": 1.609344e12, "mile": 1.609344e12, "pt": 2.54e7 / 72, "point": 2.54e7 / 72,
    "thou": 2.54e4, "mil": 2.54e4,
}
UNCALIBRATED = ("pixel", "pixels", "px", "reference frame", "referenceframe", "voxel", "voxels")


def _unit_key(unit: Any) -> str:
    text = str(unit).strip()
    text = text.replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("\u03bc", "µ")  # ImageJ's escape, Greek mu
    return text.lower()


def length_nm(value: float, unit: Any) -> float | None:
    """``value`` in ``unit`` as nm; None when the unit is not a length (unknown, or 'pixel': uncalibrated)."""
    if unit is None:
        return None
    factor = LENGTH_NM.get(_unit_key(unit))
    return None if factor is None else float(value) * factor


def is_uncalibrated(unit: Any) -> bool:
    """'pixel', 'reference frame' or an empty unit: the file says it is not calibrated (no warning due)."""
    return unit is None or _unit_key(unit) in (*UNCALIBRATED, "")


def unit_problem(unit: Any, where: str) -> None:
    """Warn about a unit that is neither a known length nor 'uncalibrated': the voxel size is unknown then."""
    if not is_uncalibrated(unit):
        log.warning("%s gives lengths in '%s', which is not a length unit xtrain knows (nm, µm, mm, ...); the voxel "
                    "size and origin are read as unknown (densities per voxel): fix the unit, or give "
                    "--voxel-size Z,Y,X to ingest", where, unit)


def voxel_size(value: Any, what: str = "voxel size") -> Zyx | None:
    """(z, y, x) nm from one number (isotropic) or three (z, y, x); None stays None.

    Raises ``SpatialMetadataError`` for another count, or a size that is not a positive finite number."""
    if value is None:
        return None
    values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)).ravel()]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise SpatialMetadataError(f"{what} {value} has {len(values)} values; give one (isotropic) or three (z, y, x)")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise SpatialMetadataError(f"{what} {tuple(values)} nm (z, y, x) is not positive and finite; give sizes > 0")
    return (values[0], values[1], values[2])


def origin(value: Any, what: str = "origin") -> Zyx | None:
    """(z, y, x) nm of three finite numbers; None stays None.  Raises ``SpatialMetadataError``."""
    if value is None:
        return None
    values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)).ravel()]
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise SpatialMetadataError(f"{what} {value} is not three finite numbers (z, y, x); fix the metadata")
    return (values[0], values[1], values[2])


def placement(voxel: Any, where_origin: Any, where: str) -> tuple[Zyx | None, Zyx | None]:
    """The checked (voxel size, origin) pair of a volume: the origin defaults to (0, 0, 0) with a voxel size;
    without one an origin cannot be placed in nm and is dropped with a warning."""
    vs = voxel_size(voxel, f"{where}: voxel size")
    org = origin(where_origin, f"{where}: origin")
    if vs is None:
        if org is not None and any(org):
            log.warning("%s gives an origin %s but no voxel size; the origin is dropped (give --voxel-size Z,Y,X "
                        "to ingest)", where, org)
        return None, None
    return vs, org or (0.0, 0.0, 0.0)


def override(voxel: Zyx | None, org: Zyx | None, given: Any, where: str) -> tuple[Zyx | None, Zyx | None]:
    """(voxel size, origin) of a volume placed at (``voxel``, ``org``) once ``given`` (``--voxel-size``:
    one number or three, None: keep) replaces its voxel size.  A given size that differs from the
    input's is a warning; the input's origin is kept in voxels (its position in voxels times the
    given size), since the size was wrong, not the cutout."""
    new = voxel_size(given, "--voxel-size")
    if new is None:
        return voxel, org
    if voxel is None:
        return new, (0.0, 0.0, 0.0)
    if not close(new, voxel):
        log.warning("--voxel-size %s replaces the voxel size %s gives, %s", describe(new), where, describe(voxel))
    moved = tuple(o / s * v for o, s, v in zip(org, voxel, new)) if org is not None else (0.0, 0.0, 0.0)
    return new, (moved[0], moved[1], moved[2])


def regular_axis(coords: Any, n: int | None = None, where: str = "axis") -> tuple[float, float | None]:
    """(centre of the first voxel, step) of an axis' coordinates: voxel centres (n values) or bin edges
    (n + 1 values, NeXus histogram data).  The step is None for a single centre.

    Raises ``SpatialMetadataError`` for coordinates that are not evenly spaced and increasing (a grid
    xtrain cannot hold: resample the volume first) or that do not match the axis length ``n``."""
    c = np.asarray(coords, dtype=float).ravel()
    if n is not None and c.size not in (n, n + 1):
        raise SpatialMetadataError(f"{where} has {c.size} coordinates for {n} voxels; write one per voxel (or "
                                   "n + 1 bin edges)")
    if not np.isfinite(c).all():
        raise SpatialMetadataError(f"{where} holds coordinates that are not finite; fix the metadata")
    edges = n is not None and c.size == n + 1
    if c.size == 1:
        return float(c[0]), None
    steps = np.diff(c)
    step = float(steps.mean())
    if step <= 0 or np.abs(steps - step).max() > 1e-3 * abs(step):
        what = "decrease (a flipped axis)" if step <= 0 else f"are not evenly spaced (steps {steps.min():.6g} to " \
                                                              f"{steps.max():.6g})"
        raise SpatialMetadataError(f"{where}: the coordinates {what}; xtrain holds a regular (Z, Y, X) grid only: "
                                   "resample or flip the volume first")
    return (float(c[0] + step / 2) if edges else float(c[0])), step


def cropped_origin(org: Zyx | None, voxel: Zyx | None, z0: int) -> Zyx | None:
    """The origin of the slices from ``z0`` on (a z-crop moves it by z0 voxels along z)."""
    if org is None or voxel is None:
        return org
    return (org[0] + z0 * voxel[0], org[1], org[2])


def level_transform(voxel: Zyx | None, org: Zyx | None, factors: Sequence[int]) -> tuple[list[float], list[float]]:
    """OME ``scale`` and ``translation`` (z, y, x) of a pyramid level downsampled by ``factors`` from level 0.

    scale = factor x the level-0 voxel size, per axis; a level-n voxel's centre sits (f - 1) / 2 level-0
    voxels from level 0's first one, plus the origin.  Micrometres, or voxels without a voxel size."""
    v = [s / 1000.0 for s in voxel] if voxel else [1.0, 1.0, 1.0]
    o = [s / 1000.0 for s in org] if (org and voxel) else [0.0, 0.0, 0.0]
    scale = [float(f * s) for f, s in zip(factors, v)]
    shift = [float(oo + (f - 1) / 2 * s) for f, s, oo in zip(factors, v, o)]
    return scale, shift


def close(a: Zyx | None, b: Zyx | None, rtol: float = 0.01, atol: float = 1e-6) -> bool:
    """Two voxel sizes (or origins) that agree: both unknown, or equal within ``rtol`` per axis."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a, b, rtol=rtol, atol=atol))


def describe(voxel: Zyx | None, org: Zyx | None = None) -> str:
    """'20 x 10 x 10 nm (z, y, x)' (+ ', origin (z, y, x) 1000, 0, 0 nm'); 'unknown' without a voxel size."""
    if voxel is None:
        return "unknown"
    text = " x ".join(f"{v:g}" for v in voxel) + " nm (z, y, x)"
    if org is not None and any(org):
        text += ", origin " + ", ".join(f"{v:g}" for v in org) + " nm"
    return text


def from_attributes(attrs: Any, where: str) -> tuple[Zyx | None, Zyx | None] | None:
    """(voxel size, origin) from array attributes (HDF5 dataset, plain Zarr), None when they say nothing.

    Keys, first match wins: ``voxel_size_nm`` / ``pixel_size_nm`` (+ ``origin_nm``): nm by name;
    ``voxel_size`` / ``resolution`` / ``pixel_size`` (+ ``offset`` / ``origin``) with ``units`` / ``unit`` /
    ``voxel_size_units`` (one unit, or one per axis: funlib.persistence / daisy, xtrain's NeXus output).
    One number is isotropic.  A size without a unit is not taken as nm: warned about, read as unknown."""
    keys = set(attrs.keys())
    for key in ("voxel_size_nm", "pixel_size_nm"):
        if key in keys:
            return voxel_size(_plain(attrs[key]), f"{where}@{key}"), origin(_plain(attrs.get("origin_nm")),
                                                                            f"{where}@origin_nm")
    size_key = next((k for k in ("voxel_size", "resolution", "pixel_size") if k in keys), None)
    if size_key is None:
        return None
    unit_key = next((k for k in ("units", "unit", "voxel_size_units") if k in keys), None)
    size = np.atleast_1d(np.asarray(_plain(attrs[size_key]), dtype=float)).ravel()
    units = [_text(u) for u in np.atleast_1d(np.asarray(_plain(attrs[unit_key]), dtype=object)).ravel()] \
        if unit_key else []
    if not units or any(is_uncalibrated(u) for u in units):
        if not units:
            log.warning("%s@%s = %s has no unit (units attribute); it is not taken as nm: the voxel size is read as "
                        "unknown (give --voxel-size Z,Y,X to ingest)", where, size_key, size.tolist())
        return None, None
    if len(units) == 1:
        units *= max(size.size, 1)
    factors = [LENGTH_NM.get(_unit_key(u)) for u in units]
    if None in factors or len(factors) != size.size:
        unit_problem(next((u for u, f in zip(units, factors) if f is None), units), f"{where}@{unit_key}")
        return None, None
    scale = np.asarray(factors)
    vs = voxel_size(size * scale, f"{where}@{size_key}")
    off_key = next((k for k in ("offset", "origin") if k in keys), None)
    org = None
    if off_key is not None:
        off = np.atleast_1d(np.asarray(_plain(attrs[off_key]), dtype=float)).ravel()
        org = origin(off * (scale if off.size == scale.size else scale[0]), f"{where}@{off_key}")
    return vs, org


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode()
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)
