"""Microstructure of a three-phase label volume: a Dask graph over chunks, plus slab-wise percolation.

    m = analyze(volume, voxel_size_nm=(20, 10, 10))  # a Volume (open_volume, a label view) or a (Z, Y, X) array
    m["fractions"]["ni"], m["tpb"]["density"], m["percolation"]["pore"]["z"]

Phases are class ids 0, 1, 2 = pore, YSZ, Ni (``classes`` only names them).

Fractions, interfacial faces and TPB edges are local: one Dask graph over the volume's lazy
array (``Volume.array``) counts them per chunk and sums the counts.  Each chunk gets a
one-voxel overlap on its high side along z, y and x (``dask.array.overlap.overlap`` with
depth (0, 1) and boundary 'none'), and counts exactly the faces and edges whose lowest
voxel (smallest z, y, x) lies in the chunk; so a face or an edge that straddles a chunk
boundary is counted once, by the chunk of its lowest voxel, and the sums do not depend on the
chunking (tested against a loop over every voxel for odd chunk shapes).  An in-memory numpy
array is the one-chunk case of the same count, without Dask (training validation).

Percolation needs whole-volume connectivity and stays a slab loop over ``read(z0, z1)``:
clusters are labelled slab by slab and joined across slab boundaries (see below).

Definitions (all on the voxel grid, only interior faces/edges: the outer surface of the
volume is not an interface):

* **Volume fraction**: voxels of a phase / all voxels.
* **Voxel size** (z, y, x) per axis (one number: isotropic): a voxel holds vz * vy * vx, a
  face normal to z has area vy * vx (normal to y: vz * vx, to x: vz * vy), an edge along z
  is vz long.  Densities are per unit of the true volume (number of voxels x vz * vy * vx).
* **Interfacial area** between phases i and j: the voxel faces with an i voxel on one side
  and a j voxel on the other, each counted with its own area (faces normal to z, y and x
  are counted separately), per unit volume (µm⁻¹ with a voxel size, voxel⁻¹ without).
  Counting faces overestimates a
  smooth surface: a plane with unit normal n is counted as |n_x| + |n_y| + |n_z| times its
  area, which averages 3/2 over all orientations, so ``specific_area`` is multiplied by
  2/3 (exact on average for isotropic structures; a plane aligned with the grid is then
  under-estimated by 1/3).  ``specific_area_raw`` and the face counts are kept too.
  The factor assumes what it assumes for cubic voxels, in physical space: orientations
  isotropic in nm (not in voxels) and features much larger than a voxel.  Then it holds for
  anisotropic voxels unchanged, since the staircase of a plane or a line over a (vz, vy, vx)
  grid has, in nm, the same |n_x| + |n_y| + |n_z| (or |t_x| + |t_y| + |t_z|) excess as over a
  cubic one; a feature a few voxels thin along the coarse axis is resolved worse along it.
* **Triple-phase boundary (TPB)**: a voxel edge is shared by 4 voxels; it is a TPB edge
  when those 4 voxels hold all three phases.  Edges along z, y and x are counted
  separately.  The length is (edges along z x vz + along y x vy + along x x vx) x 2/3: a line with unit direction t is
  traced as a staircase of length (|t_x| + |t_y| + |t_z|) x its length, 3/2 on average
  over directions.  Density = length / volume: µm⁻² with a voxel size, voxel⁻² without.
* **Percolation** of a phase along an axis: the fraction of its voxels that lie in a
  6-connected (face-connected) cluster touching both faces of the volume normal to that
  axis.  Clusters are labelled slab by slab (scipy.ndimage.label) and joined across slab
  boundaries with a graph of (label, label) pairs solved by
  scipy.sparse.csgraph.connected_components, so no whole-volume array is ever held.
* **Active TPB** along an axis: the fraction of TPB edges whose 4 voxels hold, for each of
  the three phases, at least one voxel of a cluster of that phase percolating along the
  axis (the usual electrochemically active TPB when the axis runs from the electrolyte to
  the current collector).  Needs a second pass over the volume (the labels are recomputed:
  cheaper than storing them).

Memory: per Dask task one chunk (+1 voxel per axis) and a few boolean maps of its size;
percolation holds one slab (+1 slice) of labels and of its cluster labels, plus a few bytes
per cluster.  Values are NaN where undefined (e.g. the percolation of an absent phase).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from ..data import spatial
from ..errors import InvalidInputError, LabelValueError

log = logging.getLogger(__name__)

DEFAULT_CLASSES = ("pore", "ysz", "ni")
AXES = ("z", "y", "x")
STAIRCASE = 2.0 / 3.0  # mean true/staircase length (and area) ratio over isotropic orientations
DEFAULT_SLAB = 32


def as_volume(volume: Any) -> Any:
    """A ``Volume`` (``xtrain.data.volumes``: raw class ids or a label view) as it is; a (Z, Y, X) array
    of class ids through ``array_volume``."""
    if hasattr(volume, "read"):
        return volume
    from ..data.volumes import array_volume

    return array_volume(volume if hasattr(volume, "chunks") else np.asarray(volume))


# ----------------------------------------------------------------------------- local counts


def _check_labels(block: np.ndarray, num_classes: int, origin: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``block`` as uint8 class ids; ``LabelValueError`` naming the first bad voxel (``origin``: block's (z, y, x))."""
    if block.dtype.kind not in "ui":
        raise InvalidInputError(f"labels must be integer class ids, got dtype {block.dtype}")
    if block.size and (block.min() < 0 or block.max() >= num_classes):
        bad = (block < 0) | (block >= num_classes)
        z, y, x = (int(v[0]) for v in np.nonzero(bad))
        raise LabelValueError(
            f"label value {block[z, y, x]} at z={origin[0] + z} y={origin[1] + y} x={origin[2] + x} is not a "
            f"class id 0..{num_classes - 1}; map raw values with --label-map"
        )
    return block.astype(np.uint8, copy=False)


