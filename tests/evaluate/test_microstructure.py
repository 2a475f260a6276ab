"""Microstructure: hand-counted TPB edges, areas, fractions, percolation; slab and chunk independence."""

from __future__ import annotations

import itertools
import json
import math

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from xtrain.data.volumes import array_volume
from xtrain.errors import InvalidInputError, LabelValueError
from xtrain.evaluate.microstructure import STAIRCASE, analyze

PORE, YSZ, NI = 0, 1, 2


def two_cubes() -> np.ndarray:
    """YSZ background (6, 6, 8); a 2-voxel pore cube and a 2-voxel Ni cube sharing one 2x2 face (normal x)."""
    v = np.full((6, 6, 8), YSZ, dtype=np.uint8)
    v[1:3, 1:3, 1:3] = PORE
    v[1:3, 1:3, 3:5] = NI
    return v


def tpb_line() -> np.ndarray:
    """(4, 4, 6): pore (z<2, y<2), YSZ (z<2, y>=2), Ni (z>=2): one straight TPB line along x, 6 edges long."""
    v = np.full((4, 4, 6), NI, dtype=np.uint8)
    v[:2, :2] = PORE
    v[:2, 2:] = YSZ
    return v


def test_two_cubes_by_hand():
    m = analyze(two_cubes(), slab=3)
    # The shared face's 4 sides are TPB lines 2 edges long: the sides normal to z run along y,
    # those normal to y run along z.  Edges along x never see pore and Ni together.
    assert m["tpb"]["edges"] == {"z": 4, "y": 4, "x": 0}
    assert m["tpb"]["edges_total"] == 8
    assert m["tpb"]["density"] == pytest.approx(STAIRCASE * 8 / (6 * 6 * 8))
    # faces: pore-Ni is the shared 2x2 face; each cube's other 5 sides (20 faces) touch YSZ
    assert m["interface_faces"] == {"pore-ysz": 20, "pore-ni": 4, "ysz-ni": 20}
    assert m["voxel_counts"] == {"pore": 8, "ysz": 6 * 6 * 8 - 16, "ni": 8}
    assert m["fractions"]["pore"] == pytest.approx(8 / 288)
    assert sum(m["fractions"].values()) == pytest.approx(1.0)
    # the cubes are isolated blobs: nothing of them percolates, the YSZ matrix does
    for axis in "zyx":
        assert m["percolation"]["pore"][axis] == 0.0 and m["percolation"]["ni"][axis] == 0.0
        assert m["percolation"]["ysz"][axis] == 1.0
        assert m["tpb"]["active_fraction"][axis] == 0.0


def test_single_tpb_line_length_and_units():
    v = tpb_line()
    m = analyze(v, voxel_size_nm=10.0)
    assert m["tpb"]["edges"] == {"z": 0, "y": 0, "x": 6}
    vs_um = 0.01
    length = STAIRCASE * 6 * vs_um  # 6 edges of 10 nm, staircase-corrected
    assert m["tpb"]["length"] == pytest.approx(length)
    assert m["tpb"]["density"] == pytest.approx(length / (v.size * vs_um**3))  # um / um^3
    assert m["units"]["tpb_density"] == "um^-2" and m["units"]["specific_area"] == "um^-1"
    assert m["tpb"]["density_raw"] == pytest.approx(m["tpb"]["density"] / STAIRCASE)
    # every phase spans x (and Ni spans y): the line is active along x only
    assert m["tpb"]["active_fraction"] == {"z": 0.0, "y": 0.0, "x": 1.0}
    assert m["percolation"]["ni"] == {"z": 0.0, "y": 1.0, "x": 1.0}
    assert m["percolation"]["pore"] == {"z": 0.0, "y": 0.0, "x": 1.0}


def test_per_voxel_units_without_voxel_size():
    m = analyze(tpb_line())
    assert m["units"]["tpb_density"] == "voxel^-2"
    assert m["tpb"]["density"] == pytest.approx(STAIRCASE * 6 / (4 * 4 * 6))


