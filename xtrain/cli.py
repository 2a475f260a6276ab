"""The ``xtrain`` command line: one small function per subcommand.

Each function parses nothing itself: ``argparse`` has done it. It calls the library and
returns an exit code.  ``main`` maps every ``XtrainError`` to one line on stderr and exit
code 2, so bad input never produces a traceback.

Signals and the Ray session of volume-wide Dask graphs live here (and in jobs/, which call
``main``), nowhere else.  Inside a Ray cluster (RAY_ADDRESS set) the commands that run
volume-wide Dask graphs (``VOLUME_GRAPHS``) join it at start and run them on Ray, unless
XTRAIN_DASK_ON_RAY=0 (``runtime.volume_scheduler``).  Signals: during the long commands
(train, tune, segment, nightly) SIGTERM and SIGUSR1 (Slurm's time-limit warning, preemption)
set ``args.should_stop``; the command checkpoints and exits 3 ("interrupted, resume me with
--resume").  A full disk (ENOSPC, EDQUOT, EFBIG) is one line naming the path: exit 3 for
those resumable commands, 2 for the others.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import DiskFullError, RunInterrupted, XtrainError

log = logging.getLogger("xtrain")

PRESET_NAMES = ("easy", "medium", "hard")  # xtrain.data.synth.PRESETS (not imported: keeps --help fast)
SUGGEST_SCORES = ("spread", "entropy", "disagreement", "boundary")  # xtrain.infer.suggest.SCORES, default first
RESUMABLE = ("train", "tune", "segment", "nightly")  # stop on SIGTERM/SIGUSR1, exit 3, continue with --resume
# run volume-wide Dask graphs: on Ray inside a Ray cluster (runtime.volume_scheduler, decided once here)
VOLUME_GRAPHS = ("ingest", "evaluate", "baseline", "segment", "suggest", "nightly", "compare")
EXIT_INTERRUPTED = 3


# ----------------------------------------------------------------------------- parsing helpers


def int_tuple(n: int):
    """argparse type for 'A,B,C' -> (A, B, C) with exactly n positive ints."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {n} comma-separated integers, e.g. {','.join(['64'] * n)}") from None
        if len(values) != n or min(values) < 1:
            raise argparse.ArgumentTypeError(f"'{text}' must be {n} positive integers, e.g. {','.join(['64'] * n)}")
        return values

    return parse


