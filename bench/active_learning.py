"""Active learning on a real volume (issue 23 section 1): do the planes ``xtrain suggest`` picks teach a model more
than planes picked at random with the same budget?

Protocol, per seed: ``--start`` z-planes of the training slab (``--train-z``, default 0-200) labelled at random
(the same planes for every rule), a model trained on them from scratch; then ``--rounds`` rounds, each adding
``--per-round`` z-planes picked by the rule and fine-tuning the previous round's model on all labelled planes
(what napari's Label loop does: ``xtrain.napari.finetune``, in this process, patches drawn only around
labelled pixels).  After every round the model segments the validation slab (``--val-z``, default 205-250,
never labelled) and is scored against its dense ground truth (mean Dice over the classes).  The labels of a
picked plane are the volume's own ground truth on that plane: a perfect annotator.

Rules: ``entropy``, ``boundary``, ``disagreement`` (``xtrain suggest --score ...``; disagreement predicts the z,
y and x passes, 3x the time, and still picks z-planes here), ``spread`` (farthest-first, no model) and
``random`` (uniform among the planes at least ``--spacing`` from a labelled one, the same spacing rule) and
``none`` (the control: every round fine-tunes on the start planes alone, so a rule's gain over ``none`` is what
its planes add beyond the extra training steps).

Resumable: every finished (rule, seed, round) is a row of OUT/results.csv and its model is kept; run the same
command again to continue.  The crops of the volume (train.zarr, val.zarr) are written once into OUT.

    python bench/active_learning.py --data /work/data/soc.zarr --out /tmp/al            # 3 seeds x 3 rounds
    python bench/active_learning.py --data soc.zarr --rules entropy,random --seeds 1 --crop 0,256,0,256

Last line: ``RESULT best=RULE <rule>_dice=mean over seeds of the last round ... <rule>_gain=last - start``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from xtrain.config import config_to_dict, load_config
from xtrain.data.labels import IGNORE
from xtrain.data.painted import save_painted
from xtrain.data.store import open_segmentation, open_store, write_store
from xtrain.data.volumes import open_volume
from xtrain.evaluate.metrics import confusion_matrix, scores
from xtrain.infer import segment
from xtrain.infer.suggest import suggest
from xtrain.models.checkpoint import base_checkpoint, save_checkpoint
from xtrain.napari.finetune import finetune
from xtrain.train.loop import build_model, resolved_model_kwargs

REPO = Path(__file__).resolve().parents[1]
RULES = ("entropy", "boundary", "disagreement", "spread", "random", "none")
FIELDS = ["rule", "seed", "round", "planes", "steps", "mean_dice", "dice", "seconds"]
log = logging.getLogger("active_learning")


def pair(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.split(","))
    return a, b


def crop(data: Path, out: Path, z: tuple[int, int], yx: tuple[int, int, int, int] | None) -> Path:
    """A store of ``data``'s image and labels in z0..z1 (and the y/x window), with ``data``'s own statistics
    (the whole volume's normalisation); written once."""
    if out.exists():
        return out
    src = open_store(data)
    y0, y1, x0, x1 = yx or (0, src.shape[1], 0, src.shape[2])
    shape = (z[1] - z[0], y1 - y0, x1 - x0)
    with write_store(out, shape) as w:
        img, lab = w.create("image", shape, src.image.dtype), w.create("labels", shape, np.uint8)
        for sl in w.slabs(shape[0]):
            zs = slice(z[0] + sl.start, z[0] + sl.stop)
            img[sl] = src.image[zs, y0:y1, x0:x1]
            lab[sl] = src.labels[zs, y0:y1, x0:x1]
        w.info.classes, w.info.stats, w.info.voxel_size_nm = list(src.info.classes), src.info.stats, \
            src.info.voxel_size_nm
        w.info.source = {"kind": "crop", "of": str(data), "z": list(z), "yx": [y0, y1, x0, x1]}
    return out


def untrained(train: Path, config: Path, slices: int, seed: int, out: Path) -> Path:
    """A model.pt of ``config``'s network with its initial weights (seeded): what round 0 trains from."""
    store = open_store(train)
    cfg = load_config(config, [f"data.store={train}", f"data.slices={slices}", f"train.seed={seed}"])
    torch.manual_seed(seed)
    k = len(store.info.classes)
    net = build_model(cfg, slices, k)
    ckpt = base_checkpoint(model_name=cfg.model.name, model_kwargs=resolved_model_kwargs(cfg, slices, k),
                           model_state=net.state_dict(), config=config_to_dict(cfg), stats=store.info.stats,
                           classes=list(store.info.classes), epoch=0, metrics={})
    return save_checkpoint({**ckpt, "kind": "model"}, out)


def labels_store(train: Path, planes: list[int], out: Path) -> Path:
    """The sparse store of ``planes`` (z, in train.zarr coordinates): their ground truth, IGNORE elsewhere."""
    truth = open_store(train).labels
    values = np.zeros(truth.shape, np.uint8)
    for z in planes:
        values[z] = truth[z] + 1
    if out.exists():
        shutil.rmtree(out)
    save_painted(out, values, classes=open_store(train).info.classes, image=open_volume(train))
    return out


def pick(rule: str, model: Path, train: Path, labelled: Path, planes: list[int], n: int, spacing: int,
         rng: np.random.Generator) -> list[int]:
    if rule == "random":
        depth = open_store(train).shape[0]
        free = [z for z in range(depth) if all(abs(z - p) >= spacing for p in planes)]
        chosen: list[int] = []
        while len(chosen) < n and free:
            z = int(rng.choice(free))
            chosen.append(z)
            free = [f for f in free if abs(f - z) >= spacing]
        return chosen
    if rule == "none":
        return []
    axes = "zyx" if rule == "disagreement" else "z"
    # disagreement ranks planes of all three axes; this protocol labels z-planes, so ask for enough picks
    # that n z-planes are among them (asking for n gave mostly y/x planes: rounds that added none)
    ask = n if axes == "z" else n * 40
    picks = suggest(model, train, n=ask, axes=axes, score=rule, spacing=spacing, exclude_labelled=labelled)
    return [p.index for p in picks if p.axis == "z"][:n]


def score(model: Path, val: Path, work: Path, margin: int) -> dict[str, float]:
    """Mean Dice (and per class) of ``model`` on val.zarr's planes ``margin``.. (the scored slab)."""
    seg = segment(model, val, work / "val-seg.zarr", overwrite=True)
    pred = open_segmentation(seg).labels[margin:]
    truth = open_store(val).labels[margin:]
    classes = list(open_store(val).info.classes)
    s = scores(confusion_matrix(pred, truth, len(classes), ignore_index=IGNORE), classes)
    shutil.rmtree(seg, ignore_errors=True)
    return {"mean_dice": s["mean_dice"], **{c: s["per_class"][c]["dice"] for c in classes}}


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def run_seed(args, seed: int, train: Path, val: Path, margin: int, rows: list[dict[str, str]]) -> None:
    """Round 0 (shared by the rules), then each rule's rounds; skips what results.csv holds."""
    out, results = args.out, args.out / "results.csv"
    done = {(r["rule"], int(r["seed"]), int(r["round"])): r for r in rows}
    start_dir = out / f"start-s{seed}"
    start_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    depth = open_store(train).shape[0]
    start: list[int] = []
    while len(start) < args.start:  # random, spaced: the same start for every rule of this seed
        z = int(rng.integers(depth))
        if all(abs(z - p) >= args.spacing for p in start):
            start.append(z)
    if ("start", seed, 0) not in done:
        t0 = time.perf_counter()
        init = untrained(train, args.config, args.slices, seed, start_dir / "init.pt")
        labels_store(train, start, start_dir / "labels.zarr")
        finetune(start_dir / "labels.zarr", init, start_dir, steps=args.start_steps, seed=seed, lr=args.lr)
        s = score(start_dir / "model.pt", val, start_dir, margin)
        row = {"rule": "start", "seed": seed, "round": 0, "planes": ";".join(map(str, start)),
               "steps": args.start_steps, "mean_dice": f"{s['mean_dice']:.4f}",
               "dice": ";".join(f"{v:.4f}" for k, v in s.items() if k != "mean_dice"),
               "seconds": f"{time.perf_counter() - t0:.1f}"}
        append_row(results, row)
        done[("start", seed, 0)] = row
        print(f"seed {seed} start {start}: mean Dice {s['mean_dice']:.4f}", flush=True)
    for rule in args.rules:
        planes, model, steps = list(start), start_dir / "model.pt", args.start_steps
        for r in range(1, args.rounds + 1):
            d = out / f"{rule}-s{seed}" / f"round{r}"
            if (rule, seed, r) in done:  # resume: the planes and model of the finished round
                planes = [int(v) for v in done[(rule, seed, r)]["planes"].split(";")]
                model, steps = d / "model.pt", int(done[(rule, seed, r)]["steps"])
                continue
            d.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            previous = d.parent / f"round{r - 1}" / "labels.zarr" if r > 1 else start_dir / "labels.zarr"
            if not previous.exists():
                labels_store(train, planes, previous)
            rng = np.random.default_rng([seed, RULES.index(rule), r])  # per round: the same picks after a resume
            new = pick(rule, model, train, previous, planes, args.per_round, args.spacing, rng)
            planes = planes + new
            labels_store(train, planes, d / "labels.zarr")
            model = finetune(d / "labels.zarr", model, d, steps=args.steps, seed=seed * 100 + r, lr=args.lr)
            steps += args.steps
            s = score(model, val, d, margin)
            append_row(results, {"rule": rule, "seed": seed, "round": r, "planes": ";".join(map(str, planes)),
                                 "steps": steps, "mean_dice": f"{s['mean_dice']:.4f}",
                                 "dice": ";".join(f"{v:.4f}" for k, v in s.items() if k != "mean_dice"),
                                 "seconds": f"{time.perf_counter() - t0:.1f}"})
            print(f"seed {seed} {rule} round {r}: +{new} -> mean Dice {s['mean_dice']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if r > 1:  # the previous round's store is rebuilt from its planes when a resume needs it
                shutil.rmtree(previous, ignore_errors=True)


def summary(rows: list[dict[str, str]], rules: list[str], rounds: int) -> str:
    """One line per rule (mean +- sd over seeds after the last round, the gain over the start, the curve) and
    the RESULT line."""
    start = {int(r["seed"]): float(r["mean_dice"]) for r in rows if r["rule"] == "start"}
    parts, means = [], {}
    for rule in rules:
        mine = [r for r in rows if r["rule"] == rule]
        last = [r for r in mine if int(r["round"]) == rounds]
        if not last:
            continue
        dice = [float(r["mean_dice"]) for r in last]
        mean, sd = statistics.mean(dice), statistics.stdev(dice) if len(dice) > 1 else 0.0
        gain = statistics.mean(float(r["mean_dice"]) - start[int(r["seed"])] for r in last)
        curve = "/".join(f"{statistics.mean(float(r['mean_dice']) for r in mine if int(r['round']) == k):.4f}"
                         for k in range(1, rounds + 1))
        print(f"{rule:>12}: mean Dice after {rounds} rounds {mean:.4f} +- {sd:.4f} over {len(dice)} seeds "
              f"(gain over the start {gain:+.4f}; by round {curve})")
        parts.append(f"{rule}_dice={mean:.4f} {rule}_sd={sd:.4f} {rule}_gain={gain:+.4f}")
        means[rule] = mean
    best = max(means, key=means.get) if means else "none"
    start_mean = statistics.mean(start.values()) if start else float("nan")
    return f"RESULT best={best} start_dice={start_mean:.4f} seeds={len(start)} rounds={rounds} " + " ".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a store with dense labels (e.g. soc.zarr)")
    p.add_argument("--out", type=Path, default=Path("/tmp/xtrain-active-learning"), help="results and models")
    p.add_argument("--rules", default="entropy,random", help=f"comma-separated, of {', '.join(RULES)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--start", type=int, default=2, help="labelled z-planes before the first round")
    p.add_argument("--per-round", type=int, default=3, help="z-planes added per round")
    p.add_argument("--train-z", type=pair, default=(0, 200))
    p.add_argument("--val-z", type=pair, default=(205, 250))
    p.add_argument("--crop", default=None, help="Y0,Y1,X0,X1: a window of the volume (a shorter run)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml")
    p.add_argument("--slices", type=int, default=3, help="2.5D input slices of the model")
    p.add_argument("--start-steps", type=int, default=400, help="training steps of round 0 (from scratch)")
    p.add_argument("--steps", type=int, default=150, help="fine-tune steps per round")
    p.add_argument("--lr", type=float, default=None, help="default: the config's optim.lr")
    p.add_argument("--spacing", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.rules = [r for r in args.rules.split(",") if r]
    if bad := [r for r in args.rules if r not in RULES]:
        p.error(f"unknown rule {bad[0]}; choose from {', '.join(RULES)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    yx = tuple(int(v) for v in args.crop.split(",")) if args.crop else None
    margin = min(args.slices // 2 + 2, args.val_z[0])  # context planes below the scored slab, not scored
    train = crop(args.data, args.out / "train.zarr", args.train_z, yx)
    val = crop(args.data, args.out / "val.zarr", (args.val_z[0] - margin, args.val_z[1]), yx)
    for seed in range(args.seeds):
        run_seed(args, seed, train, val, margin, read_rows(args.out / "results.csv"))
    print(summary(read_rows(args.out / "results.csv"), args.rules, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