def test_two_half_spaces_interfacial_area():
    v = np.full((6, 5, 7), YSZ, dtype=np.uint8)
    v[:3] = PORE  # plane z = 3 between pore and YSZ: 5 x 7 faces
    m = analyze(v, voxel_size_nm=20.0, slab=2)
    assert m["interface_faces"] == {"pore-ysz": 35, "pore-ni": 0, "ysz-ni": 0}
    vs_um = 0.02
    raw = 35 * vs_um**2 / (v.size * vs_um**3)  # area / volume
    assert m["specific_area_raw"]["pore-ysz"] == pytest.approx(raw)
    assert m["specific_area"]["pore-ysz"] == pytest.approx(STAIRCASE * raw)
    assert m["tpb"]["edges_total"] == 0 and m["fractions"] == {"pore": 0.5, "ysz": 0.5, "ni": 0.0}
    assert math.isnan(m["percolation"]["ni"]["z"])  # absent phase: undefined, not 0
    assert m["percolation"]["pore"] == {"z": 0.0, "y": 1.0, "x": 1.0}
    assert math.isnan(m["tpb"]["active_fraction"]["z"])  # no TPB at all


def test_spanning_slab_percolates_and_blob_does_not():
    v = np.full((7, 8, 9), YSZ, dtype=np.uint8)
    v[:, 2:4, :] = NI  # a slab spanning z and x
    v[3:5, 5:7, 3:5] = PORE  # an isolated blob
    m = analyze(v, slab=2)
    assert m["percolation"]["ni"] == {"z": 1.0, "y": 0.0, "x": 1.0}
    assert m["percolation"]["pore"] == {"z": 0.0, "y": 0.0, "x": 0.0}
    # YSZ: the y<2 part spans z and x, and y>=4 spans z and x; neither spans y
    assert m["percolation"]["ysz"]["z"] == 1.0 and m["percolation"]["ysz"]["y"] == 0.0


def test_cluster_joined_only_across_slab_boundaries():
    """A U-shaped Ni path that is connected only through slices in different slabs."""
    v = np.full((6, 5, 5), YSZ, dtype=np.uint8)
    v[0:6, 1, 1] = NI  # column spanning z ...
    v[5, 1, 1:4] = NI  # ... joined at the bottom to ...
    v[2:6, 1, 3] = NI  # ... a column that does not reach z=0 by itself
    for slab in (1, 2, 4, 6):
        m = analyze(v, slab=slab)
        assert m["percolation"]["ni"]["z"] == 1.0, slab


# ----------------------------------------------------------------------------- brute-force references


def _reference(v: np.ndarray):
    """Literal, loop-based TPB edges per orientation and faces per phase pair."""
    z, y, x = v.shape
    tpb = {"z": 0, "y": 0, "x": 0}
    for i, j, k in itertools.product(range(z), range(y), range(x)):
        # edge along z at (j+1/2, k+1/2) within slice i; along y: slices i,i+1 and columns k,k+1; along x likewise
        if j + 1 < y and k + 1 < x:
            tpb["z"] += {v[i, j, k], v[i, j + 1, k], v[i, j, k + 1], v[i, j + 1, k + 1]} == {0, 1, 2}
        if i + 1 < z and k + 1 < x:
            tpb["y"] += {v[i, j, k], v[i + 1, j, k], v[i, j, k + 1], v[i + 1, j, k + 1]} == {0, 1, 2}
        if i + 1 < z and j + 1 < y:
            tpb["x"] += {v[i, j, k], v[i + 1, j, k], v[i, j + 1, k], v[i + 1, j + 1, k]} == {0, 1, 2}
    return tpb


def _reference_percolation(v: np.ndarray, phase: int) -> dict[str, float]:
    lab, _ = ndimage.label(v == phase)  # default structure: 6-connectivity
    out = {}
    for a, name in enumerate("zyx"):
        lo = set(np.unique(np.take(lab, 0, axis=a))) - {0}
        hi = set(np.unique(np.take(lab, -1, axis=a))) - {0}
        span = list(lo & hi)
        total = (v == phase).sum()
        out[name] = float(np.isin(lab, span).sum() / total) if total else math.nan
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_random_volume_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    # smooth-ish random phases so clusters and percolation are non-trivial
    field = ndimage.gaussian_filter(rng.normal(size=(11, 9, 10)), 1.0)
    v = np.digitize(field, np.quantile(field, [0.35, 0.7])).astype(np.uint8)
    m = analyze(v, slab=3)
    assert m["tpb"]["edges"] == _reference(v)
    for c, name in enumerate(("pore", "ysz", "ni")):
        assert m["percolation"][name] == pytest.approx(_reference_percolation(v, c), nan_ok=True)