def _bits(labels: np.ndarray) -> np.ndarray:
    """One bit per phase: 1 << class id (uint8).  OR-ing 4 voxels' bits == 0b111 <=> all 3 phases."""
    return np.left_shift(np.uint8(1), labels, dtype=np.uint8)


def edge_maps(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The TPB edges of a (n, Y, X) block of phase bits: bool maps along z, y and x.

    An edge counts when the OR of its 4 voxels' bits has all of bits 0, 1, 2 set.  Each map
    is indexed by the edge's lowest voxel: along z (n, Y-1, X-1) (voxels y..y+1, x..x+1 of
    one slice); along y (n-1, Y, X-1) (spans z and x); along x (n-1, Y-1, X) (spans z and y).
    """
    full = np.uint8(0b111)
    along_z = (bits[:, :-1, :-1] | bits[:, 1:, :-1] | bits[:, :-1, 1:] | bits[:, 1:, 1:]) & full == full
    along_y = (bits[:-1, :, :-1] | bits[:-1, :, 1:] | bits[1:, :, :-1] | bits[1:, :, 1:]) & full == full
    along_x = (bits[:-1, :-1, :] | bits[:-1, 1:, :] | bits[1:, :-1, :] | bits[1:, 1:, :]) & full == full
    return along_z, along_y, along_x


def edge_counts(bits: np.ndarray, fresh: int) -> np.ndarray:
    """TPB edge counts [along z, along y, along x] of a z-slab whose first ``fresh`` slices are overlap.

    Edges along z lie within one slice (fresh slices only); edges along y and x join slices
    i and i + 1 (every pair in the block: the overlap slice is only the first member of a pair).
    """
    along_z, along_y, along_x = edge_maps(bits)
    return np.array([np.count_nonzero(along_z[fresh:]), np.count_nonzero(along_y), np.count_nonzero(along_x)],
                    dtype=np.int64)


def local_counts(labels: np.ndarray, owned: Sequence[int], num_classes: int) -> np.ndarray:
    """Voxels, faces and TPB edges of a block, counted by their lowest voxel within ``owned``.

    ``labels``: (Z, Y, X) class ids of a chunk plus, where the volume goes on, one voxel
    more on the high side of each axis; ``owned`` (nz, ny, nx): the chunk's own extent (the
    whole shape for a whole volume).  A face or edge counts when its lowest voxel is in
    ``[0, nz) x [0, ny) x [0, nx)``, so summing over chunks counts each exactly once.
    Returns int64 [K voxel counts, 3 x K*K face counts (i, j) with i != j normal to z, y, x
    (both orders, i.e. symmetric), TPB edges along z, y, x].
    """
    k = num_classes
    own = tuple(slice(0, int(n)) for n in owned)
    phase = np.bincount(labels[own].ravel(), minlength=k)[:k]
    faces = []
    for axis in range(3):  # faces normal to z, y, x: voxel i and i + 1 along the axis
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        u, v = labels[tuple(lo)][own], labels[tuple(hi)][own]
        differ = u != v
        m = np.bincount(u[differ].astype(np.int64) * k + v[differ], minlength=k * k).reshape(k, k)
        faces.append((m + m.T).ravel())  # a face i|j may appear as (i, j) or (j, i)
    edges = [np.count_nonzero(e[own]) for e in edge_maps(_bits(labels))]
    return np.concatenate([phase, *faces, np.array(edges, dtype=np.int64)])


def _chunk_counts(block: np.ndarray, num_classes: int, block_info=None) -> np.ndarray:
    """``local_counts`` of one chunk of the high-side overlapped array, as a (1, 1, 1, L) block."""
    info = block_info[0]
    owned, origin = [], []
    for axis, (loc, n) in enumerate(zip(info["chunk-location"], info["num-chunks"])):
        ghost = 1 if loc < n - 1 else 0  # the last chunk along an axis has no neighbour above
        owned.append(block.shape[axis] - ghost)
        origin.append(info["array-location"][axis][0] - loc)  # every chunk before it carries one ghost voxel
    labels = _check_labels(block, num_classes, origin)
    return local_counts(labels, owned, num_classes)[None, None, None, :]


def count_graph(array: Any, num_classes: int):
    """Dask graph of ``local_counts`` summed over all chunks of a lazy (Z, Y, X) label array -> (L,) int64."""
    import dask.array as da

    ext = da.overlap.overlap(array, depth={0: (0, 1), 1: (0, 1), 2: (0, 1)}, boundary="none")
    length = num_classes + 3 * num_classes**2 + 3
    per_chunk = da.map_blocks(_chunk_counts, ext, num_classes, dtype=np.int64, new_axis=3,
                              meta=np.empty((0, 0, 0, 0), np.int64),
                              chunks=tuple((1,) * len(c) for c in ext.chunks) + ((length,),))
    return per_chunk.sum(axis=(0, 1, 2))


def counts(volume: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxels per phase (K,), faces normal to z, y, x (3, K, K), TPB edges along z, y, x (3,)) of a volume.

    A numpy array is counted whole; anything else through ``count_graph`` over its lazy
    array (``.array``, or the dask array itself), computed by ``xtrain.data.scheduler.compute``.
    """
    k = num_classes
    if isinstance(volume, np.ndarray):
        total = local_counts(_check_labels(volume, k), volume.shape, k)
    else:
        from ..data.scheduler import compute

        array = as_volume(volume).array
        (total,) = compute(count_graph(array, k))
    return total[:k], total[k:k + 3 * k * k].reshape(3, k, k), total[k + 3 * k * k:]


