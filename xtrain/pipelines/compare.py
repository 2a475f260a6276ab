"""Compare segmenters on the same region: one table, one figure, every claim a comparison.

    xtrain compare runs/unet runs/pix2pix runs/mlp --labels soc.zarr --z 205,250 \\
        --baselines otsu,kmeans,median-otsu --fit soc.zarr --fit-z 0,200 --report reports/soc

Each positional entry is a training run (a folder with model.pt), a model.pt, or an existing
prediction (a segmentation store or a TIFF stack).  Runs and models segment the image of
the ``--labels`` store (or ``--image``) with ``xtrain.infer.segment()``; baselines are fitted on
``--fit`` (its ``--fit-z`` slab) and applied to the same image.  Every prediction is then
evaluated against the labels on the same z range with ``xtrain.evaluate.evaluate``: Dice per
phase next to the microstructure numbers (phase fractions, TPB density) and their ratio to
the labels.  Sweep studies (``--study TUNE_DIR``: a data-size or noise study made by
``xtrain tune``) add a plot of validation Dice against the studied parameter.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.store import open_segmentation
from ..errors import InputNotFoundError, OutputExistsError
from ..evaluate.core import evaluate, open_label_volume, to_json
from ..evaluate.report import table
from ..io import atomic_write, read_csv, write_csv

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..infer.options import SegmentOptions


@dataclass
class Entry:
    name: str
    kind: str  # "model", "prediction" or "baseline"
    source: str
    prediction: Path | None = None


def resolve_entry(spec: str) -> Entry:
    """A run folder / model.pt -> a model to run; anything else -> an existing prediction."""
    path = Path(spec)
    if not path.exists():
        raise InputNotFoundError(f"'{spec}' does not exist; give a run folder (with model.pt), a model.pt or a "
                                 "prediction (.zarr / TIFF)")
    if path.is_dir() and (path / "model.pt").is_file():
        return Entry(path.name, "model", str(path / "model.pt"))
    if path.suffix == ".pt":
        return Entry(path.parent.name if path.name == "model.pt" else path.stem, "model", str(path))
    return Entry(path.name.removesuffix(".zarr"), "prediction", str(path), path)


def _unique(entries: list[Entry]) -> None:
    seen: dict[str, int] = {}
    for e in entries:
        n = seen.get(e.name, 0)
        seen[e.name] = n + 1
        if n:
            e.name = f"{e.name}-{n + 1}"


def inference_label(prediction: Path) -> str:
    """How a segmentation made by xtrain was run, for the table: "zyx clean (model's)" (the model's
    validated settings), "z (given)", "clean" (a cleaned baseline); "" when it does not say."""
    if prediction.suffix != ".zarr":
        return ""
    source = open_segmentation(prediction).info.source
    settings = source.get("settings") or {}
    if not settings:
        return ""
    clean = " clean" if settings.get("clean") else ""
    if source.get("kind") == "baseline":  # a threshold has no slicing axes
        return clean.strip()
    chosen = set((source.get("inference") or {}).get("chosen_by", {}).values())
    by = {frozenset({"model"}): " (model's)", frozenset({"options"}): " (given)",
          frozenset({"default"}): " (default)"}.get(frozenset(chosen), "")
    return f"{settings['axes']}{clean}{by}"


def summary_row(name: str, result: dict[str, Any], inference: str = "") -> dict[str, Any]:
    """The comparison's numbers for one method (flat, for the table, CSV and JSON); ``inference``:
    how it was segmented (``inference_label``)."""
    ov = result["overlap"]
    row: dict[str, Any] = {"method": name, "inference": inference, "mean_dice": ov["mean_dice"]}
    row.update({f"dice_{c}": v["dice"] for c, v in ov["per_class"].items()})
    row["slice_dice_std"] = result["per_slice"]["summary"]["mean_dice"]["std"]
    ms = result.get("microstructure")
    if ms:
        row.update({f"fraction_{c}": v for c, v in ms["pred"]["fractions"].items()})
        row["tpb_density"] = ms["pred"]["tpb"]["density"]
        if ms["ratio"] is not None:  # None: sparse labels, whose TPB is not computed
            row["tpb_ratio"] = ms["ratio"]["tpb"]["density"]
    return row


def labels_row(result: dict[str, Any]) -> dict[str, Any]:
    """The labels' own fractions and TPB density (none for sparse labels: their microstructure is not computed)."""
    ms = (result.get("microstructure") or {}).get("labels")
    if ms is None:
        return {"method": "labels (truth)"}
    return {"method": "labels (truth)", **{f"fraction_{c}": v for c, v in ms["fractions"].items()},
            "tpb_density": ms["tpb"]["density"], "tpb_ratio": 1.0}