def test_slab_size_does_not_change_anything():
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.normal(size=(13, 17, 15)), 1.2)
    v = np.digitize(field, np.quantile(field, [0.3, 0.75])).astype(np.uint8)
    whole = json.dumps(analyze(v, voxel_size_nm=10, slab=v.shape[0]), sort_keys=True)
    assert json.loads(whole)["tpb"]["edges_total"] > 0
    for slab in (1, 2, 7):
        assert json.dumps(analyze(v, voxel_size_nm=10, slab=slab), sort_keys=True) == whole, slab


def test_bad_labels():
    with pytest.raises(LabelValueError, match="value 3 at z=1"):
        v = np.zeros((3, 4, 4), np.uint8)
        v[1, 2, 3] = 3
        analyze(v, slab=1)
    with pytest.raises(InvalidInputError, match="3 phases"):
        analyze(np.zeros((2, 2, 2), np.uint8), classes=("a", "b"))


# ----------------------------------------------------------------------------- the Dask graph over chunks


def _reference_faces(v: np.ndarray) -> dict[str, int]:
    """Literal loop over every voxel and its +z, +y, +x neighbour: faces per phase pair."""
    names = ("pore", "ysz", "ni")
    out = {"pore-ysz": 0, "pore-ni": 0, "ysz-ni": 0}
    z, y, x = v.shape
    for i, j, k in itertools.product(range(z), range(y), range(x)):
        for di, dj, dk in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            if i + di < z and j + dj < y and k + dk < x:
                a, b = sorted((int(v[i, j, k]), int(v[i + di, j + dj, k + dk])))
                if a != b:
                    out[f"{names[a]}-{names[b]}"] += 1
    return out


def _random_phases(shape, seed: int, sigma: float = 1.0) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return np.digitize(field, np.quantile(field, [0.33, 0.67])).astype(np.uint8)


@pytest.mark.parametrize("chunks", [(4, 5, 6), (1, 17, 19), (13, 1, 19), (13, 17, 1), (3, 4, 5), (7, 16, 2),
                                    (13, 17, 19)])
def test_dask_graph_counts_exactly_what_the_whole_array_holds(chunks):
    """Odd chunks (incl. 1-voxel ones) cut through TPB edges and faces; each is counted exactly once."""
    v = _random_phases((13, 17, 19), seed=4, sigma=0.8)
    lazy = array_volume(da.from_array(v, chunks=chunks))
    m = analyze(lazy, percolation=False)
    assert m["tpb"]["edges"] == _reference(v)
    assert m["interface_faces"] == _reference_faces(v)
    assert m["voxel_counts"] == {n: int((v == c).sum()) for c, n in enumerate(("pore", "ysz", "ni"))}
    # the whole numpy array (no Dask) gives the very same numbers, to the last bit
    assert json.dumps(m, sort_keys=True) == json.dumps(analyze(v, percolation=False), sort_keys=True)


def test_chunk_boundaries_do_cut_tpb_edges():
    """The test above is not vacuous: chunks counted without their overlap miss edges and faces."""
    v = _random_phases((13, 17, 19), seed=4, sigma=0.8)
    alone = {"edges_total": 0, "faces": 0}
    for z0, y0, x0 in itertools.product(range(0, 13, 4), range(0, 17, 5), range(0, 19, 6)):
        part = analyze(np.ascontiguousarray(v[z0:z0 + 4, y0:y0 + 5, x0:x0 + 6]), percolation=False)
        alone["edges_total"] += part["tpb"]["edges_total"]
        alone["faces"] += sum(part["interface_faces"].values())
    whole = analyze(v, percolation=False)
    assert alone["edges_total"] < whole["tpb"]["edges_total"]
    assert alone["faces"] < sum(whole["interface_faces"].values())


def test_dask_graph_with_percolation_equals_numpy():
    v = _random_phases((11, 9, 10), seed=6)
    lazy = array_volume(da.from_array(v, chunks=(3, 4, 5)))
    assert json.dumps(analyze(lazy, slab=4), sort_keys=True) == json.dumps(analyze(v, slab=4), sort_keys=True)