def label_map(text: str) -> dict[int, int]:
    """'0:0,128:1,255:2' -> {0: 0, 128: 1, 255: 2}."""
    try:
        pairs = [item.split(":") for item in text.split(",")]
        return {int(k): int(v) for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a label map; write RAW:CLASS pairs, e.g. 0:0,128:1,255:2") from None


def z_range(text: str) -> tuple[int, int]:
    """'Z0,Z1' -> (Z0, Z1): slices Z0 .. Z1-1 (half-open, like Python slices)."""
    try:
        z0, z1 = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a z range; write Z0,Z1 (slices Z0..Z1-1), e.g. 205,250") from None
    if not 0 <= z0 < z1:
        raise argparse.ArgumentTypeError(f"z range '{text}' needs 0 <= Z0 < Z1")
    return z0, z1


def voxel_size_arg(text: str) -> tuple[float, float, float]:
    """'N' (isotropic) or 'Z,Y,X' -> (z, y, x) nm."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a voxel size; write NM or Z,Y,X in nm, e.g. 20,10,10") from None
    if len(values) not in (1, 3) or not all(v > 0 and v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"voxel size '{text}' needs one or three positive numbers (nm), e.g. 20,10,10")
    return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])


def name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one class name, e.g. pore,ysz,ni")
    return names


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _add(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=f"{help}\n\nexample:\n  {example}", formatter_class=_Formatter)


def _volume_options(p: argparse.ArgumentParser) -> None:
    """--dataset/--channel/--time/--mask/--voxel-size: which volume of the input (xtrain.data.volumes.open_volume)
    and where it is."""
    p.add_argument("--voxel-size", type=voxel_size_arg, default=None, metavar="NM|Z,Y,X",
                   help="voxel size in nm: one number (isotropic) or Z,Y,X, for an input that does not say or says "
                   "wrong (default: what the input says; docs/formats.md, 'Spatial metadata')")
    p.add_argument("--dataset", default=None, metavar="PATH", help="HDF5 dataset or Zarr array inside the input "
                   "(also FILE.h5:/PATH; default: NeXus signal, /exchange/data or the only 3-D dataset)")
    p.add_argument("--channel", type=int, default=None, help="channel of a multi-channel input (ImageJ hyperstack, "
                   "4-D/5-D array); required when it has more than one")
    p.add_argument("--time", type=int, default=None, help="time point of a time series input; required when it has "
                   "more than one")
    p.add_argument("--mask", default=None, help="volume of the same shape, non-zero = sample: statistics only "
                   "inside it (default: a constant fill value such as zeros outside the reconstruction circle is "
                   "detected and left out)")
    p.add_argument("--allow-missing", action="store_true", help="accept input with parts that may never have been "
                   "written: a foreign Zarr's absent chunks (read as its fill value), an HDF5 virtual dataset's absent "
                   "sources, gaps in a numbered slice folder (the slices present, in order); each is a warning. "
                   "Without it they are refused; a damaged xtrain store is refused always")


def _track_option(p: argparse.ArgumentParser, what: str) -> None:
    """--track KIND:WHERE (xtrain.train.tracking.parse_track reads it in the command: a bad one is one line)."""
    p.add_argument("--track", action="append", metavar="KIND:WHERE",
                   help=f"log {what} to mlflow:URI (a tracking server, or a local store such as mlflow:./mlruns) "
                   "or tensorboard:DIR (repeatable, one of each)")


# ----------------------------------------------------------------------------- subcommands


def config_from_args(args: argparse.Namespace, extra: list[str]):
    """--config + --set + --data (+ --gpu) + command-specific overrides -> a validated Config."""
    from .config import load_config

    overrides = [*(args.set or []), f"data.store={Path(args.data).resolve()}", *extra]
    if getattr(args, "init", None):  # train and tune: fine-tune from a model (xtrain/train/finetune.py)
        overrides.append(f"train.init={args.init}")
    if args.gpu:
        overrides.append("train.use_gpu=true")
    cfg = load_config(args.config, overrides)
    if cfg.train.init:  # absolute, however given: Ray workers do not run in this directory
        cfg.train.init = str(Path(cfg.train.init).expanduser().resolve())
    return cfg


def cmd_ingest(args: argparse.Namespace) -> int:
    from .data.ingest import ingest
    from .io import writing

    with writing(args.out, "the ingested store"):  # a full disk: one line, nothing left behind
        ingest(args.images, args.out, labels=args.labels, label_map=args.label_map, chunks=args.chunks,
               voxel_size_nm=args.voxel_size, classes=args.classes, overwrite=args.overwrite,
               dataset=args.dataset, channel=args.channel, time=args.time, mask=args.mask,
               unlabelled=args.unlabelled, allow_missing=args.allow_missing)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import synthesize

    out = synthesize(args.out, shape=args.shape, preset=args.preset, seed=args.seed, chunks=args.chunks,
                     overwrite=args.overwrite)
    log.info("wrote %s", out)  # synthesize logs only its start
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.ray_trainer import train
    from .train.tracking import parse_track

    track = parse_track(args.track)  # a bad --track is refused before anything starts
    cfg = config_from_args(args, [f"train.workers={args.workers}"] if args.workers is not None else [])
    metrics = train(cfg, args.out, resume=args.resume, should_stop=args.should_stop, track=track)
    if metrics.get("already_complete"):
        log.info("already complete: run '%s' finished all %s epochs with these settings; model: %s", args.out,
                 metrics.get("epoch"), Path(args.out) / "model.pt")
        return 0
    if metrics.get("stopped"):
        log.warning("stopped at epoch %s; continue with: xtrain train ... --out %s --resume", metrics.get("epoch"),
                    args.out)
        return EXIT_INTERRUPTED  # distinct from success so Slurm scripts can requeue
    log.info("finished: best validation mean Dice %.4f; model: %s", metrics.get("best_mean_dice", float("nan")),
             Path(args.out) / "model.pt")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate.core import evaluate, open_image_volume, open_label_volume, to_json
    from .evaluate.report import format_tables, write_report
    from .provenance import now

    started = now()
    pred = open_label_volume(args.pred, label_map=args.pred_label_map)
    truth = open_label_volume(args.labels, label_map=args.label_map, unlabelled=args.unlabelled)
    image = open_image_volume(args.image) if args.image else None
    if image is not None and tuple(image.shape) != tuple(truth.shape):
        from .errors import ShapeMismatchError

        raise ShapeMismatchError(f"--image '{args.image}' has shape {tuple(image.shape)} but labels have "
                                 f"{tuple(truth.shape)}; give the image of the same volume")
    if args.report and (Path(args.report) / "report.md").exists() and not args.overwrite:
        from .errors import OutputExistsError

        raise OutputExistsError(f"report '{Path(args.report) / 'report.md'}' already exists; pass --overwrite")
    result = evaluate(pred, truth, voxel_size_nm=args.voxel_size, z_range=args.z, slab=args.slab,
                      percolation=not args.no_percolation)
    if args.report:
        if args.z:
            pred, truth = pred.crop(*args.z), truth.crop(*args.z)
            image = image.crop(*args.z) if image is not None else None
        write_report(result, args.report, pred, truth, image, slab=args.slab, overwrite=args.overwrite,
                     started=started)
    print(to_json(result) if args.json else format_tables(result))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from .data.store import check_output
    from .evaluate.baselines import fit_baseline
    from .infer.baselines import segment_baseline

    check_output(args.out, args.overwrite)  # fail before the (slow) fit
    baseline = fit_baseline(args.name, args.fit, z_range=args.fit_z, seed=args.seed)
    segment_baseline(baseline, args.volume, args.out, slab=args.slab, overwrite=args.overwrite, clean=args.clean,
                     voxel_size_nm=args.voxel_size)
    log.info("%s thresholds %s; wrote %s", baseline.name, ", ".join(f"{t:.6g}" for t in baseline.thresholds),
             args.out)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .train.tracking import parse_track
    from .tune.sweep import sweep

    track = parse_track(args.track)
    cfg = config_from_args(args, [f"tune.num_samples={args.trials}"] if args.trials is not None else [])
    summary = sweep(cfg, args.out, resume=args.resume, should_stop=args.should_stop, track=track)
    best = summary.get("best")
    if summary.get("already_complete"):
        log.info("already complete: sweep '%s' finished all %d trials with these settings; best: %s", args.out,
                 summary["trials"], Path(args.out) / "best.yaml")
        return 0
    if summary.get("stopped"):
        log.warning("sweep stopped; continue with: xtrain tune ... --out %s --resume", args.out)
        return EXIT_INTERRUPTED  # like train: Slurm scripts requeue
    if best is None:
        log.error("no trial produced a model; see %s", Path(args.out) / "results.csv")
        return 1
    log.info("best trial %s: val mean Dice %.4f; config %s, model %s", best["trial_id"],
             best.get("best_val_mean_dice") or float("nan"), Path(args.out) / "best.yaml",
             Path(args.out) / "best" / "model.pt")
    return 0


def segment_options(args: argparse.Namespace, names: tuple[str, ...] | None = None):
    """The ``SegmentOptions`` of a command from its arguments ``names`` (default: every option its parser
    has; the rest keep their defaults).  A bad value raises ``InvalidInputError`` (one line, exit 2)."""
    from .infer.options import SegmentOptions

    names = names or tuple(name for name in SegmentOptions.names() if hasattr(args, name))
    return SegmentOptions(**{name: getattr(args, name) for name in names})


def keep_freed_memory() -> None:
    """Process state of the commands that predict in this process (xtrain/malloc.py): set here, at the edge."""
    from .malloc import keep_freed_memory as keep

    keep()


def cmd_segment(args: argparse.Namespace) -> int:
    from .infer import segment

    options = segment_options(args)  # bad options: one line, exit 2, before anything is read
    keep_freed_memory()
    segment(args.model, args.volume, args.out, options, should_stop=args.should_stop)
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from .infer.suggest import suggest

    picks = suggest(args.model, args.volume, n=args.n, axes=args.axes, score=args.score, spacing=args.spacing,
                    exclude_labelled=args.exclude_labelled, z_range=args.z, out=args.out, overwrite=args.overwrite,
                    block=args.block, tile=args.tile, normalisation=args.normalisation, dataset=args.dataset,
                    channel=args.channel, time=args.time, mask=args.mask)
    print("rank,axis,index,score")
    for p in picks:
        print(f"{p.rank},{p.axis},{p.index},{p.score:.6g}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .pipelines.export import export

    export(args.model, args.out, args.format, sample=args.sample, overwrite=args.overwrite, name=args.name,
           authors=args.author, license=args.license)
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    from .pipelines.nightly import run_nightly

    options = segment_options(args, ("workers", "gpu", "block"))  # block None: segment's default
    keep_freed_memory()
    counts = run_nightly(args.watch, args.model, args.out, once=args.once, interval=args.interval,
                         settle=args.settle, max_attempts=args.max_attempts, redo=args.redo, segment_options=options,
                         should_stop=args.should_stop)
    log.info("nightly: %d done, %d failed, %d waiting for writes to finish, %d already handled",
             counts["done"], counts["failed"], counts["waiting"], counts["skipped"])
    return 1 if counts["failed"] else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .pipelines.compare import compare, summary_table

    options = segment_options(args, ("workers",))
    keep_freed_memory()
    result = compare(args.entries, args.labels, args.report, image=args.image, z_range=args.z,
                     label_map=args.label_map, baselines=args.baselines or (), fit=args.fit, fit_z=args.fit_z,
                     studies=args.study or (), segment_options=options, overwrite=args.overwrite)
    print(summary_table(result["summary"]))
    log.info("report: %s", result["report"])
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from .data.store import upgrade

    for store in args.stores:
        if upgrade(store):
            log.info("upgraded %s to the OME-Zarr 0.5 layout", store)
        else:
            log.info("%s already has the OME-Zarr 0.5 layout", store)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .pipelines.compare import summary_table
    from .pipelines.demo import run_demo

    keep_freed_memory()
    result = run_demo(args.out, workers=args.workers, epochs=args.epochs, overwrite=args.overwrite)
    print(summary_table(result["summary"]))
    log.info("demo finished in %.0f s; report: %s", result["seconds"], result["report"])
    return 0


# ----------------------------------------------------------------------------- parser


CLEAN_HELP = ("clean-up: replace each voxel's class by the majority of its 3x3x3 neighbourhood (mean "
              "probabilities; removes isolated wrong voxels that inflate TPB; see xtrain/infer/postprocess.py)")
INIT_HELP = ("fine-tune: start from this model's weights (same architecture and classes; the normalisation, lr "
             "and warm-up are the new run's: configs/soc_unet_finetune_cpu.yaml); sets train.init")


# Long by design: a flat list of argparse declarations, one block per subcommand, read top to bottom like the
# CLI reference that docs/hooks/cli_reference.py generates from it; no logic lives here.
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xtrain",
        description=(
            "Segment PXCT volumes of solid oxide cell electrodes (pore / YSZ / Ni): ingest TIFF\n"
            "stacks into Zarr, synthesise volumes with exact labels, train U-Net / Pix2Pix models\n"
            "with Ray Train, tune them with Ray Tune, segment new scans blockwise, evaluate.\n\n"
            "example:\n  xtrain synth vol.zarr --shape 64,128,128 --preset medium\n"
            "  xtrain ingest scans/images/ scan.zarr --labels scans/labels/ --label-map 0:0,128:1,255:2"
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"xtrain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # a public handle on every subcommand's parser, by name (parser.get_default("subcommands")):
    # the CLI reference the docs build generates (docs/hooks/cli_reference.py) lists them
    parser.set_defaults(subcommands=sub.choices)

    p = _add(sub, "ingest", "Convert a raw TIFF stack (and optional labels) into a chunked, compressed Zarr v3 store.",
             "xtrain ingest ../shared/data/soc_pxct/images soc.zarr --labels ../shared/data/soc_pxct/labels "
             "--label-map 0:0,128:1,255:2 --voxel-size 10")
    p.add_argument("images", help="multi-page TIFF (OME, ImageJ, BigTIFF), folder of single-slice TIFFs (ordered "
                   "by the number in the name), a quoted glob such as 'scan/*.tif', HDF5/NeXus (FILE.h5[:/PATH]), "
                   "Zarr v2/v3 or OME-Zarr 0.4/0.5")
    p.add_argument("out", type=Path, help="output store, e.g. scan.zarr")
    p.add_argument("--labels", help="label volume in the same forms as IMAGES (same shape), or a folder of fewer "
                   "label slices matched to the image slices by the last number in their names "
                   "(slice__021.tif labels SOCprist0021.tiff; slices without one are unlabelled)")
    p.add_argument("--label-map", type=label_map, default=None, metavar="RAW:CLASS,...",
                   help="map raw label values to class ids, e.g. 0:0,128:1,255:2 (default: values are class ids)")
    p.add_argument("--unlabelled", type=int, default=None, metavar="V",
                   help="raw label value that means 'not labelled' (napari's Labels layer writes 0 for unpainted "
                   "voxels: --label-map 1:0,2:1,3:2 --unlabelled 0)")
    p.add_argument("--chunks", type=int_tuple(3), default=None, metavar="Z,Y,X",
                   help="chunk shape (default 1,256,256 inside 32,512,512 shards: fast 2D patch reads with few files; bench/chunks.py)")
    p.add_argument("--classes", type=name_list, default=None, metavar="A,B,C",
                   help="class names in class-id order (default pore,ysz,ni)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _volume_options(p)
    p.set_defaults(func=cmd_ingest)

    p = _add(sub, "synth", "Generate a synthetic PXCT volume of a Ni-YSZ electrode with exact ground-truth labels.",
             "xtrain synth vol.zarr --shape 128,256,256 --preset hard --seed 1")
    p.add_argument("out", type=Path, help="output store, e.g. synth.zarr")
    p.add_argument("--shape", type=int_tuple(3), default=(128, 256, 256), metavar="Z,Y,X", help="volume shape (default 128,256,256)")
    p.add_argument("--preset", choices=PRESET_NAMES, default="medium",
                   help="scanner quality: easy (multi-Otsu Dice ~0.96), medium (~0.92), hard (~0.82)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0; same seed: bit-identical store)")
    p.add_argument("--chunks", type=int_tuple(3), default=None, metavar="Z,Y,X", help="chunk shape (as ingest)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_synth)

    p = _add(sub, "train", "Train a segmentation model with Ray Train (DistributedDataParallel on N workers).",
             "xtrain train --config configs/unet.yaml --data soc.zarr --out runs/unet --workers 2 "
             "--set optim.lr=3e-4")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/unet.yaml (see configs/)")
    p.add_argument("--data", required=True, help="training store (with labels) from 'xtrain ingest' or 'xtrain synth'")
    p.add_argument("--out", required=True, type=Path, help="run directory: model.pt, last.pt, metrics.csv, config.yaml")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: train.workers of the config)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. --set "
                   "optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _track_option(p, "parameters, every epoch's metrics and model.pt")
    p.add_argument("--init", metavar="MODEL.pt", default=None, help=INIT_HELP)
    p.set_defaults(func=cmd_train)

    p = _add(sub, "evaluate", "Score a segmentation against labels: Dice/IoU/precision/recall, per-slice Dice, "
             "phase fractions, TPB density, interfacial areas, percolation (PRED and LABELS side by side).",
             "xtrain evaluate seg.zarr soc.zarr --z 205,250 --report report/")
    p.add_argument("pred", help="prediction: a store with a 'labels' array, or a TIFF stack/folder/glob")
    p.add_argument("labels", help="true labels: a store with 'labels', or a TIFF stack/folder/glob")
    p.add_argument("--label-map", type=label_map, default=None, metavar="RAW:CLASS,...",
                   help="raw LABELS values -> class ids, e.g. 0:0,128:1,255:2 (default: values are class ids)")
    p.add_argument("--pred-label-map", type=label_map, default=None, metavar="RAW:CLASS,...",
                   help="the same for PRED")
    p.add_argument("--unlabelled", type=int, default=None, metavar="V",
                   help="raw LABELS value that means 'not labelled' (a store's unlabelled voxels are known): scores "
                   "count labelled voxels only")
    p.add_argument("--voxel-size", type=voxel_size_arg, default=None, metavar="NM|Z,Y,X",
                   help="voxel size in nm, one number or Z,Y,X, for um-based densities (default: from the inputs; "
                   "none: per voxel)")
    p.add_argument("--z", type=z_range, default=None, metavar="Z0,Z1", help="evaluate slices Z0..Z1-1 only")
    p.add_argument("--image", default=None, metavar="STORE",
                   help="grey values for the report's figures (default: the image of the LABELS or PRED store)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write DIR/report.md, DIR/metrics.json and PNG figures")
    p.add_argument("--json", action="store_true", help="print one JSON document with every number instead of tables")
    p.add_argument("--slab", type=int, default=32, help="z-slab depth read at a time (memory; default 32)")
    p.add_argument("--no-percolation", action="store_true", help="skip percolation and active TPB (2nd pass)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in DIR")
    p.set_defaults(func=cmd_evaluate)

    p = _add(sub, "baseline", "Segment a volume with a classical baseline (multi-Otsu, k-means, median + Otsu) "
             "fitted on a training region.",
             "xtrain baseline otsu --fit soc.zarr --fit-z 0,200 soc.zarr soc-otsu.zarr")
    p.add_argument("name", choices=("otsu", "kmeans", "median-otsu"), help="which baseline")
    p.add_argument("--fit", required=True, metavar="STORE", help="store (or TIFF stack) whose image is fitted on")
    p.add_argument("--fit-z", type=z_range, default=None, metavar="Z0,Z1",
                   help="training region: slices Z0..Z1-1 of --fit (default: all)")
    p.add_argument("volume", help="volume to segment: a store or a TIFF stack/folder/glob")
    p.add_argument("out", type=Path, help="output: OUT.zarr (OME-Zarr store: image + prediction label image), "
                   "OUT.tif (ImageJ hyperstack) or OUT.h5/.nxs (NeXus HDF5)")
    p.add_argument("--seed", type=int, default=0, help="k-means subsample seed (default 0)")
    p.add_argument("--slab", type=int, default=None, help="z-slab depth (default: the store's shard depth)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--clean", action="store_true", help=CLEAN_HELP)
    p.add_argument("--voxel-size", type=voxel_size_arg, default=None, metavar="NM|Z,Y,X",
                   help="voxel size in nm of VOLUME, one number or Z,Y,X (default: what it says)")
    p.set_defaults(func=cmd_baseline)

    p = _add(sub, "tune", "Tune hyperparameters (or run a grid study) with Ray Tune over Ray Train trials.",
             "xtrain tune --config configs/tune.yaml --data soc.zarr --out runs/tune --trials 16")
    p.add_argument("--config", required=True, help="YAML recipe with a tune: section, e.g. configs/tune.yaml, "
                   "configs/study_fraction.yaml, configs/study_noise.yaml")
    p.add_argument("--data", required=True, help="training store (with labels)")
    p.add_argument("--out", required=True, type=Path, help="tune directory: results.csv, best.yaml, best/model.pt, "
                   "trials/<id>/")
    p.add_argument("--trials", type=int, default=None, help="trials to sample (default tune.num_samples; with grid "
                   "axes: repeats of the grid)")
    p.add_argument("--gpu", action="store_true", help="one GPU per training worker")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. --set "
                   "train.epochs=10 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out (finished trials "
                   "are kept)")
    _track_option(p, "one MLflow run per trial (parameters, every epoch's metrics, model.pt); TensorBoard: "
                  "DIR/<trial id>")
    p.add_argument("--init", metavar="MODEL.pt", default=None, help=INIT_HELP + "; every trial starts from it")
    p.set_defaults(func=cmd_tune)

    p = _add(sub, "segment", "Segment a whole volume blockwise with a trained model (no seams, resumable, Ray workers).",
             "xtrain segment runs/unet/model.pt scan.zarr scan_labels.zarr --workers 2 --probabilities")
    p.add_argument("model", help="model.pt from 'xtrain train'")
    p.add_argument("volume", help="store from 'xtrain ingest', a multi-page TIFF, a folder of TIFF slices, a quoted "
                   "glob, HDF5/NeXus (FILE.h5[:/PATH]), Zarr v2/v3 or OME-Zarr")
    p.add_argument("out", type=Path, help="output: OUT.zarr (OME-Zarr: image + prediction label image, optional "
                   "probabilities/entropy), OUT.tif (ImageJ hyperstack) or OUT.h5/.nxs (NeXus HDF5)")
    p.add_argument("--block", type=int_tuple(3), default=None, metavar="Z,Y,X",
                   help="block (unit of work and memory) shape, rounded up to whole output shards "
                        "(default 32,1024,1024 for --axes z; for zyx the whole volume up to 64 M voxels, else "
                        "64,512,512: about 1.1, 2.2 and 1.7 GB per worker)")
    p.add_argument("--tile", type=int, default=512, help="largest 2D tile edge the model sees; tiles are planned "
                   "to the plane, so a plane up to TILE a side is one tile (default 512)")
    p.add_argument("--halo", type=int, default=16, help="adjacent tiles overlap by 2*HALO voxels, blended by a "
                   "Gaussian window (default 16)")
    p.add_argument("--axes", choices=("z", "zyx"), default=None, help="slice normal to z only, or to z, y and x "
                   "with the probabilities averaged (3x the time); default: the setting the model was validated "
                   "with (zyx for a model trained on all axes, data.axis: any), else z")
    p.add_argument("--tta", action="store_true", help="also predict the 3 in-plane flips of every tile and average (4x)")
    p.add_argument("--probabilities", action="store_true", help="also write float16 'probabilities' (C, Z, Y, X) and "
                   "per-voxel 'entropy' (.zarr output only)")
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: 1 in-process on CPU; one per GPU "
                   "with --gpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: all cores / workers)")
    p.add_argument("--gpu", action="store_true", help="one Ray worker per GPU; with --workers 1 one GPU in this process (no Ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into OUT: redo only missing blocks")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (or an interrupted run) if it exists")
    _volume_options(p)
    p.add_argument("--normalisation", choices=("auto", "train", "own", "peaks"), default="auto",
                   help="intensity mapping: the training statistics (train), the volume's own percentiles (own), "
                        "its three phase peaks mapped onto the training ones (peaks; refused when they are not "
                        "found), or auto: train when its phase peaks lie on the training ones, peaks when they "
                        "are the training ones on another grey scale, else train/own by grey-range overlap with a "
                        "warning; recorded in the output")
    p.add_argument("--clean", action=argparse.BooleanOptionalAction, default=None,
                   help=CLEAN_HELP + "; default: the setting the model was validated with (clean for a model "
                   "trained on all axes), else no clean-up")
    p.add_argument("--engine", default="eager", metavar="ENGINE", help="inference engine: eager (PyTorch fp32, "
                   "default), compile, bf16, onnxruntime, openvino, openvino-bf16, or auto: the fastest that keeps "
                   ">= 99.99 %% of eager's labels and is installed (xtrain/infer/engines.py); recorded, --resume keeps it")
    p.set_defaults(func=cmd_segment)

    p = _add(sub, "suggest", "Rank the planes of a volume by the model's uncertainty: which planes to label next "
             "(skips labelled planes, spreads the picks; CSV + the planes as ImageJ TIFF for labelling).",
             "xtrain suggest runs/soc/model.pt scan.zarr --n 5 --exclude-labelled scan-labels.zarr --out next/")
    p.add_argument("model", help="model.pt from 'xtrain train'")
    p.add_argument("volume", help="the volume to label: any input 'xtrain segment' reads")
    p.add_argument("--n", type=int, required=True, metavar="K", help="how many planes to suggest")
    p.add_argument("--axes", choices=("z", "zyx"), default="z", help="rank z-planes from the z pass, or planes "
                   "normal to z, y and x from the averaged z/y/x passes (3x the time; default z)")
    p.add_argument("--score", choices=SUGGEST_SCORES, default=SUGGEST_SCORES[0],
                   help="spread (default): the planes farthest from the labelled ones and each other, no prediction "
                        "(on the real volume no uncertainty score did better: docs/measurements.md); the plane's mean "
                        "entropy; disagreement between the z/y/x passes (needs --axes zyx); or the share of uncertain "
                        "boundary voxels (see xtrain/infer/suggest.py)")
    p.add_argument("--spacing", type=int, default=5, help="least distance in planes between two picks and from a "
                   "labelled plane (default 5)")
    p.add_argument("--exclude-labelled", default=None, metavar="STORE", help="a store with (sparse) labels of this "
                   "volume: its labelled planes are skipped (its label census says which)")
    p.add_argument("--z", type=z_range, default=None, metavar="Z0,Z1", help="pick only inside slices Z0..Z1-1 (e.g. "
                   "the training slab)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write DIR/suggestions.csv (rank, axis, "
                   "index, score) and DIR/planes_z.tif (planes_y/x.tif): the picked planes, a page each")
    p.add_argument("--overwrite", action="store_true", help="replace the suggestions in DIR")
    p.add_argument("--block", type=int_tuple(3), default=None, metavar="Z,Y,X", help="prediction block (memory; "
                   "default as xtrain segment)")
    p.add_argument("--tile", type=int, default=512, help="largest 2D tile edge (as xtrain segment; default 512)")
    p.add_argument("--normalisation", choices=("auto", "train", "own", "peaks"), default="auto",
                   help="intensity mapping, as xtrain segment (default auto)")
    _volume_options(p)
    p.set_defaults(func=cmd_suggest)

    p = _add(sub, "export", "Export a trained model for use without xtrain: a bioimage.io package (ilastik, "
             "deepImageJ, bioimageio.core), ONNX or TorchScript.",
             "xtrain export runs/unet/model.pt soc-unet.zip --format bioimageio --sample soc.zarr")
    p.add_argument("model", help="model.pt from 'xtrain train' (a Pix2Pix exports its generator)")
    p.add_argument("out", type=Path, help="OUT.zip or a folder (bioimageio), OUT.onnx, OUT.pt (torchscript)")
    p.add_argument("--format", required=True, metavar="FORMAT", help="bioimageio (normalisation as preprocessing; "
                   "TorchScript, ONNX and state-dict weights), onnx or torchscript (normalisation and softmax inside "
                   "the graph: raw intensities in, class probabilities out)")
    p.add_argument("--sample", default=None, metavar="VOLUME", help="volume the bioimage.io test input is cut from "
                   "(default: the training store named in model.pt)")
    p.add_argument("--name", default=None, help="bioimage.io model name (default: from the model and its classes)")
    p.add_argument("--author", action="append", default=None, metavar="NAME", help="bioimage.io author (repeatable; "
                   "default: xtrain)")
    p.add_argument("--license", default="BSD-3-Clause", metavar="SPDX", help="licence of the bioimage.io package "
                   "(SPDX id, default BSD-3-Clause)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_export)

    p = _add(sub, "nightly", "Segment newly acquired scans: ingest, segment, QC, and a registry of what was done.",
             "xtrain nightly --watch /beamline/incoming --model runs/unet/model.pt --out /data/segmented --once")
    p.add_argument("--watch", required=True, type=Path, help="INCOMING folder: each TIFF, slice folder or .zarr in it "
                   "is one scan")
    p.add_argument("--model", required=True, type=Path, help="model.pt from 'xtrain train'")
    p.add_argument("--out", required=True, type=Path, help="RESULTS folder: <scan>/labels.zarr, <scan>/qc.json, "
                   "registry.sqlite")
    p.add_argument("--once", action="store_true", help="process what is there and exit (what Slurm's nightly job "
                   "runs); default: keep watching")
    p.add_argument("--interval", type=float, default=300.0, help="seconds between looks at INCOMING (default 300)")
    p.add_argument("--settle", type=float, default=120.0, help="a scan changed within this many seconds is still "
                   "being written and waits (default 120)")
    p.add_argument("--max-attempts", type=int, default=3, help="tries per failing scan before it is left failed "
                   "(default 3)")
    p.add_argument("--redo", action="append", metavar="SCAN", help="segment this finished scan again (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="segmentation workers (as xtrain segment)")
    p.add_argument("--block", type=int_tuple(3), default=None, metavar="Z,Y,X", help="segmentation block shape")
    p.add_argument("--gpu", action="store_true", help="segment on GPUs")
    p.set_defaults(func=cmd_nightly)

    p = _add(sub, "compare", "Compare models, predictions and classic baselines on the same labelled region.",
             "xtrain compare runs/unet runs/pix2pix --labels soc.zarr --z 205,250 --baselines otsu,kmeans "
             "--fit soc.zarr --fit-z 0,200 --report reports/soc")
    p.add_argument("entries", nargs="*", help="run folders (with model.pt), model.pt files or predictions "
                   "(.zarr / TIFF)")
    p.add_argument("--labels", required=True, help="true labels (a store or TIFF stack); its image is segmented "
                   "unless --image is given")
    p.add_argument("--report", required=True, type=Path, help="folder for compare.md/.json/.csv/.png and the "
                   "predictions")
    p.add_argument("--image", default=None, help="volume to segment (default: the --labels store's image)")
    p.add_argument("--z", type=z_range, default=None, metavar="Z0,Z1", help="evaluate slices Z0..Z1-1 only")
    p.add_argument("--label-map", type=label_map, default=None, metavar="RAW:CLASS,...",
                   help="map raw label values, e.g. 0:0,128:1,255:2")
    p.add_argument("--baselines", type=name_list, default=None, metavar="A,B",
                   help="classic baselines to add: otsu, kmeans, median-otsu")
    p.add_argument("--fit", default=None, help="labelled store the baselines are fitted on")
    p.add_argument("--fit-z", type=z_range, default=None, metavar="Z0,Z1", help="slab of --fit to fit on")
    p.add_argument("--study", action="append", metavar="TUNE_DIR", help="a sweep study to plot (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="segmentation workers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing comparison in --report")
    p.set_defaults(func=cmd_compare)

    p = _add(sub, "upgrade", "Rewrite stores of the previous layout (root arrays image/labels) as OME-Zarr 0.5 "
             "images with pyramids and label images (they also open as they are).",
             "xtrain upgrade old.zarr")
    p.add_argument("stores", nargs="+", type=Path, help="stores to rewrite in place (atomically)")
    p.set_defaults(func=cmd_upgrade)

    p = _add(sub, "demo", "Run the whole pipeline on built-in synthetic data (no data, no GPU, a few minutes).",
             "xtrain demo --out xtrain-demo")
    p.add_argument("--out", type=Path, default=Path("xtrain-demo"), help="folder for everything the demo makes "
                   "(default xtrain-demo)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.set_defaults(func=cmd_demo)

    return parser


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from .io import disk_full_cause, disk_full_error
    from .runtime import StopRequest, stop_on_signals, volume_scheduler

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    resumable = args.command in RESUMABLE
    args.should_stop = StopRequest()
    try:
        with contextlib.ExitStack() as edges:
            if resumable:
                edges.enter_context(stop_on_signals(args.should_stop))
            if args.command in VOLUME_GRAPHS:
                edges.enter_context(volume_scheduler())  # joins RAY_ADDRESS's cluster only when Dask runs on Ray
            return int(args.func(args) or 0)
    except RunInterrupted as exc:
        print(f"xtrain {args.command}: interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except XtrainError as exc:
        print(f"xtrain {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(exc, DiskFullError) and resumable else 2
    except KeyboardInterrupt:
        print(f"xtrain {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if disk_full_cause(exc) is None:
            raise
        # a full disk where no writer named it: name the output the command was writing
        cause = disk_full_cause(exc)
        where = getattr(cause, "filename", None) or getattr(args, "out", None) or "the output"
        print(f"xtrain {args.command}: error: {disk_full_error(exc, where, 'the output')}", file=sys.stderr)
        return EXIT_INTERRUPTED if resumable else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