# ----------------------------------------------------------------------------- percolation


class _Clusters:
    """Slab-wise labelling of one phase's clusters, joined across slab boundaries.

    Pass 1 (``add``): label each slab's mask, give its labels global ids (offset by the
    clusters seen so far), record per cluster its size and which volume faces it touches,
    and the (id, id) pairs that touch across the boundary with the previous slab.
    ``finish`` joins the pairs into components.  Pass 2 (``percolating``) labels the same
    slab again (deterministic, same ids) and returns per voxel whether it is in a cluster
    percolating along each axis.
    """

    STRUCTURE = ndimage.generate_binary_structure(3, 1)  # 6-connectivity: clusters share faces

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self.offsets: dict[int, int] = {}
        self.sizes: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]  # id 0 = background
        self.faces: list[np.ndarray] = [np.zeros((1, 6), dtype=bool)]  # zmin zmax ymin ymax xmin xmax
        self.pairs: list[np.ndarray] = []
        self.count = 0
        self.prev_last: np.ndarray | None = None  # global ids of the previous slab's last slice
        self.component: np.ndarray | None = None
        self.perc: np.ndarray | None = None  # (n_components, 3) percolates along z, y, x

    def _label(self, mask: np.ndarray, z0: int) -> tuple[np.ndarray, int, int]:
        """(local labels 0..n of the slab, n, offset): global id = local + offset; pass 1 reserves the ids."""
        local, n = ndimage.label(mask, structure=self.STRUCTURE)
        if z0 not in self.offsets:
            self.offsets[z0] = self.count
            self.count += n
        return local, n, self.offsets[z0]

    def add(self, mask: np.ndarray, z0: int) -> None:
        """Pass 1 on the (n, Y, X) mask of slices z0 .. z0 + n - 1 (no overlap)."""
        local, n, offset = self._label(mask, z0)
        self.sizes.append(np.bincount(local.ravel(), minlength=n + 1)[1:])
        touch = np.zeros((n + 1, 6), dtype=bool)
        depth = self.shape[0]
        planes = [local[0] if z0 == 0 else None, local[-1] if z0 + mask.shape[0] == depth else None,
                  local[:, 0, :], local[:, -1, :], local[:, :, 0], local[:, :, -1]]
        for f, plane in enumerate(planes):
            if plane is not None:
                touch[plane.ravel(), f] = True
        self.faces.append(touch[1:])
        first = np.where(local[0] > 0, local[0].astype(np.int64) + offset, 0)  # global ids, (Y, X)
        if self.prev_last is not None:
            a, b = self.prev_last, first
            both = (a > 0) & (b > 0)  # same phase on both sides of the slab boundary
            if both.any():
                self.pairs.append(np.unique(np.stack([a[both], b[both]], axis=1), axis=0))
        self.prev_last = np.where(local[-1] > 0, local[-1].astype(np.int64) + offset, 0)

    def finish(self) -> None:
        n = self.count + 1
        edges = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 2), dtype=np.int64)
        graph = sparse.coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
        n_comp, self.component = connected_components(graph, directed=False)
        faces = np.concatenate(self.faces)
        touched = np.zeros((n_comp, 6), dtype=bool)
        for f in range(6):
            touched[:, f] = np.bincount(self.component, weights=faces[:, f], minlength=n_comp) > 0
        self.perc = touched[:, 0::2] & touched[:, 1::2]  # both faces of z, y, x
        self.perc[self.component[0]] = False  # background
        self.comp_sizes = np.bincount(self.component, weights=np.concatenate(self.sizes), minlength=n_comp)
        self.prev_last = None

    def fractions(self) -> list[float]:
        """Fraction of the phase's voxels in clusters percolating along z, y, x."""
        total = self.comp_sizes.sum()
        return [float(self.comp_sizes[self.perc[:, a]].sum() / total) if total else math.nan for a in range(3)]

    def percolating(self, mask: np.ndarray, z0: int) -> np.ndarray:
        """Pass 2: (3, n, Y, X) bool, voxel in a cluster percolating along z, y, x."""
        local, n, offset = self._label(mask, z0)
        table = self.perc[self.component[np.arange(offset, offset + n + 1)]]  # (n + 1, 3) per local label
        table[0] = False  # local 0 is not this phase (global id 'offset' belongs to another slab)
        return np.stack([table[local, a] for a in range(3)])