def compare(entries: Sequence[str], labels: str, report_dir: str | os.PathLike, *, image: str | None = None,
            z_range: tuple[int, int] | None = None, label_map: dict[int, int] | None = None,
            baselines: Sequence[str] = (), fit: str | None = None, fit_z: tuple[int, int] | None = None,
            studies: Sequence[str] = (), segment_options: SegmentOptions | None = None,
            overwrite: bool = False) -> dict[str, Any]:
    """Segment (where needed), evaluate and tabulate; writes REPORT_DIR/compare.{md,json,csv,png}.

    ``segment_options``: how models are segmented (default ``SegmentOptions()``: each model's
    validated axes and clean-up); a prediction already in REPORT_DIR/predictions is continued or kept.
    A comparison refused on the way (a bad model, a prediction of the wrong shape) leaves no empty
    report folder behind; predictions already made stay (a rerun reuses them)."""
    from ..infer import SegmentOptions

    out = Path(report_dir)
    if (out / "compare.md").exists() and not overwrite:
        raise OutputExistsError(f"comparison '{out / 'compare.md'}' already exists; pass --overwrite or another --report")
    truth = open_label_volume(labels, label_map)  # fail early on bad labels
    items = [resolve_entry(e) for e in entries]
    items += [Entry(b, "baseline", fit or "") for b in baselines]
    if not items:
        raise InputNotFoundError("nothing to compare: give runs, models or predictions, or --baselines")
    if baselines and not fit:
        raise InputNotFoundError("--baselines needs --fit STORE (the labelled store whose training slab they fit on)")
    _unique(items)
    options = replace(segment_options or SegmentOptions(), resume=True)
    source = image or labels
    created = [d for d in (out, out / "predictions") if not d.exists()]
    try:
        _predict(items, source, out / "predictions", options, fit, fit_z)
        return _report(items, truth, labels, source, out, z_range, studies)
    except BaseException:
        for folder in reversed(created):  # a refused comparison leaves no empty report folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: predictions made before the error stay for a rerun
        raise


def _report(items: list[Entry], truth: Any, labels: str, source: str, out: Path, z_range: tuple[int, int] | None,
            studies: Sequence[str]) -> dict[str, Any]:
    """Evaluate every entry's prediction against ``truth``; write compare.{json,csv,md} and the figures."""
    results, rows = {}, []
    for item in items:
        log.info("evaluating %s", item.name)
        result = evaluate(str(item.prediction), truth, z_range=z_range)
        results[item.name] = result
        rows.append(summary_row(item.name, result, inference_label(Path(item.prediction))))
    rows.append(labels_row(next(iter(results.values()))))
    study_rows = {Path(s).name: read_study(s) for s in studies}

    atomic_write(out / "compare.json", to_json({"labels": str(labels), "z_range": list(z_range) if z_range else None,
                                               "summary": rows, "studies": study_rows, "results": results}) + "\n",
                 what="the comparison")
    write_csv(out / "compare.csv", rows)
    figures = [_plot_summary(out / "compare.png", rows)]
    figures += [_plot_study(out / f"study_{name}.png", name, r) for name, r in study_rows.items() if r]
    md = ["# Segmentation comparison", "",
          f"Labels: `{labels}`" + (f", z {z_range[0]}..{z_range[1] - 1}" if z_range else "") + f"; image: `{source}`",
          "", summary_table(rows, markdown=True), "",
          "Dice is per phase over the whole region; fractions and TPB density are computed from each "
          "segmentation; `TPB ratio` = TPB density / the labels' TPB density (1 is right).", ""]
    first = next(iter(results.values()))
    if "sparse_labels" in first:  # one line: no labels' TPB, no TPB ratio
        md += [first["sparse_labels"]["note"], ""]
    md += [f"![{f.stem}]({f.name})" for f in figures if f]
    atomic_write(out / "compare.md", "\n".join(md) + "\n", what="the comparison report")
    return {"summary": rows, "studies": study_rows, "report": str(out / "compare.md")}