def test_bad_label_in_a_chunk_is_named_where_it_is():
    v = np.zeros((13, 17, 19), np.uint8)
    v[9, 11, 13] = 7
    with pytest.raises(LabelValueError, match="value 7 at z=9 y=11 x=13"):
        analyze(array_volume(da.from_array(v, chunks=(4, 5, 6))), percolation=False)


# ----------------------------------------------------------------------------- anisotropic voxels (issue 22)
# z = 20 nm, y = x = 10 nm: a voxel holds 2000 nm^3, a face normal to z 100 nm^2, normal to y or x 200 nm^2.
ANISO = (20.0, 10.0, 10.0)


def test_planar_interfaces_use_the_face_area_of_their_normal():
    normal_z = np.full((5, 6, 7), YSZ, dtype=np.uint8)
    normal_z[:2] = PORE  # plane z = 2: 6 x 7 = 42 faces of 10 x 10 nm = 4200 nm^2
    normal_x = np.full((5, 6, 7), YSZ, dtype=np.uint8)
    normal_x[:, :, :3] = PORE  # plane x = 3: 5 x 6 = 30 faces of 20 x 10 nm = 6000 nm^2
    volume_nm3 = 5 * 6 * 7 * 2000.0  # 420000 nm^3
    mz, mx = analyze(normal_z, voxel_size_nm=ANISO), analyze(normal_x, voxel_size_nm=ANISO)
    assert mz["interface_faces"]["pore-ysz"] == 42 and mx["interface_faces"]["pore-ysz"] == 30
    # nm^2 / nm^3 = nm^-1; x 1000 = um^-1: 4200 / 420000 = 0.01 nm^-1 = 10 um^-1; 6000 / 420000 = 14.2857 um^-1
    assert mz["specific_area_raw"]["pore-ysz"] == pytest.approx(10.0)
    assert mx["specific_area_raw"]["pore-ysz"] == pytest.approx(1000 * 6000 / volume_nm3)
    assert mx["specific_area"]["pore-ysz"] == pytest.approx(STAIRCASE * 14.285714)
    assert mz["voxel_size_nm"] == [20.0, 10.0, 10.0]


def test_tpb_lines_along_z_and_along_x_have_their_own_edge_length():
    along_z = np.full((5, 6, 7), YSZ, dtype=np.uint8)
    along_z[:, :3, :3] = PORE  # y < 3: pore (x < 3) | Ni (x >= 3); y >= 3: YSZ -> one line along z at y, x = 3
    along_z[:, :3, 3:] = NI
    mz = analyze(along_z, voxel_size_nm=ANISO)
    assert mz["tpb"]["edges"] == {"z": 5, "y": 0, "x": 0}
    # 5 edges x 20 nm = 100 nm = 0.1 um; volume 5*6*7 x 2000 nm^3 = 4.2e-4 um^3 -> 238.095 um^-2 raw
    assert mz["tpb"]["length"] == pytest.approx(STAIRCASE * 0.1)
    assert mz["tpb"]["density_raw"] == pytest.approx(0.1 / 4.2e-4)
    assert mz["tpb"]["density_raw"] == pytest.approx(238.0952, rel=1e-6)
    mx = analyze(tpb_line(), voxel_size_nm=ANISO)  # 6 edges along x of 10 nm in (4, 4, 6) voxels
    assert mx["tpb"]["edges"] == {"z": 0, "y": 0, "x": 6}
    assert mx["tpb"]["density_raw"] == pytest.approx(0.06 / (4 * 4 * 6 * 2000e-9))  # 0.06 um / 1.92e-4 um^3 = 312.5
    assert mx["tpb"]["active_density"]["x"] == pytest.approx(STAIRCASE * 312.5)


def test_one_voxel_size_is_isotropic_and_a_bad_one_is_refused():
    from xtrain.errors import SpatialMetadataError

    v = tpb_line()
    assert json.dumps(analyze(v, voxel_size_nm=10.0)) == json.dumps(analyze(v, voxel_size_nm=(10, 10, 10)))
    with pytest.raises(SpatialMetadataError, match="one .isotropic. or three"):
        analyze(v, voxel_size_nm=(10, 10))
    with pytest.raises(SpatialMetadataError, match="not positive"):
        analyze(v, voxel_size_nm=(20, 0, 10))