# ----------------------------------------------------------------------------- analysis


def analyze(volume: Any, voxel_size_nm: Any = None, classes: Sequence[str] = DEFAULT_CLASSES,
            slab: int = DEFAULT_SLAB, percolation: bool = True) -> dict[str, Any]:
    """Fractions, interfacial areas, TPB density, percolation and active TPB of a label volume.

    ``volume``: a ``Volume`` (``shape``, ``read``; with ``array``, a lazy dask.array: the
    local counts run as a Dask graph over its chunks), a (Z, Y, X) dask array, or a (Z, Y, X)
    numpy array of class ids 0..2 (counted whole).  ``voxel_size_nm``: (z, y, x) nm, or one
    number (isotropic), or None (per voxel).  ``slab``: z-slab depth of the percolation
    passes.  Returns plain JSON-able numbers; see the module docstring for the definitions
    and ``units`` in the result for the units.  Raises ``LabelValueError`` for a value that
    is not a class id, ``InvalidInputError`` for other than 3 classes, ``SpatialMetadataError``
    for a voxel size that is not one or three positive numbers.
    """
    voxel = spatial.voxel_size(voxel_size_nm)
    classes = tuple(classes)
    k = len(classes)
    if k != 3:
        raise InvalidInputError(f"microstructure needs exactly 3 phases (pore, YSZ, Ni), got {k}: {', '.join(classes)}")
    if slab < 1:
        raise InvalidInputError(f"slab depth must be >= 1, got {slab}")
    shape = tuple(int(s) for s in volume.shape)
    phase, faces, tpb = counts(volume, k)

    active = np.zeros((3, 3), dtype=np.int64)  # [percolation axis, edge orientation]
    perc_fractions: dict[str, dict[str, float]] = {}
    if percolation:
        volume = as_volume(volume)
        clusters = _clusters(volume, slab, k)
        perc_fractions = {name: dict(zip(AXES, cl.fractions())) for name, cl in zip(classes, clusters)}
        active = _active_edges(volume, slab, clusters)

    n_vox = int(np.prod(shape))
    # lengths in um (voxel edges without a voxel size): edge along axis a = v[a], face normal to a = v / v[a]
    v = np.asarray(voxel, dtype=float) / 1000.0 if voxel else np.ones(3)
    cell = float(np.prod(v)) * n_vox  # the true volume
    face_area = np.prod(v) / v  # normal to z: vy * vx, ...
    tpb_total = int(tpb.sum())
    tpb_raw = float(tpb @ v)  # staircase length
    tpb_density = STAIRCASE * tpb_raw / cell if n_vox else math.nan
    areas, areas_raw, face_out = {}, {}, {}
    for i in range(k):
        for j in range(i + 1, k):
            key = f"{classes[i]}-{classes[j]}"
            face_out[key] = int(faces[:, i, j].sum())
            areas_raw[key] = float(faces[:, i, j] @ face_area) / cell if n_vox else math.nan
            areas[key] = STAIRCASE * areas_raw[key]
    result: dict[str, Any] = {
        "shape": list(shape),
        "voxels": n_vox,
        "voxel_size_nm": list(voxel) if voxel else None,  # (z, y, x)
        "units": {
            "tpb_density": "um^-2" if voxel else "voxel^-2",
            "specific_area": "um^-1" if voxel else "voxel^-1",
            "tpb_length": "um" if voxel else "voxel edges",
        },
        "fractions": {name: (int(phase[c]) / n_vox if n_vox else math.nan) for c, name in enumerate(classes)},
        "voxel_counts": {name: int(phase[c]) for c, name in enumerate(classes)},
        "interface_faces": face_out,
        "specific_area": areas,
        "specific_area_raw": areas_raw,
        "tpb": {
            "edges": dict(zip(AXES, (int(v) for v in tpb))),
            "edges_total": tpb_total,
            "length": STAIRCASE * tpb_raw,  # um, or voxel edges
            "density": tpb_density,
            "density_raw": tpb_density / STAIRCASE,
        },
    }
    if percolation:
        act = active.sum(axis=1)
        result["percolation"] = perc_fractions
        result["tpb"]["active_fraction"] = {a: (int(act[i]) / tpb_total if tpb_total else math.nan)
                                            for i, a in enumerate(AXES)}
        # an active edge has the length of its orientation: active[axis, orientation] @ v
        result["tpb"]["active_density"] = {a: STAIRCASE * float(active[i] @ v) / cell for i, a in enumerate(AXES)}
    log.debug("microstructure of %s: TPB edges %s, fractions %s", shape, tpb.tolist(), result["fractions"])
    return result


