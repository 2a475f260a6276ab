"""Which planes to label next: rank planes by the model's uncertainty and spread the picks.

    picks = suggest("runs/soc/model.pt", "scan.zarr", n=5, exclude_labelled="scan-labels.zarr", out="next/")
    picks[0].axis, picks[0].index, picks[0].score     # "z", 137, 0.183: label z-plane 137 first

    xtrain suggest runs/soc/model.pt scan.zarr --n 5 --exclude-labelled scan-labels.zarr --out next/

The pieces, usable on their own (the napari widget ranks a segmentation it made itself):

    sums = plane_scores(predictor, volume, ("entropy",))        # blockwise: per score, per axis, one value a plane
    scores = entropy_scores(store.entropy)                      # the same from a --probabilities segmentation
    picks = pick_planes({"z": scores["z"]}, n=5, spacing=5, labelled={"z": [20, 60]})

Scores (one number per plane normal to z, y or x; higher: label it first):

* ``entropy``: the mean over the plane of the Shannon entropy H(p) = -sum_k p_k ln p_k (nats) of the
  (pass-averaged) class probabilities, as ``segment --probabilities`` writes it: uncertainty sampling
  (Settles, *Active Learning Literature Survey*, 2009, sec. 3.1).
* ``disagreement``: the mean over the plane of H(mean_a p_a) - mean_a H(p_a), the generalised
  Jensen-Shannon divergence between the z, y and x passes (``--axes zyx``): query by committee with
  the three slicing directions as the committee (Seung, Opper & Sompolinsky 1992; the
  "KL divergence to the mean" of McCallum & Nigam 1998).  It is high where the passes disagree, not
  where all three are unsure alike.
* ``boundary``: the share of the plane's boundary voxels (a 6-neighbour has another predicted class)
  whose top-two margin p_(1) - p_(2) is below ``MARGIN``: margin sampling (Scheffer, Decomain &
  Wrobel 2001) restricted to the phase boundaries, where TPB and Dice are decided.  0 for a plane
  without boundary.
* ``spread``: no model at all: each pick is the plane farthest from every labelled or already
  picked plane of its axis (farthest-first traversal; a volume end counts as half as near), so the
  labels cover the volume evenly.  The baseline every uncertainty score has to beat.

Scores are computed block by block (``segment``'s blocks: ``default_block``): only one block's
probabilities are ever in memory, and per-plane sums accumulate in float64, so a volume of any size
works.  A block is predicted one voxel wider on each side when ``boundary`` is asked for (its
neighbours), so every score is independent of the block size.

Picks (``pick_planes``): the planes in descending score, skipping planes already labelled (the
store's label census: ``LabelCensus.painted``) and any plane fewer than ``spacing`` planes from a
labelled plane or an earlier pick of the same axis (neighbouring planes look alike: a second label
there teaches little).  Which score picks best is measured by ``bench/active_learning.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.labels import AXES, LabelCensus, census
from ..data.normalise import normalised_volume
from ..data.store import open_store
from ..data.volumes import Volume, open_volume
from ..errors import InvalidInputError, OutputExistsError, ShapeMismatchError
from ..geometry import Box, grow
from ..io import atomic_write, write_csv
from ..stop import never
from .blocks import block_grid
from .predict import Predictor

log = logging.getLogger(__name__)

SCORES = ("entropy", "disagreement", "boundary", "spread")
# the simplest rule that did as well as any: on the real volume (bench/active_learning.py, 3 seeds x 3 rounds)
# no uncertainty score beat planes spread evenly, nor adding no planes at all (docs/measurements.md); spread
# needs no prediction pass, and is the same for the same labelled planes
DEFAULT_SCORE = "spread"
SPACING = 5  # planes: a 2.5D model's 3 or 5 input slices reach +-2 planes; closer picks look alike
MARGIN = 0.5  # boundary score: a voxel whose two likeliest classes are closer than this is uncertain
CSV_NAME = "suggestions.csv"
_EPS = np.float32(1e-12)


@dataclass(frozen=True)
class Pick:
    """One plane to label: normal to ``axis`` ("z", "y", "x") at ``index`` (volume coordinates)."""

    axis: str
    index: int
    score: float
    rank: int  # 1: label this one first


# ----------------------------------------------------------------------------- per-voxel maps


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """(K, z, y, x) probabilities -> (z, y, x) float32 Shannon entropy in nats (0 log 0 = 0), as ``segment``
    writes it (``xtrain.infer.write.ZarrSink``)."""
    return np.maximum(-(probs * np.log(np.maximum(probs, _EPS))).sum(axis=0), 0).astype(np.float32, copy=False)


def boundary_maps(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boundary, uncertain) bool (z, y, x) maps of (K, z, y, x) probabilities: a voxel with a 6-neighbour
    of another predicted class, and a voxel whose top-two margin is below ``MARGIN``.  The outermost voxels
    compare with the neighbours they have (predict one voxel more each side for exact edges)."""
    labels = probs.argmax(axis=0)
    boundary = np.zeros(labels.shape, bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        differs = labels[tuple(lo)] != labels[tuple(hi)]
        boundary[tuple(lo)] |= differs
        boundary[tuple(hi)] |= differs
    top2 = np.partition(probs, probs.shape[0] - 2, axis=0)[-2:]
    uncertain = (top2[1] - top2[0]) < MARGIN
    return boundary, uncertain


# ----------------------------------------------------------------------------- blockwise scores


class _Sums:
    """Per-plane sums along each axis of a (Z, Y, X) volume, float64."""

    def __init__(self, shape: tuple[int, int, int]):
        self.values = {a: np.zeros(n, np.float64) for a, n in zip(AXES, shape)}

    def add(self, voxels: np.ndarray, core: Box) -> None:
        for d, a in enumerate(AXES):
            lo, hi = core[d]
            self.values[a][lo:hi] += voxels.sum(axis=tuple(i for i in range(3) if i != d), dtype=np.float64)


def plane_scores(predictor: Predictor, volume: Volume, scores: Sequence[str] = ("entropy",),
                 block: tuple[int, int, int] | None = None, should_stop: Callable[[], bool] = never,
                 progress: Callable[[int, int], None] | None = None,
                 z_range: tuple[int, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """score -> axis -> (N_axis,) float64: one value per plane normal to z, y and x of the normalised
    ``volume``, for each of ``scores`` ("entropy", "disagreement", "boundary"; see the module docstring).

    ``block``: the unit of prediction (default ``segment``'s ``default_block`` for the predictor's axes);
    ``progress(done, total)`` after each block; ``should_stop`` is asked before every tile batch
    (``PredictionStopped``).  ``z_range`` (Z0, Z1): predict only slices Z0..Z1-1 (the rest of the volume
    is their context, as in ``segment``): the "z" values are those of planes Z0..Z1-1, the "y"/"x" values
    those of the planes' parts inside.  Raises ``InvalidInputError`` for an unknown score, or
    "disagreement" from a single pass.
    """
    from .plan import default_block

    unknown = [s for s in scores if s not in SCORES or s == "spread"]
    if unknown:
        raise InvalidInputError(f"score '{unknown[0]}' cannot be computed from predictions; valid: "
                                f"{', '.join(s for s in SCORES if s != 'spread')}")
    if "disagreement" in scores and len(predictor.axes) < 2:
        raise InvalidInputError("score 'disagreement' compares the z, y and x passes; predict with axes 'zyx'")
    shape = volume.shape
    z0, z1 = z_range or (0, shape[0])
    if not 0 <= z0 < z1 <= shape[0]:
        raise InvalidInputError(f"z range {z0},{z1} is outside the volume (0..{shape[0]}); give 0 <= Z0 < Z1 <= "
                                f"{shape[0]}")
    region = (z1 - z0, shape[1], shape[2])  # sums in region coordinates, blocks in volume coordinates
    axes_name = "zyx" if len(predictor.axes) > 1 else "z"
    blocks = block_grid(region, tuple(block) if block else default_block(axes_name, region))
    sums = {s: _Sums(region) for s in scores}
    edges = _Sums(region) if "boundary" in scores else None  # boundary voxels per plane
    for i, b in enumerate(blocks):
        core = ((b.core[0][0] + z0, b.core[0][1] + z0), b.core[1], b.core[2])
        box = grow(core, 1, shape) if edges is not None else core
        inner = tuple(slice(c0 - g0, c1 - g0) for (c0, c1), (g0, _) in zip(core, box))
        if "disagreement" in scores:
            fused, pass_entropy, n = None, None, 0
            for _, p in predictor.predict_passes(volume, box, should_stop):
                h = entropy_map(p[(slice(None), *inner)])
                pass_entropy = h if pass_entropy is None else pass_entropy + h
                if fused is None:
                    fused = p
                else:
                    fused += p  # the same sum, in the same order, as predict()
                n += 1
            fused /= n
        else:
            fused = predictor.predict(volume, box, should_stop)
        core_probs = fused[(slice(None), *inner)]
        h = entropy_map(core_probs)
        if "entropy" in sums:
            sums["entropy"].add(h, b.core)
        if "disagreement" in sums:
            sums["disagreement"].add(np.maximum(h - pass_entropy / n, 0), b.core)
        if edges is not None:
            boundary, uncertain = boundary_maps(fused)
            boundary, uncertain = boundary[inner], uncertain[inner]
            edges.add(boundary, b.core)
            sums["boundary"].add(boundary & uncertain, b.core)
        if progress is not None:
            progress(i + 1, len(blocks))
    out: dict[str, dict[str, np.ndarray]] = {}
    z, y, x = region
    size = {"z": y * x, "y": z * x, "x": z * y}
    for s, total in sums.items():
        if s == "boundary":
            out[s] = {a: total.values[a] / np.maximum(edges.values[a], 1) for a in AXES}
        else:
            out[s] = {a: total.values[a] / size[a] for a in AXES}
    return out


def entropy_scores(entropy: Any) -> dict[str, np.ndarray]:
    """axis -> (N_axis,) mean entropy of each plane from a segmentation's stored entropy ((1, Z, Y, X) or
    (Z, Y, X), float16 nats: ``segment --probabilities``), as one Dask graph (never the whole array in memory).

    The ``entropy`` score of ``plane_scores`` up to the float16 rounding of the stored values."""
    import dask.array as da

    from ..data.scheduler import compute

    arr = entropy if isinstance(entropy, da.Array) else da.from_array(
        entropy, chunks=getattr(entropy, "shards", None) or getattr(entropy, "chunks", "auto"))
    if arr.ndim == 4:
        arr = arr[0]
    arr = arr.astype(np.float64)
    z, y, x = compute(arr.mean(axis=(1, 2)), arr.mean(axis=(0, 2)), arr.mean(axis=(0, 1)))
    return {"z": np.asarray(z), "y": np.asarray(y), "x": np.asarray(x)}


# ----------------------------------------------------------------------------- picking


def _spread_picks(sizes: Mapping[str, int], n: int, spacing: int, labelled: Mapping[str, Sequence[int]]) -> list[Pick]:
    """Farthest-first traversal per axis: each pick is the plane farthest from the labelled and picked ones
    (the volume's ends count as half as near, so picks spread like cell centres)."""
    taken = {a: sorted(set(labelled.get(a, ()))) for a in sizes}
    picks: list[Pick] = []
    while len(picks) < n:
        best = None
        for a, size in sizes.items():
            idx = np.arange(size)
            dist = np.minimum(2 * idx + 1, 2 * (size - idx) - 1).astype(np.float64) if size else np.zeros(0)
            for t in taken[a]:
                dist = np.minimum(dist, np.abs(idx - t))
            dist[dist < spacing] = -1  # too close to a labelled or picked plane
            if dist.size and dist.max() >= 0:
                i = int(np.argmax(dist))  # the first of equals: the lowest index
                if best is None or dist[i] > best[2]:
                    best = (a, i, float(dist[i]))
        if best is None:
            break
        picks.append(Pick(best[0], best[1], best[2], len(picks) + 1))
        taken[best[0]].append(best[1])
    return picks


def pick_planes(scores: Mapping[str, np.ndarray], n: int, spacing: int = SPACING,
                labelled: Mapping[str, Sequence[int]] | None = None, offset: Mapping[str, int] | None = None
                ) -> list[Pick]:
    """The ``n`` best planes: highest score first, none labelled already and none fewer than ``spacing``
    planes from a labelled plane or an earlier pick of its axis.

    ``scores``: axis -> (N_axis,) values (the axes to pick from); ``labelled``: axis -> indices already
    labelled; ``offset``: axis -> added to every index (a crop's origin: picks in volume coordinates;
    ``labelled`` is in the same coordinates as the picks).  Fewer than ``n`` picks when the spacing
    leaves fewer planes (logged).  Ties: the lower axis (z, y, x), then the lower index.
    """
    if n < 1:
        raise InvalidInputError(f"n {n} must be at least 1")
    if spacing < 1:
        raise InvalidInputError(f"spacing {spacing} must be at least 1 (1: neighbouring planes allowed)")
    offset = {a: int((offset or {}).get(a, 0)) for a in scores}
    taken = {a: [int(i) - offset[a] for i in (labelled or {}).get(a, ())] for a in scores}
    order = sorted(((-float(v), AXES.index(a), i, a) for a, values in scores.items()
                    for i, v in enumerate(np.asarray(values, np.float64).tolist())))
    picks: list[Pick] = []
    for neg, _, i, a in order:
        if len(picks) == n:
            break
        if any(abs(i - t) < spacing for t in taken[a]):
            continue
        picks.append(Pick(a, i + offset[a], -neg, len(picks) + 1))
        taken[a].append(i)
    if len(picks) < n:
        log.warning("only %d of the %d planes asked for are at least %d planes from a labelled plane and from "
                    "each other; lower --spacing for more", len(picks), n, spacing)
    return picks


def labelled_planes(store: str | os.PathLike, shape: tuple[int, int, int]) -> dict[str, list[int]]:
    """axis -> indices of the planes a store's ground truth already labels (its census: ``LabelCensus.painted``).

    Raises ``InputNotFoundError``/``CorruptFileError`` (not a store), ``InvalidInputError`` (no ground
    truth) or ``ShapeMismatchError`` (another shape than the volume)."""
    s = open_store(store, require_image=False)
    if tuple(s.shape) != tuple(shape):
        raise ShapeMismatchError(f"--exclude-labelled '{store}' has shape {tuple(s.shape)} but the volume has "
                                 f"{tuple(shape)}; give the label store of this volume")
    if s.info.labels:
        counts = LabelCensus.from_dict(s.info.labels)
    elif s.labels is not None:
        counts = census(s.labels)
    else:
        raise InvalidInputError(f"--exclude-labelled '{store}' has no ground truth; give a store with labels")
    return {a: counts.painted(a) for a in AXES}


# ----------------------------------------------------------------------------- the command


def _check(n: int, axes: str, score: str, spacing: int, tile: int, halo: int) -> None:
    if tile < 8 or not 0 <= 2 * halo < tile:
        raise InvalidInputError(f"tile {tile} and halo {halo} need tile >= 8 and 0 <= 2 * halo < tile; e.g. --tile 512")
    if n < 1:
        raise InvalidInputError(f"--n {n} must be at least 1")
    if axes not in ("z", "zyx"):
        raise InvalidInputError(f"axes '{axes}' is not one of z, zyx")
    if score not in SCORES:
        raise InvalidInputError(f"score '{score}' is not one of {', '.join(SCORES)}")
    if score == "disagreement" and axes != "zyx":
        raise InvalidInputError("--score disagreement compares the z, y and x passes; add --axes zyx")
    if spacing < 1:
        raise InvalidInputError(f"--spacing {spacing} must be at least 1")


def _output(out: str | os.PathLike | None, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if not out.parent.is_dir():
        raise InvalidInputError(f"output folder '{out.parent}' does not exist; create it first")
    if (out / CSV_NAME).exists() and not overwrite:
        raise OutputExistsError(f"'{out / CSV_NAME}' already exists; pass --overwrite or choose another --out")
    return out


def write_planes(out: Path, picks: Sequence[Pick], volume: Volume) -> list[Path]:
    """``out/suggestions.csv`` (rank, axis, index, score) and one ImageJ TIFF per axis picked
    (``planes_z.tif`` ...: a page per plane in rank order, page labels "z 137", the raw grey values;
    dtypes ImageJ cannot hold as float32), each written atomically."""
    import tifffile

    out.mkdir(exist_ok=True)
    write_csv(out / CSV_NAME, [{"rank": p.rank, "axis": p.axis, "index": p.index, "score": f"{p.score:.6g}"}
                               for p in picks], ["rank", "axis", "index", "score"])
    written = [out / CSV_NAME]
    raw = volume.raw()
    z, y, x = raw.shape
    um = (volume.voxel_size_nm or 0) / 1000.0
    for a in AXES:
        mine = [p for p in picks if p.axis == a]
        if not mine:
            continue
        planes = []
        for p in mine:
            box = [(0, z), (0, y), (0, x)]
            d = AXES.index(a)
            box[d] = (p.index, p.index + 1)
            planes.append(np.squeeze(raw.read(tuple(box)), axis=d))
        stack = np.stack(planes)
        if stack.dtype not in (np.uint8, np.uint16, np.float32):
            stack = stack.astype(np.float32)
        meta = {"axes": "ZYX", "Labels": [f"{a} {p.index} (rank {p.rank})" for p in mine]}
        options = {"resolution": (1 / um, 1 / um), "metadata": {**meta, "unit": "um"}} if um else {"metadata": meta}
        path = out / f"planes_{a}.tif"
        atomic_write(path, lambda f, s=stack, o=options: tifffile.imwrite(f, s, imagej=True, **o),
                     what="the suggested planes")
        written.append(path)
    return written


def suggest(model: str | os.PathLike, volume: str | os.PathLike | Volume, *, n: int, axes: str = "z",
            score: str = DEFAULT_SCORE, spacing: int = SPACING, exclude_labelled: str | os.PathLike | None = None,
            z_range: tuple[int, int] | None = None, out: str | os.PathLike | None = None, overwrite: bool = False,
            block: tuple[int, int, int] | None = None, tile: int = 512, halo: int = 16, normalisation: str = "auto",
            dataset: str | None = None, channel: int | None = None, time: int | None = None,
            mask: str | os.PathLike | None = None, should_stop: Callable[[], bool] = never,
            progress: Callable[[int, int], None] | None = None) -> list[Pick]:
    """The ``n`` planes of ``volume`` that ``model`` (model.pt) is least sure of, spread; logged one line each.

    ``axes``: "z" (rank z-planes, from the z pass) or "zyx" (rank planes normal to z, y and x, from the
    averaged passes); ``score``: see the module docstring (``SCORES``); ``spacing``: the least distance in
    planes between picks and from labelled planes; ``exclude_labelled``: a store whose ground truth's
    painted planes are skipped; ``z_range``: (Z0, Z1) rank only inside slices Z0..Z1-1 (y/x planes: by
    their part inside; indices stay volume coordinates); ``out``: a folder for ``write_planes`` (refused when its
    suggestions.csv exists unless ``overwrite``).  The normalisation is ``segment``'s (``normalised_volume``).

    Raises ``InvalidInputError`` (bad options, nothing left to pick), ``ShapeMismatchError``,
    ``OutputExistsError``, the model and volume errors of ``segment``, ``PredictionStopped`` once
    ``should_stop()`` is true.
    """
    from ..models.checkpoint import load_checkpoint, model_from_checkpoint

    _check(n, axes, score, spacing, tile, halo)
    folder = _output(out, overwrite)
    ckpt = load_checkpoint(model)
    net, info = model_from_checkpoint(ckpt, model)
    vol = normalised_volume(open_volume(volume, dataset=dataset, channel=channel, time=time),
                            train_stats=ckpt.get("stats") or {}, mode=normalisation,
                            mask=open_volume(mask) if mask is not None else None)
    labelled = labelled_planes(exclude_labelled, vol.shape) if exclude_labelled is not None else {}
    z0, z1 = z_range or (0, vol.shape[0])
    if not 0 <= z0 < z1 <= vol.shape[0]:
        raise InvalidInputError(f"--z {z0},{z1} is outside the volume (0..{vol.shape[0]}); give 0 <= Z0 < Z1 <= "
                                f"{vol.shape[0]}")
    planes = ("z",) if axes == "z" else AXES
    offset = {"z": z0}  # scores and picks of z-planes count from Z0; y/x indices are the volume's
    if score == "spread":
        sizes = {a: (z1 - z0) if a == "z" else vol.shape[AXES.index(a)] for a in planes}
        near = {a: [i - offset.get(a, 0) for i in labelled.get(a, ())] for a in planes}
        picks = [Pick(p.axis, p.index + offset.get(p.axis, 0), p.score, p.rank)
                 for p in _spread_picks(sizes, n, spacing, near)]
        if len(picks) < n:
            log.warning("only %d of the %d planes asked for are at least %d planes apart", len(picks), n, spacing)
    else:
        predictor = Predictor(net, info.in_channels, info.num_classes, tile=tile, halo=halo, axes=axes)
        log.info("ranking %s planes of %s by %s (%s passes)", "/".join(planes), "x".join(map(str, vol.shape)), score,
                 axes)
        values = plane_scores(predictor, vol, (score,), block, should_stop, progress, (z0, z1))[score]
        picks = pick_planes({a: values[a] for a in planes}, n, spacing, {a: labelled.get(a, ()) for a in planes},
                            offset)
    if not picks:
        raise InvalidInputError(f"no plane left to suggest: every plane is labelled or within {spacing} planes of a "
                                "labelled one; lower --spacing")
    for p in picks:
        log.info("pick %d: %s-plane %d, %s %.4g", p.rank, p.axis, p.index, score, p.score)
    if folder is not None:
        full = open_volume(volume, dataset=dataset, channel=channel, time=time)
        written = write_planes(folder, picks, full)
        log.info("wrote %s", ", ".join(str(p) for p in written))
    return picks
