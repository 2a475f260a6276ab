"""Tables and a Markdown + PNG report of an ``xtrain.evaluate.evaluate`` result.

    print(format_tables(result))                        # aligned plain-text tables (the CLI)
    write_report(result, "report/", pred, truth)        # report.md, metrics.json, *.png

The same table builder makes the terminal output and the Markdown (columns padded in both,
so the Markdown source reads as well as it renders).  Figures are drawn on
``matplotlib.figure.Figure`` and saved with its own Agg canvas: no pyplot, no backend
switched, no display and no global figure state.  Slices for the figures are taken at the middle of each axis, streamed from
the volumes slab by slab like everything else.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.labels import IGNORE
from ..errors import InputNotFoundError, OutputExistsError
from .microstructure import AXES

log = logging.getLogger(__name__)

FIGURES = ("slices.png", "confusion.png", "dice_z.png")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Columns padded to equal width; first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in header]] + [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    sep = ("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
           if markdown else "  ".join("-" * w for w in widths))
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def overlap_rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    ov, ps = result["overlap"], result["per_slice"]["summary"]
    header = ["class", "Dice", "IoU", "precision", "recall", "F1", "support", "slice Dice mean±std"]
    rows = []
    for name, c in ov["per_class"].items():
        s = ps[name]
        rows.append([name, c["dice"], c["iou"], c["precision"], c["recall"], c["f1"], c["support"],
                     f"{_fmt(s['mean'])} ± {_fmt(s['std'])}"])
    s = ps["mean_dice"]
    rows.append(["mean", ov["mean_dice"], ov["mean_iou"], "", "", "", "", f"{_fmt(s['mean'])} ± {_fmt(s['std'])}"])
    rows.append(["accuracy", ov["accuracy"], "", "", "", "", "", ""])
    return header, rows


def microstructure_rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """PRED, LABELS and their ratio per quantity; PRED only when the labels are sparse (no microstructure)."""
    ms = result["microstructure"]
    p, t, r = ms["pred"], ms["labels"], ms["ratio"]
    units = p["units"]
    quantities: list[tuple[str, Any]] = []  # (row name, function of one microstructure dict)
    for name in p["fractions"]:
        quantities.append((f"volume fraction {name}", lambda d, n=name: d["fractions"][n]))
    for pair in p["specific_area"]:
        quantities.append((f"interfacial area {pair} [{units['specific_area']}]",
                           lambda d, q=pair: d["specific_area"][q]))
    quantities.append((f"TPB density [{units['tpb_density']}]", lambda d: d["tpb"]["density"]))
    quantities.append(("TPB voxel edges", lambda d: d["tpb"]["edges_total"]))
    if "percolation" in p:
        for a in AXES:
            quantities.append((f"active TPB fraction ({a})", lambda d, a=a: d["tpb"]["active_fraction"][a]))
        for name in p["percolation"]:
            for a in AXES:
                quantities.append((f"percolating {name} ({a})", lambda d, n=name, a=a: d["percolation"][n][a]))
    columns = [p] if t is None else [p, t, r]
    rows = [[label, *(get(d) for d in columns)] for label, get in quantities]
    return ["quantity", "PRED", "LABELS", "PRED/LABELS"][:1 + len(columns)], rows


def confusion_rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    classes = result["classes"]
    return (["true \\ predicted", *classes],
            [[name, *row] for name, row in zip(classes, result["confusion_matrix"])])


def format_tables(result: dict[str, Any], markdown: bool = False) -> str:
    """The overlap, confusion-matrix and microstructure tables, as the CLI prints them."""
    z0, z1 = result["z_range"]
    vs = result["voxel_size_nm"]
    head = (f"PRED {result['pred']}  vs  LABELS {result['labels']}\n"
            f"shape {tuple(result['shape'])} (z {z0}..{z1 - 1}), voxel size "
            f"{f'{vs:g} nm' if vs else 'unknown (densities per voxel)'}")
    h = "## " if markdown else ""  # section titles become Markdown headings
    parts = [head, f"{h}Overlap (whole volume; per-slice Dice along z as mean ± std)",
             table(*overlap_rows(result), markdown),
             f"{h}Confusion matrix (voxels)", table(*confusion_rows(result), markdown)]
    if "sparse_labels" in result:
        parts.insert(1, result["sparse_labels"]["note"])
    if "microstructure" in result:
        parts += [f"{h}Microstructure (TPB and areas ×2/3 staircase correction; percolation along z, y, x)"
                  + (" of the prediction" if result["microstructure"]["labels"] is None else ""),
                  table(*microstructure_rows(result), markdown)]
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- figures


def middle_planes(volume, slab: int = 32) -> dict[str, np.ndarray]:
    """xy (at mid z), xz (at mid y) and yz (at mid x) planes of a ``Volume``, read slab by slab."""
    depth, ny, nx = volume.shape
    zm, ym, xm = depth // 2, ny // 2, nx // 2
    xz, yz, xy = [], [], None
    for z0 in range(0, depth, slab):
        block = volume.read(volume.planes(z0, min(z0 + slab, depth)))  # (n, Y, X)
        xz.append(block[:, ym, :])
        yz.append(block[:, :, xm])
        if z0 <= zm < z0 + block.shape[0]:
            xy = block[zm - z0]
    return {"xy": xy, "xz": np.concatenate(xz), "yz": np.concatenate(yz)}


def _plot_slices(path: Path, truth, pred, image, slab: int) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    t, p = middle_planes(truth, slab), middle_planes(pred, slab)
    im = middle_planes(image, slab) if image is not None else None
    phases = ListedColormap(["#202020", "#4f9fd8", "#e8b530"])  # pore dark, YSZ blue, Ni gold
    cols = (["image"] if im else []) + ["labels", "prediction", "errors"]
    depth, ny, nx = truth.shape
    heights = [ny, depth, depth]  # rows as tall as the planes they show (xz/yz are Z tall)
    fig = Figure(figsize=(3.2 * len(cols), 3.2 * sum(heights) / max(nx, ny) + 1.0))
    axes = fig.subplots(3, len(cols), squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, plane in enumerate(("xy", "xz", "yz")):
        known = t[plane] != IGNORE  # sparse labels: unlabelled voxels stay blank, and are no error
        truth_plane = t[plane] if known.all() else np.ma.masked_array(t[plane], ~known)
        panels = ([(im[plane], "gray", None)] if im else []) + [
            (truth_plane, phases, (0, 2)), (p[plane], phases, (0, 2)),
            (((t[plane] != p[plane]) & known).astype(np.uint8), ListedColormap(["white", "red"]), (0, 1))]
        for c, (data, cmap, lim) in enumerate(panels):
            ax = axes[r, c]
            kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
            if lim is None:  # grey values: robust contrast
                kw = {"vmin": float(np.percentile(data, 0.5)), "vmax": float(np.percentile(data, 99.5))}
            ax.imshow(data, cmap=cmap, interpolation="nearest", aspect="equal", **kw)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c])
            if c == 0:
                ax.set_ylabel(plane)
    fig.suptitle("middle planes: xy (mid z), xz (mid y, z down), yz (mid x, z down); errors in red", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_confusion(path: Path, result: dict[str, Any]) -> None:
    from matplotlib.figure import Figure

    m = np.asarray(result["confusion_matrix"], dtype=np.float64)
    classes = result["classes"]
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)  # fraction of each true class
    fig = Figure(figsize=(4.5, 4.0))
    ax = fig.subplots()
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rows[i, j]:.3f}\n{int(m[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes), ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_dice_z(path: Path, result: dict[str, Any]) -> None:
    from matplotlib.figure import Figure

    ps = result["per_slice"]
    z = np.asarray(ps["z"])
    gaps = len(z) > 1 and bool((np.diff(z) > 1).any())  # sparse labels: only some slices are scored
    style = {"marker": "o", "ms": 3} if gaps else {}
    fig = Figure(figsize=(6.5, 3.5))
    ax = fig.subplots()
    for name, values in ps["dice"].items():
        ax.plot(z, np.asarray(values, dtype=float), label=name, lw=1, **style)
    ax.plot(z, np.asarray(ps["mean_dice"], dtype=float), label="mean", color="black", lw=1.5, **style)
    ax.set_xlabel("z (slice)"), ax.set_ylabel("Dice"), ax.legend(fontsize=8), ax.grid(alpha=0.3)
    ax.set_title("per-slice Dice along z" + (" (slices with labels)" if gaps else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(result: dict[str, Any], out_dir: str | os.PathLike, pred=None, truth=None, image=None,
                 slab: int = 32, overwrite: bool = False) -> Path:
    """``out_dir/report.md``, ``metrics.json`` (as ``--json``) and the PNG figures; returns report.md's path.

    ``pred`` / ``truth``: the label views (``open_label_volume``) the result came from (cropped as evaluated),
    needed for the slice figure (left out when missing); ``image``: grey values, or taken
    from ``truth.image`` / ``pred.image`` when those came from stores with an image.
    """
    from .core import to_json

    out = Path(out_dir)
    if not out.parent.exists():
        raise InputNotFoundError(f"report folder's parent '{out.parent}' does not exist; create it first")
    if (out / "report.md").exists() and not overwrite:
        raise OutputExistsError(f"report '{out / 'report.md'}' already exists; pass --overwrite or choose another DIR")
    out.mkdir(exist_ok=True)
    if image is None:
        image = getattr(truth, "image", None) or getattr(pred, "image", None)
    (out / "metrics.json").write_text(to_json(result) + "\n")
    figures = []
    if pred is not None and truth is not None:
        _plot_slices(out / "slices.png", truth, pred, image, slab)
        figures.append(("slices.png", "Middle planes" + (": image, " if image is not None else ": ")
                        + "labels, prediction, errors"))
    _plot_confusion(out / "confusion.png", result)
    figures.append(("confusion.png", "Confusion matrix"))
    _plot_dice_z(out / "dice_z.png", result)
    figures.append(("dice_z.png", "Per-slice Dice along z"))

    md = ["# Segmentation evaluation", "", "```", f"xtrain evaluate {result['pred']} {result['labels']} --z {result['z_range'][0]},{result['z_range'][1]}",
          "```", ""]
    md.append(format_tables(result, markdown=True))
    md += ["", "Definitions: TPB = voxel edges whose 4 voxels hold pore, YSZ and Ni, ×2/3 for the staircase; "
           "interfacial areas = voxel faces between two phases ×2/3; percolating = in a face-connected cluster "
           "touching both volume faces along the axis; active TPB = TPB edges touching percolating clusters of "
           "all three phases (see xtrain/evaluate/microstructure.py). All numbers are in metrics.json.", ""]
    for name, caption in figures:
        md += [f"## {caption}", "", f"![{caption}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    log.info("wrote report %s", path)
    return path