def _clusters(volume: Any, slab: int, num_classes: int) -> list[_Clusters]:
    """Pass 1 of percolation: every phase's clusters, labelled slab by slab and joined."""
    shape = tuple(int(s) for s in volume.shape)
    clusters = [_Clusters(shape) for _ in range(num_classes)]
    for z0 in range(0, shape[0], slab):
        new = _check_labels(np.asarray(volume.read(volume.planes(z0, min(z0 + slab, shape[0])))), num_classes, (z0, 0, 0))
        for c, cl in enumerate(clusters):
            cl.add(new == c, z0)
    for cl in clusters:
        cl.finish()
    return clusters


def _active_edges(volume: Any, slab: int, clusters: list[_Clusters]) -> np.ndarray:
    """(3 percolation axes, 3 edge orientations) counts of TPB edges touching percolating clusters of all phases."""
    active = np.zeros((3, 3), dtype=np.int64)
    prev_bits: np.ndarray | None = None  # (3, 1, Y, X) active bits of the previous slab's last slice
    depth = volume.shape[0]
    for z0 in range(0, depth, slab):
        new = np.asarray(volume.read(volume.planes(z0, min(z0 + slab, depth)))).astype(np.uint8, copy=False)
        bits = np.zeros((3, *new.shape), dtype=np.uint8)  # per percolation axis: phase bit where percolating
        phase_bits = _bits(new)
        for c, cl in enumerate(clusters):
            mask = new == c
            perc = cl.percolating(mask, z0)  # (3, n, Y, X)
            bits |= np.where(perc, phase_bits, np.uint8(0))
        block = bits if prev_bits is None else np.concatenate([prev_bits, bits], axis=1)
        fresh = 0 if prev_bits is None else 1
        for a in range(3):
            active[a] += edge_counts(block[a], fresh)
        prev_bits = bits[:, -1:]
    return active
