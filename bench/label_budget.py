"""The label-budget experiment (issue 21 "## 4"): how many labelled slices does a model need?

    python bench/label_budget.py --data soc.zarr --out WORK                    # everything (hours on 2 cores)
    python bench/label_budget.py --data soc.zarr --out WORK --only unet --k 5,1
    python bench/label_budget.py --data soc.zarr --out WORK --only scribbles
    python bench/label_budget.py --data soc.zarr --out WORK --only unet --k 5 --set train.epochs=4  # a short run
    python bench/label_budget.py --data soc.zarr --out WORK --only unet --k 2 --tag pseudo \
        --set train.pseudo_weight=1.0 --set data.unlabelled_fraction=0.5   # self-training on: runs unet_k2_pseudo
    python bench/label_budget.py --data soc.zarr --out WORK --check-crop unet_k5   # crop == whole volume?

Parts (``--only``, comma-separated; every run is resumable: a finished one is skipped, an
interrupted training continues with ``--resume``):

* ``unet`` / ``pix2pix``: configs/soc_unet_sparse_cpu.yaml (Pix2Pix: the same with
  ``model.name=pix2pix`` and a small PatchGAN, ``loss.adversarial_weight`` 0.05 as
  configs/pix2pix.yaml) trained on k labelled z-slices (``--k``, default 1,2,5,10,25,200), evenly
  spread over z 0-199 (slice i of k at ``round((i + 0.5) * 200 / k)``: k=5 gives 20, 60, 100, 140,
  180).  The training store is the real image with labels ONLY on those slices (IGNORE, 255,
  everywhere else, z 200-249 included), with its label census.
* ``scribbles``: the U-Net on scribbles on 10 of those slices: strokes 3 voxels wide inside each
  phase, at least 3 voxels from any phase boundary, about 4 % of each slice's voxels (an equal
  share per phase where the phase allows it).  ``--scribble-margin 1``: strokes that only never touch a
  boundary (no stroke voxel has a 4-neighbour of another phase), the same share; its store and runs
  are named ``scribbles10_m1``.
* ``finetune``: a dense model (``--base MODEL.pt``: the dense recipe's, or this experiment's
  ``runs/unet_k200/model.pt``) fine-tuned with ``xtrain train --init`` and
  configs/soc_unet_finetune_cpu.yaml (its own schedule: ``--set`` does not apply) on 2 labelled
  slices of a changed copy of the volume (Gaussian blur sigma 1, gamma 0.8,
  Gaussian noise 2 % of the grey range, float32), against the sparse recipe from scratch on the
  same 2 slices (``scratch2``, with ``--set``: give it the fine-tune's ``train.epochs=6`` for the
  same number of steps).  Without ``--base``, or without ``--init`` in this xtrain, only
  ``scratch2`` runs and the fine-tune is reported as nan.

Every model is scored with the CLI a user runs: ``xtrain segment MODEL CROP --axes zyx --clean``
on a crop z 200-250 of the volume (its dense labels; the same labels for z 205-249 as segmenting the
whole volume only if the y/x passes do not need planes beyond the crop: ``--check-crop NAME``
measures that once), then ``xtrain evaluate SEG CROP --z 5,50``.  Writes WORK/label_budget.csv, a
Markdown table and WORK/label_budget.png (Dice and TPB ratio against k, one line per model;
matplotlib's Figure API), and ends with
``RESULT dice_k1=… dice_k5=… tpb_k5=… dice_scribbles=… dice_finetune=… dice_scratch2=…``.
The machine's load (``os.getloadavg``) is printed with every training's minutes and patches/s.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import scores, xtrain  # noqa: E402  (bench/quality.py: the CLI runner and the score extraction)

log = logging.getLogger("bench.label_budget")
REPO = Path(__file__).resolve().parents[1]
TRAIN_Z = (0, 200)
CROP_Z = (200, 250)
SCORE_Z = (5, 50)  # z 205-249 in the crop
DEFAULT_K = (1, 2, 5, 10, 25, 200)
FINETUNE = "configs/soc_unet_finetune_cpu.yaml"  # the fine-tune part's recipe (its own schedule, no --set)
PIX2PIX = ["model.name=pix2pix", "model.kwargs={width: 16, depth: 4, norm: group, disc_width: 32, disc_layers: 3}",
           "loss.adversarial_weight=0.05"]
SCRIBBLE_SHARE = 0.04  # of each scribbled slice's voxels
SCRIBBLE_MARGIN = 3  # voxels between a stroke and any phase boundary (--scribble-margin; 1: strokes that only never touch one)


def spread(k: int, z: tuple[int, int] = TRAIN_Z) -> list[int]:
    """k slice indices evenly spread over [z0, z1): the centres of k equal parts."""
    return sorted({z[0] + int((i + 0.5) * (z[1] - z[0]) / k) for i in range(k)})


# ----------------------------------------------------------------------------- stores


def copy_store(dense, out: Path, labels: np.ndarray | None, image: np.ndarray | None = None,
               z: tuple[int, int] | None = None, source: dict | None = None) -> Path:
    """A store with the image of ``dense`` (or ``image``) and ``labels`` (None: dense's own), z range ``z``
    (None: all).  Sparse labels (any IGNORE) get their census, as ingest records it."""
    from xtrain.data.labels import census
    from xtrain.data.store import write_store

    z0, z1 = z or (0, dense.shape[0])
    img = np.asarray(dense.image[z0:z1]) if image is None else image
    lab = np.asarray(dense.labels[z0:z1]) if labels is None else labels
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with write_store(tmp, img.shape) as w:
        w.create("image", img.shape, img.dtype)[:] = img
        w.create("labels", lab.shape, np.uint8)[:] = lab
        w.info.classes = list(dense.info.classes)
        w.info.voxel_size_nm = dense.info.voxel_size_nm
        w.info.stats = dense.info.stats if image is None else image_stats(img)
        w.info.source = {"kind": "bench/label_budget.py", "from": str(dense.path), **(source or {})}
        c = census(lab)
        if not c.dense:
            w.info.labels = c.to_dict()
    os.replace(tmp, out)
    return out


def image_stats(image: np.ndarray) -> dict:
    """A changed copy's own statistics, as ingest computes them."""
    from xtrain.data.stats import volume_stats
    from xtrain.data.volumes import array_volume

    return volume_stats(array_volume(image))


def planes_only(labels: np.ndarray, zs: list[int]) -> np.ndarray:
    from xtrain.data.labels import IGNORE

    out = np.full_like(labels, IGNORE)
    out[zs] = labels[zs]
    return out


def scribbles(labels: np.ndarray, zs: list[int], seed: int = 0, margin: int = SCRIBBLE_MARGIN) -> np.ndarray:
    """Strokes on the z-planes ``zs``: random walks 3 voxels wide inside each phase, ``margin`` voxels
    from any boundary (1: no stroke voxel touches another phase), until each phase holds its share of
    ``SCRIBBLE_SHARE`` of the plane."""
    from scipy import ndimage

    from xtrain.data.labels import IGNORE

    rng = np.random.default_rng(seed)
    out = np.full_like(labels, IGNORE)
    classes = sorted(int(c) for c in np.unique(labels) if c != IGNORE)
    brush = ndimage.generate_binary_structure(2, 1)
    for z in zs:
        plane = labels[z]
        budget = SCRIBBLE_SHARE * plane.size / len(classes)
        for c in classes:
            inside = ndimage.binary_erosion(plane == c, iterations=margin + 1)
            painted = np.zeros(plane.shape, bool)
            seeds = np.argwhere(inside)
            tries = 0
            while painted.sum() < budget and len(seeds) and tries < 2000:
                tries += 1
                y, x = seeds[rng.integers(len(seeds))]
                angle = rng.uniform(0, 2 * np.pi)
                path = np.zeros(plane.shape, bool)
                for step in range(60):  # a straight stroke, stopped where it would leave the phase
                    yy, xx = int(round(y + step * np.sin(angle))), int(round(x + step * np.cos(angle)))
                    if not (0 <= yy < plane.shape[0] and 0 <= xx < plane.shape[1]) or not inside[yy, xx]:
                        break
                    path[yy, xx] = True
                painted |= ndimage.binary_dilation(path, brush)  # 3 wide; still >= MARGIN from the boundary
            out[z][painted] = c
    return out


def changed_copy(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The 'new scan': Gaussian blur (sigma 1 voxel), gamma 0.8 on the [0, 1]-scaled grey values, Gaussian noise
    of 2 % of the grey range, float32."""
    from scipy import ndimage

    x = image.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    x = ndimage.gaussian_filter((x - lo) / (hi - lo), 1.0)
    x = np.clip(x, 0, 1) ** 0.8
    x += np.random.default_rng(seed).normal(0, 0.02, x.shape).astype(np.float32)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- runs


def loadavg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def train(name: str, store: Path, work: Path, args, extra: list[str], config: str | None = None,
          overrides: bool = True) -> dict:
    """``xtrain train`` of one run (resumed when interrupted, skipped when finished): minutes, patches/s.
    ``config``: other than ``--config``; ``overrides``: False keeps ``--set`` off this run (the fine-tune
    trains its own recipe's schedule)."""
    from xtrain.train.run_dir import LAST, read_status

    run = work / "runs" / name
    state = read_status(run).get("state")
    timing = work / "runs" / f"{name}.train.json"
    if state == "finished" and timing.exists():
        return json.loads(timing.read_text())
    cmd = ["train", "--config", config or args.config, "--data", str(store), "--out", str(run),
           "--workers", str(args.workers)]
    sets = [*extra, *((args.set or []) if overrides else [])]
    cmd += [a for s in sets for a in ("--set", s)]
    if (run / LAST).exists() or state:
        cmd.append("--resume")
    load_before = loadavg()
    seconds, _ = xtrain(*cmd)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    rate = float(np.mean([float(r["samples_per_s"]) for r in rows])) if rows else float("nan")
    info = {"train_min": seconds / 60, "patches_per_s": rate, "epochs": len(rows), "load": f"{load_before} -> {loadavg()}"}
    timing.write_text(json.dumps(info))
    log.info("%s: trained %.1f min, %.1f patches/s, load %s", name, info["train_min"], rate, info["load"])
    return info


def score(name: str, model: Path, crop: Path, work: Path) -> dict:
    seg = work / "seg" / f"{name}.zarr"
    seg.parent.mkdir(parents=True, exist_ok=True)
    if not seg.exists():
        # normalisation train: every store of one scan carries the scan's statistics (a crop's own would differ)
        xtrain("segment", str(model), str(crop), str(seg), "--axes", "zyx", "--clean", "--normalisation", "train")
    _, out = xtrain("evaluate", str(seg), str(crop), "--z", f"{SCORE_Z[0]},{SCORE_Z[1]}", "--json",
                    "--no-percolation")
    return scores(json.loads(out))


def run_one(name: str, store: Path, crop: Path, work: Path, args, extra: list[str], **how) -> dict:
    done = work / "results" / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    info = train(name, store, work, args, extra, **how)
    result = {"name": name, **info, **score(name, work / "runs" / name / "model.pt", crop, work)}
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result))
    log.info("%s: mean Dice %.4f  TPB ratio %.3f", name, result["dice"], result["tpb"])
    return result


def has_init() -> bool:
    """Whether this xtrain's ``train`` takes ``--init`` (fine-tuning)."""
    return "--init" in xtrain("train", "--help")[1]


def check_crop(name: str, data: Path, crop: Path, work: Path) -> None:
    """Segment the whole volume with run NAME's model and compare z 205-249 with the crop's labels."""
    from xtrain.data.store import open_segmentation

    model = work / "runs" / name / "model.pt"
    whole = work / "seg" / f"{name}.whole.zarr"
    if not whole.exists():
        xtrain("segment", str(model), str(data), str(whole), "--axes", "zyx", "--clean", "--normalisation", "train")
    score(name, model, crop, work)
    a = np.asarray(open_segmentation(whole).labels[CROP_Z[0] + SCORE_Z[0]:CROP_Z[1]])
    b = np.asarray(open_segmentation(work / "seg" / f"{name}.zarr").labels[SCORE_Z[0]:])
    print(f"crop vs whole volume, z {CROP_Z[0] + SCORE_Z[0]}-{CROP_Z[1] - 1}: {100 * np.mean(a != b):.4f} % of "
          f"voxels differ")


# ----------------------------------------------------------------------------- report


def report(results: dict[str, dict], work: Path) -> None:
    rows = sorted(results.values(), key=lambda r: r["name"])
    keys = ["name", "dice", "dice_pore", "dice_ysz", "dice_ni", "tpb", "frac_pp", "train_min", "patches_per_s",
            "epochs", "load"]
    with open(work / "label_budget.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print("| run | mean Dice | TPB ratio | max fraction error (pp) | training (min) | patches/s | load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['dice']:.4f} | {r['tpb']:.3f} | {r['frac_pp']:.2f} | {r['train_min']:.1f} | "
              f"{r['patches_per_s']:.1f} | {r['load']} |")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax_dice, ax_tpb = fig.subplots(1, 2)
    for model in ("unet", "pix2pix"):
        pts = sorted((int(r["name"].split("_k")[1]), r) for r in rows
                     if r["name"].startswith(f"{model}_k") and r["name"].split("_k")[1].isdigit())
        if pts:
            ks = [k for k, _ in pts]
            ax_dice.plot(ks, [r["dice"] for _, r in pts], "o-", label=model)
            ax_tpb.plot(ks, [r["tpb"] for _, r in pts], "o-", label=model)
    for ax, what in ((ax_dice, "mean Dice, z 205-249"), (ax_tpb, "TPB ratio (prediction / labels)")):
        ax.set_xscale("log")
        ax.set_xlabel("labelled z-slices k")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_tpb.axhline(1.0, color="grey", lw=0.8)
    fig.tight_layout()
    fig.savefig(work / "label_budget.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the ingested real volume (dense labels)")
    ap.add_argument("--out", type=Path, default=Path("label_budget"), help="work folder (resumable)")
    ap.add_argument("--only", default="unet,pix2pix,scribbles,finetune")
    ap.add_argument("--k", default=",".join(map(str, DEFAULT_K)))
    ap.add_argument("--config", default="configs/soc_unet_sparse_cpu.yaml")
    ap.add_argument("--base", type=Path, default=None, help="the dense model to fine-tune (finetune part)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", help="config override for every training (e.g. train.epochs=4)")
    ap.add_argument("--finetune-set", action="append", help="config override for the fine-tune only (it takes "
                    "no --set: e.g. train.epochs=2 beside --set train.epochs=2 for the same steps from scratch)")
    ap.add_argument("--tag", default="", help="suffix of this invocation's run names (e.g. 'pseudo' for a run "
                    "with other --set options beside the plain ones: unet_k2_pseudo)")
    ap.add_argument("--scribble-margin", type=int, default=SCRIBBLE_MARGIN,
                    help="voxels between a stroke and any phase boundary (default %(default)s; 1: strokes only never touch one)")
    ap.add_argument("--check-crop", default=None, metavar="NAME", help="compare the crop with the whole volume")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from xtrain.data.store import open_store

    work = args.out.resolve()
    (work / "stores").mkdir(parents=True, exist_ok=True)
    dense = open_store(args.data)
    crop = work / "stores" / "crop.zarr"
    if not crop.exists():
        copy_store(dense, crop, None, z=CROP_Z)
    if args.check_crop:
        check_crop(args.check_crop, args.data, crop, work)
        return
    parts, ks = args.only.split(","), [int(k) for k in args.k.split(",")]
    tag = f"_{args.tag}" if args.tag else ""
    print(f"uptime load {loadavg()}; parts {parts}, k {ks}; overrides {args.set or []}")
    labels = np.asarray(dense.labels[:])
    results: dict[str, dict] = {}

    def sparse_store(name: str, make) -> Path:
        path = work / "stores" / f"{name}.zarr"
        if not path.exists():
            copy_store(dense, path, make())
        return path

    for model in ("unet", "pix2pix"):
        if model in parts:
            for k in ks:
                store = sparse_store(f"k{k}", lambda k=k: planes_only(labels, spread(k)))
                results[f"{model}_k{k}"] = run_one(f"{model}_k{k}{tag}", store, crop, work, args,
                                                   PIX2PIX if model == "pix2pix" else [])
    if "scribbles" in parts:
        m = args.scribble_margin
        name = "scribbles10" if m == SCRIBBLE_MARGIN else f"scribbles10_m{m}"  # the default keeps its old name
        store = sparse_store(name, lambda: scribbles(labels, spread(10), margin=m))
        results["unet_scribbles10"] = run_one(f"unet_{name}{tag}", store, crop, work, args, [])
    if "finetune" in parts:
        changed = changed_copy(np.asarray(dense.image[:]))
        two = work / "stores" / "changed_k2.zarr"
        if not two.exists():
            copy_store(dense, two, planes_only(labels, spread(2)), image=changed, source={"changed": True})
        changed_crop = work / "stores" / "changed_crop.zarr"
        if not changed_crop.exists():
            copy_store(dense, changed_crop, np.asarray(dense.labels[CROP_Z[0]:CROP_Z[1]]),
                       image=changed[CROP_Z[0]:CROP_Z[1]], z=CROP_Z)
        results["scratch2"] = run_one(f"scratch2{tag}", two, changed_crop, work, args, [])
        if args.base and has_init():
            results["finetune2"] = run_one(f"finetune2{tag}", two, changed_crop, work, args,
                                           [f"train.init={args.base.resolve()}", *(args.finetune_set or [])],
                                           config=FINETUNE, overrides=False)
        else:
            log.info("finetune: skipped (%s)", "no --base" if not args.base else "this xtrain has no train --init")
    # the table and plot hold every finished run of WORK, this invocation's and earlier ones
    report({r["name"]: r for r in (json.loads(f.read_text()) for f in sorted((work / "results").glob("*.json")))},
           work)

    def get(name: str, key: str = "dice") -> str:
        value = results.get(name, {}).get(key, math.nan)
        return f"{value:.4f}"

    print(f"RESULT dice_k1={get('unet_k1')} dice_k5={get('unet_k5')} tpb_k5={get('unet_k5', 'tpb')} "
          f"dice_scribbles={get('unet_scribbles10')} dice_finetune={get('finetune2')} dice_scratch2={get('scratch2')}")


if __name__ == "__main__":
    main()