def _predict(items: list[Entry], source: str, preds: Path, options: SegmentOptions, fit: str | None,
             fit_z: tuple[int, int] | None) -> None:
    """Segment ``source`` with every model and baseline entry into ``preds`` (an existing prediction
    there is kept; an interrupted one continued); sets each entry's ``prediction``."""
    from ..evaluate.baselines import fit_baseline
    from ..infer import segment, segment_baseline

    preds.mkdir(parents=True, exist_ok=True)
    for item in items:
        if item.kind == "prediction":
            continue
        item.prediction = preds / f"{item.name}.zarr"
        if item.prediction.exists():
            continue
        if item.kind == "model":
            log.info("segmenting %s with %s", source, item.source)
            segment(item.source, source, item.prediction, options)
        else:
            log.info("fitting %s on %s%s and segmenting %s", item.name, fit, f" z {fit_z}" if fit_z else "", source)
            segment_baseline(fit_baseline(item.name, fit, fit_z), source, item.prediction)


SUMMARY_COLUMNS = ("method", "inference", "mean_dice", "dice_pore", "dice_ysz", "dice_ni", "fraction_pore", "fraction_ysz",
                   "fraction_ni", "tpb_density", "tpb_ratio")


def summary_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    cols = [c for c in SUMMARY_COLUMNS if any(r.get(c, "") != "" for r in rows)]
    cols += [c for r in rows for c in r if c not in cols and c.startswith(("dice_", "fraction_"))]
    return table(cols, [[r.get(c, "") for c in cols] for r in rows], markdown)


def read_study(tune_dir: str) -> list[dict[str, Any]]:
    """(studied parameter, value, best validation mean Dice) per trial of a sweep's results.csv.

    The studied parameter is the dotted config key that varies between trials (e.g.
    ``data.fraction`` or ``data.augment.noise_fraction``); non-numeric values are skipped."""
    path = Path(tune_dir) / "results.csv"
    if not path.is_file():
        raise InputNotFoundError(f"study '{tune_dir}' has no results.csv; run 'xtrain tune' first")
    rows = read_csv(path)
    if not rows or "best_val_mean_dice" not in rows[0]:
        return []
    params = [k for k in rows[0] if "." in k and not k.startswith(("final_", "best_"))]
    varying = [k for k in params if len({r[k] for r in rows}) > 1]
    if not varying:
        return []
    key = varying[0]
    out = []
    for r in rows:
        try:
            out.append({"parameter": key, "value": float(r[key]), "dice": float(r["best_val_mean_dice"])})
        except (TypeError, ValueError):
            continue
    return sorted(out, key=lambda d: d["value"])


def _plot_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    import numpy as np
    from matplotlib.figure import Figure

    methods = [r for r in rows if "mean_dice" in r]
    classes = [k.removeprefix("dice_") for k in methods[0] if k.startswith("dice_")] if methods else []
    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    x = np.arange(len(methods))
    width = 0.8 / max(len(classes), 1)
    for i, c in enumerate(classes):
        a.bar(x + i * width - 0.4 + width / 2, [m.get(f"dice_{c}", np.nan) for m in methods], width, label=c)
    a.set_xticks(x, [m["method"] for m in methods], rotation=30, ha="right")
    a.set_ylim(min(0.5, min((m["mean_dice"] for m in methods), default=0.5)), 1.0)
    a.set_ylabel("Dice")
    a.legend()
    a.set_title("Dice per phase")
    b.bar(x, [m.get("tpb_ratio", np.nan) for m in methods], color="tab:gray")
    b.axhline(1.0, color="k", lw=1)
    b.set_xticks(x, [m["method"] for m in methods], rotation=30, ha="right")
    b.set_ylabel("TPB density / labels")
    b.set_title("Triple-phase boundary density")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _plot_study(path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot([r["value"] for r in rows], [r["dice"] for r in rows], "o-")
    ax.set_xlabel(rows[0]["parameter"])
    ax.set_ylabel("best validation mean Dice")
    ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path

