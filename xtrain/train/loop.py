"""The training loop, without Ray: build a run, then train_one_epoch and evaluate, epoch by epoch.

    run = build_run(cfg, ctx, resume)          # nets, optimisers, schedulers, EMA, loss, loaders, validation
    for epoch in range(run.start_epoch, cfg.train.epochs):
        result = train_one_epoch(run, ctx, epoch, start_step)
        matrix, extra = validate(run, ctx)
        ...                                    # metrics row, model.pt, last.pt (rank 0)

The shape of torchvision's references/classification/train.py: ``main`` builds everything,
then loops over ``train_one_epoch`` and ``evaluate``; no closure holds state.  ``fit`` is what
every Ray Train worker runs (see ray_trainer.py), and what the tests run in-process with
world_size=1.  Distributed behaviour comes only from torch.distributed (distributed.py): when a
process group is initialised the model is wrapped in DistributedDataParallel and the
validation confusion matrix is summed across ranks.  What RUN_DIR holds: run_dir.py.

Determinism: the data of every step is a pure function of (seed, epoch, global sample
index) (see data/sampler.py), and the torch RNG (dropout) is reseeded from
(seed, epoch, rank, step) before every step.  A run stopped at any step boundary and
resumed from its checkpoint therefore takes exactly the same steps as one that never
stopped, and no RNG state needs saving.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from ..config import GAN_MODELS, Config, config_to_dict
from ..data.labels import LabelCensus
from ..data.sampler import GridPatches, RandomPatches, Split, patch_loader, sparse_split, split_regions
from ..data.label_index import HoldOut, check_dense_slab, hold_out, store_census
from ..data.store import open_store
from ..errors import ConfigError, InvalidInputError
from ..evaluate.metrics import ConfusionMatrix, scores
from ..models import create_model, model_kwargs
from ..models.checkpoint import base_checkpoint, inference_checkpoint, save_checkpoint
from .finetune import init_weights, load_parent
from .distributed import allreduce_confusion, any_rank, convert_sync_batchnorm, has_batchnorm, is_distributed, \
    seed_step, unwrap, wrap
from .losses import create_loss, one_hot
from .pairwise import PairwiseTerm, make_pairwise
from .recipe import load_scheduler_states, make_ema, make_schedulers
from .run_dir import BEST, LAST, write_metrics_row
from .self_training import IDLE, SelfTraining, make_self_training, pseudo_loss
from .validate import PlaneValidation, ValidationSlab, selection_score
from ..provenance import Origin, hash_input, provenance

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a worker knows about the run it is part of (filled in by the Ray edge or a test)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # report(metrics, checkpoint_path_or_None): called by every rank once per epoch / on stop
    report: Callable[[dict[str, Any], Path | None], None] | None = None
    # local stop request (SIGTERM sentinel); any rank's request stops all ranks at the same step
    should_stop: Callable[[], bool] = lambda: False
    # on_step(steps_done, losses): called by every rank after every optimiser step, with the run's steps so
    # far (a resume's included) and that step's losses ({"loss": ...}); a progress bar finer than an epoch
    on_step: Callable[[int, dict[str, float]], None] | None = None
    # the run's command line and start, for the checkpoints' provenance (a Ray worker's own argv is Ray's)
    origin: Origin = field(default_factory=Origin)


# ----------------------------------------------------------------------------- building


def is_gan(model: nn.Module) -> bool:
    return hasattr(model, "discriminator") and hasattr(model, "generator")


def build_model(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    kwargs = {"in_channels": in_channels, "num_classes": num_classes, **cfg.model.kwargs}
    return create_model(cfg.model.name, **kwargs)


def resolved_model_kwargs(cfg: Config, in_channels: int, num_classes: int) -> dict[str, Any]:
    """All constructor arguments (defaults filled in), as recorded in checkpoints."""
    kwargs = model_kwargs(cfg.model.name)
    kwargs.update({"in_channels": in_channels, "num_classes": num_classes, **cfg.model.kwargs})
    return kwargs


def build_optimizers(model: nn.Module, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """One Adam per trained network: Pix2Pix gets separate generator/discriminator optimisers
    (``optim.d_lr`` for the discriminator; None: ``optim.lr``, and 0.0 means 0.0)."""
    o = cfg.optim

    def adam(params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)

    if is_gan(model):
        return {"generator": adam(model.generator.parameters(), o.lr),
                "discriminator": adam(model.discriminator.parameters(), o.lr if o.d_lr is None else o.d_lr)}
    return {"model": adam(model.parameters(), o.lr)}


@dataclass
class Nets:
    """The trained network(s), possibly DDP-wrapped, and the unwrapped model for checkpoints."""

    model: nn.Module  # unwrapped; Pix2Pix or a plain segmenter
    segmenter: nn.Module  # DDP-wrapped forward path: generator for Pix2Pix, else the model
    discriminator: nn.Module | None  # DDP-wrapped discriminator for Pix2Pix


def make_nets(model: nn.Module, device: torch.device) -> Nets:
    model.to(device)
    if is_gan(model):
        return Nets(model, wrap(model.generator, device), wrap(model.discriminator, device))
    return Nets(model, wrap(model, device), None)


@dataclass
class Run:
    """Everything one worker trains with (``build_run``), and where the run stands."""

    cfg: Config
    nets: Nets
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, LRScheduler]
    ema: AveragedModel | None
    loss_fn: nn.Module
    train_set: RandomPatches
    train_loader: DataLoader
    val_loader: DataLoader | None  # data.val_mode "patches": the z-plane patch grid
    val_slab: ValidationSlab | None  # data.val_mode "slab": whole planes
    val_planes: PlaneValidation | None  # sparse labels: held-out labelled planes (none of the three: no validation)
    split: Split
    classes: list[str]
    stats: dict[str, Any]  # the normalisation the patches get (the store's statistics)
    voxel_size_nm: list[float] | None  # (z, y, x) nm of the training store (model.pt records it), or None
    model_kwargs: dict[str, Any]
    start_epoch: int = 0
    start_step: int = 0  # steps of start_epoch done before a resume
    global_step: int = 0
    best: float = -math.inf  # best selection score so far (validate.selection_score)
    best_dice: float = -1.0
    origin: Origin = field(default_factory=Origin)  # the run's command line and start (WorkerContext.origin)
    store_input: Any = None  # the training store's provenance entry (hashed once, rank 0)
    parent: dict[str, str] | None = None  # fine-tuning: the train.init model's {"path", "sha256"} (finetune.py)
    self_training: SelfTraining | None = None  # train.pseudo_weight > 0: the EMA teacher's pseudo-labels
    pairwise: PairwiseTerm | None = None  # loss.crf_weight > 0: the image-aware pairwise (CRF) term

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class DataPlan:
    """Where a run trains and validates: the z-slabs, and for sparse labels the census and held-out planes."""

    split: Split
    census: LabelCensus | None  # None: dense labels
    hold: HoldOut | None  # sparse labels without a validation slab (data/label_index.py's rule)


def plan_data(cfg: Config, store: Any) -> DataPlan:
    """Dense labels, or sparse ones with a (dense) ``data.val_z`` slab: the z-slabs of ``split_regions``.
    Other sparse labels: the training region and the hold-out rule of ``xtrain.data.label_index``."""
    census = store_census(store.info.labels)
    if census is None or cfg.data.val_z is not None:
        split = split_regions(store.shape[0], cfg.data)
        if census is not None:
            check_dense_slab(census, split.val)
        return DataPlan(split, census, None)
    split = sparse_split(store.shape[0], cfg.data)
    return DataPlan(split, census, hold_out(census, split.train, cfg.data.val_fraction, cfg.train.ema_decay > 0))


def build_validation(cfg: Config, plan: DataPlan, stats: dict[str, Any], ctx: WorkerContext) -> dict[str, Any]:
    """The Run fields of validation: the patch grid, the slab, held-out planes, or none (said in the log)."""
    out: dict[str, Any] = {"val_loader": None, "val_slab": None, "val_planes": None}
    if plan.hold is not None:
        if ctx.rank == 0:
            log.info("%s", plan.hold.message)
            if plan.hold.scribbles and cfg.loss.crf_weight == 0 and cfg.model.name not in GAN_MODELS:
                # strokes never show where a boundary lies; the pairwise loss does (measured in docs/measurements.md)
                log.info("scribbles: if the strokes keep away from the phase boundaries, the pairwise loss helps: "
                         "--set loss.crf_weight=1.0 (docs/training.md, 'Few labels')")
        if plan.hold.planes:
            out["val_planes"] = PlaneValidation(cfg.data.store, plan.hold.planes, stats, cfg.data.slices)
    elif cfg.data.val_mode == "slab":
        out["val_slab"] = ValidationSlab(cfg.data.store, plan.split.val, stats)
    else:
        val_set = GridPatches(cfg.data.store, cfg.data, plan.split.val, rank=ctx.rank, world_size=ctx.world_size)
        out["val_loader"] = patch_loader(val_set, cfg.train.batch_size, cfg.data.loader_workers)
    return out


def initial_model(cfg: Config, classes: list[str], resume: dict[str, Any] | None) -> tuple[nn.Module, dict | None]:
    """The network a run starts with and its parent record: seeded random weights, or on a fresh start
    with ``train.init`` the parent's (finetune.py; checked again here: ``fit`` may run without preflight).
    On a resume the weights come from last.pt (build_run) and the parent record with them."""
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts)
    model = build_model(cfg, cfg.data.slices, len(classes))
    if resume is not None:
        return model, resume.get("parent")
    parent = load_parent(cfg, resolved_model_kwargs(cfg, cfg.data.slices, len(classes)), classes)
    if parent is None:
        return model, None
    into = init_weights(model, parent, cfg.model.name)
    log.info("fine-tuning from %s (sha256 %.12s): %s weights into the %s; normalisation from the new store, "
             "optimiser and lr schedule from step 0", parent.path, parent.sha256, parent.model_name, into)
    return model, parent.record()


def build_run(cfg: Config, ctx: WorkerContext, resume: dict[str, Any] | None = None) -> Run:
    """Build the run of ``cfg`` on this worker, from ``resume`` (a last.pt dict) when given."""
    store = open_store(cfg.data.store)
    classes = list(store.info.classes)
    plan = plan_data(cfg, store)
    model, parent = initial_model(cfg, classes, resume)
    optimizers = build_optimizers(model, cfg)
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        for name, opt in optimizers.items():
            opt.load_state_dict(resume["optimizer_states"][name])
    if cfg.train.sync_bn and ctx.world_size > 1 and is_distributed() and has_batchnorm(model):
        model = convert_sync_batchnorm(model, ctx.device)  # BN statistics of the global batch
    nets = make_nets(model, ctx.device)
    train_set = RandomPatches(cfg.data.store, cfg.data, plan.split.train, rank=ctx.rank, world_size=ctx.world_size,
                              seed=cfg.train.seed, train=True, hidden=plan.hold.hidden if plan.hold else None)
    total_steps = cfg.train.epochs * math.ceil(len(train_set) / cfg.train.batch_size)
    ema = make_ema(nets.model, cfg.train.ema_decay, cfg.train.ema_warmup)
    run = Run(cfg=cfg, nets=nets, optimizers=optimizers, schedulers=make_schedulers(optimizers, cfg.optim, total_steps),
              ema=ema, self_training=make_self_training(cfg.train, ema, total_steps),
              pairwise=make_pairwise(cfg.loss),
              loss_fn=create_loss(cfg.loss.name, class_weights=cfg.loss.class_weights).to(ctx.device),
              train_set=train_set, train_loader=patch_loader(train_set, cfg.train.batch_size, cfg.data.loader_workers),
              **build_validation(cfg, plan, store.info.stats, ctx), split=plan.split, classes=classes,
              stats=store.info.stats, model_kwargs=resolved_model_kwargs(cfg, cfg.data.slices, len(classes)),
              voxel_size_nm=list(store.info.voxel_size_nm) if store.info.voxel_size_nm else None, parent=parent)
    run.origin = ctx.origin
    run.store_input = hash_input(cfg.data.store) if ctx.rank == 0 else None  # hashed once, for every checkpoint
    if resume is not None:
        restore_progress(run, resume, total_steps)
    return run


def restore_progress(run: Run, resume: dict[str, Any], total_steps: int) -> None:
    """EMA, schedulers and counters of a last.pt (the weights and optimisers are loaded by build_run)."""
    if run.ema is not None:
        if "ema_state" not in resume:
            raise ConfigError("the checkpoint has no EMA weights but train.ema_decay > 0; resume with the "
                              "train.ema_decay the run started with")
        run.ema.load_state_dict(resume["ema_state"])
    load_scheduler_states(run.schedulers, resume.get("scheduler_states"), total_steps)
    run.start_epoch, run.start_step = int(resume["epoch"]), int(resume.get("epoch_step", 0))
    run.global_step, run.best_dice = int(resume["step"]), float(resume.get("best_mean_dice", -1.0))
    run.best = float(resume.get("best_score", run.best_dice))


def eval_network(run: Run) -> nn.Module:
    """The network validation and model.pt use: the EMA weights when on (never DDP-wrapped), the
    generator of a Pix2Pix."""
    net = run.ema.module if run.ema is not None else run.nets.model
    return net.generator if is_gan(net) else net


# ----------------------------------------------------------------------------- one step, one epoch


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_step(nets: Nets, optimizers: dict[str, torch.optim.Optimizer], loss_fn: nn.Module, image: torch.Tensor,
               label: torch.Tensor, adversarial_weight: float, amp: bool,
               pseudo: SelfTraining | None = None, pairwise: PairwiseTerm | None = None) -> dict[str, float]:
    """One optimisation step on a batch: image (B, C, P, P) float32, label (B, P, P) int64.

    ``pseudo`` (segmenters only; config.py refuses it for Pix2Pix): the loss gets
    ``pseudo.weight`` x the cross-entropy against the teacher's confident pseudo-labels at
    unlabelled pixels (self_training.py); "loss" stays the supervised term, "pseudo_loss" and
    "pseudo_accept" are added.  ``pairwise`` (segmenters only too): + ``pairwise.weight`` x the
    relaxed Potts term of the logits against the image (pairwise.py), reported as "crf_loss".

    Pix2Pix: the discriminator sees (image, one-hot truth) against (image, generated
    probabilities); at unlabelled pixels (``IGNORE``) both are all-zero, so no term treats
    an unlabelled pixel as a class."""
    device = image.device
    if nets.discriminator is None:
        opt = optimizers["model"]
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            logits = nets.segmenter(image)  # (B, K, P, P)
            loss = loss_fn(logits.float(), label)
        total, extra = loss, {}
        if pseudo is not None:
            with torch.no_grad(), _autocast(device, amp):
                teacher = pseudo.teacher(image)  # (B, K, P, P); eval mode (train_one_epoch)
            term, extra = pseudo_loss(logits, teacher, label, pseudo.threshold)
            total = loss + pseudo.weight * term
        if pairwise is not None:
            crf = pairwise(logits, image)
            total = total + pairwise.weight * crf
            extra = {**extra, "crf_loss": float(crf.detach())}
        total.backward()
        opt.step()
        return {"loss": float(loss.detach()), **extra}

    from ..models.pix2pix import discriminator_loss, generator_adversarial_loss

    g_opt, d_opt = optimizers["generator"], optimizers["discriminator"]
    with _autocast(device, amp):
        logits = nets.segmenter(image)  # generator, (B, K, P, P)
    real, fake = discriminator_masks(logits, label)
    # Discriminator: real (image, true mask) pairs against (image, generated probabilities).
    d_opt.zero_grad(set_to_none=True)
    with _autocast(device, amp):
        d_loss = discriminator_loss(nets.discriminator, image, real, fake.detach())
    d_loss.float().backward()
    d_opt.step()
    # Generator: segmentation loss + lambda * fool the (unwrapped: no gradient all-reduce) discriminator.
    g_opt.zero_grad(set_to_none=True)
    with _autocast(device, amp):
        adv = generator_adversarial_loss(unwrap(nets.discriminator), image, fake)
    seg = loss_fn(logits.float(), label)
    g_loss = seg + adversarial_weight * adv.float()
    g_loss.backward()
    g_opt.step()
    return {"loss": float(seg.detach()), "g_adv": float(adv.detach()), "d_loss": float(d_loss.detach())}


def discriminator_masks(logits: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the Pix2Pix discriminator compares: the one-hot truth and the generated probabilities, both
    (B, K, P, P) and all-zero at unlabelled (``IGNORE``) pixels, so neither shows them as a class."""
    real, valid = one_hot(label, logits.shape[1])  # (B, K, P, P), (B, 1, P, P)
    return real, torch.softmax(logits.float(), dim=1) * valid


def after_step(run: Run) -> None:
    """What follows every optimiser step: the lr schedulers and the weight EMA."""
    for sched in run.schedulers.values():
        sched.step()
    if run.ema is not None:
        run.ema.update_parameters(run.nets.model)


@dataclass
class EpochResult:
    steps: int  # steps done in this epoch, counting steps done before a resume
    samples_per_s: float
    losses: dict[str, float]
    stopped: bool  # a stop was requested: the epoch is incomplete


def train_one_epoch(run: Run, ctx: WorkerContext, epoch: int, start_step: int = 0) -> EpochResult:
    """Train one epoch from its step ``start_step`` (> 0 on a resume: the loader skips those batches)."""
    cfg = run.cfg
    run.train_set.set_epoch(epoch, start=start_step * cfg.train.batch_size)
    run.nets.model.train()
    st = run.self_training
    if st is not None:
        st.teacher.eval()  # the EMA teacher: BatchNorm running statistics, no dropout
    sums: dict[str, float] = {}
    n_steps, n_samples = 0, 0
    t0 = time.perf_counter()
    step, stopped = start_step, False
    for image, label in run.train_loader:
        if any_rank(ctx.should_stop(), ctx.device):
            stopped = True
            break
        seed_step(cfg.train.seed, epoch, ctx.rank, step)
        image = image.to(ctx.device, non_blocking=True)
        label = label.to(ctx.device, non_blocking=True)
        pseudo = st if st is not None and st.active(run.global_step + step - start_step) else None
        losses = train_step(run.nets, run.optimizers, run.loss_fn, image, label, cfg.loss.adversarial_weight,
                            cfg.train.amp, pseudo, run.pairwise)
        if st is not None:
            losses = {**IDLE, **losses}  # before the start too: the same metrics columns every epoch
        for k, v in losses.items():
            if not math.isfinite(v):
                raise FloatingPointError(f"training loss '{k}' became {v} at epoch {epoch + 1}, step {step}; "
                                         "lower optim.lr or check the input data")
            sums[k] = sums.get(k, 0.0) + v
        after_step(run)
        n_steps += 1
        n_samples += image.shape[0]
        step += 1
        if ctx.on_step is not None:
            ctx.on_step(run.global_step + step - start_step, losses)
    run.global_step += step - start_step
    return EpochResult(step, _rate(n_samples, t0, ctx), _means(sums, n_steps), stopped=stopped)


def _rate(n_samples: int, t0: float, ctx: WorkerContext) -> float:
    return n_samples * ctx.world_size / max(time.perf_counter() - t0, 1e-9)


def _means(sums: dict[str, float], n: int) -> dict[str, float]:
    return {k: v / max(n, 1) for k, v in sums.items()}


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def evaluate(segmenter: nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
             amp: bool = True) -> ConfusionMatrix:
    """This rank's confusion matrix over its shard of the validation grid (sum it across ranks)."""
    segmenter.eval()
    cm = ConfusionMatrix(num_classes)
    for image, label in loader:
        with _autocast(device, amp):
            logits = segmenter(image.to(device))
        cm.update(logits.argmax(dim=1).cpu(), label)
    return cm


def validate(run: Run, ctx: WorkerContext) -> tuple[Any, dict[str, float]]:
    """The validation confusion matrix (K, K) of all ranks (None without validation), and the slab's
    extra scores (TPB ratio, phase-fraction error) in ``val_mode: slab``."""
    if run.val_slab is not None:  # whole planes; ranks share the planes and gather the labels
        slab = run.val_slab.evaluate(eval_network(run), run.cfg.data.slices, run.num_classes, run.classes,
                                     ctx.rank, ctx.world_size, ctx.device)
        return slab.matrix, {"val_tpb_ratio": slab.tpb_ratio, "val_fraction_error_pp": slab.fraction_error_pp}
    if run.val_planes is not None:  # sparse labels: held-out whole planes, labelled voxels only
        return run.val_planes.evaluate(eval_network(run), run.cfg.data.slices, run.num_classes, ctx.rank,
                                       ctx.world_size, ctx.device), {}
    if run.val_loader is None:
        return None, {}
    segmenter = run.nets.segmenter if run.ema is None else eval_network(run)
    cm = evaluate(segmenter, run.val_loader, run.num_classes, ctx.device, run.cfg.train.amp)
    return allreduce_confusion(cm.matrix), {}


def epoch_metrics(run: Run, epoch: int, result: EpochResult, matrix: Any,
                  extra: dict[str, float]) -> tuple[dict[str, Any], bool]:
    """The epoch's metrics row, and whether it improved the run's best score (``train.select``;
    the run's best is updated).  Without validation (``matrix`` None) every epoch "improves":
    model.pt is the last epoch's."""
    cfg = run.cfg
    lr = next(iter(run.optimizers.values())).param_groups[0]["lr"]
    metrics = {"epoch": epoch + 1, "step": run.global_step, "samples_per_s": round(result.samples_per_s, 2),
               "lr": lr, **{f"train_{k}": v for k, v in result.losses.items()}}
    if matrix is None:
        metrics.update(best_mean_dice=float("nan"))
        return metrics, True
    metrics.update({f"val_{k}": v for k, v in _flat_scores(scores(matrix, run.classes)).items()}, **extra)
    score = selection_score(metrics, cfg.train.select, cfg.train.select_tpb_weight)
    improved = score > run.best
    if improved:
        run.best, run.best_dice = score, metrics["val_mean_dice"]
    metrics.update(val_score=score, best_score=run.best, best_mean_dice=run.best_dice)
    return metrics, improved


def _flat_scores(val: dict[str, Any]) -> dict[str, float]:
    """scores() -> flat {"mean_dice": .., "dice_pore": .., ...} for CSV columns and Ray metrics."""
    flat = {k: float(v) for k, v in val.items() if k != "per_class"}
    for cls, values in val["per_class"].items():
        flat.update({f"{k}_{cls}": float(v) for k, v in values.items() if k != "support"})
    return flat


# ----------------------------------------------------------------------------- checkpoints


def make_checkpoint(run: Run, epoch_done: int, epoch_step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """last.pt: the weights, optimiser/scheduler/EMA states and where the run stands (no RNG states:
    every step reseeds from its coordinates)."""
    cfg = run.cfg
    return base_checkpoint(
        model_name=cfg.model.name, model_kwargs=run.model_kwargs, model_state=run.nets.model.state_dict(),
        optimizer_states={k: o.state_dict() for k, o in run.optimizers.items()},
        scheduler_states={k: s.state_dict() for k, s in run.schedulers.items()},
        **({"ema_state": run.ema.state_dict()} if run.ema is not None else {}),
        epoch=epoch_done, epoch_step=epoch_step, step=run.global_step, config=config_to_dict(cfg),
        stats=run.stats, classes=run.classes, metrics=metrics, best_mean_dice=run.best_dice, best_score=run.best,
        voxel_size_nm=run.voxel_size_nm,  # (z, y, x) nm of the training store, or None
        provenance=provenance(run.origin.started, inputs={"store": run.store_input}, command=run.origin.command),
        split={"train": list(run.split.train), "val": list(run.split.val) if run.split.val else None},
        store=str(cfg.data.store), **({"parent": run.parent} if run.parent else {}),
    )


def save_epoch(run: Run, run_dir: Path, metrics: dict[str, Any], improved: bool) -> Path:
    """Rank 0 after an epoch: the metrics row, model.pt when the score improved, last.pt."""
    ckpt = make_checkpoint(run, metrics["epoch"], 0, metrics)
    write_metrics_row(run_dir, metrics)
    if improved:
        weights = {"model_state": run.ema.module.state_dict()} if run.ema is not None else {}
        save_checkpoint(inference_checkpoint({**ckpt, **weights}), run_dir / BEST)
    return save_checkpoint(ckpt, run_dir / LAST)


def checkpoint_stop(run: Run, run_dir: Path, ctx: WorkerContext, epoch: int, result: EpochResult) -> dict[str, Any]:
    """A stop request mid-epoch: rank 0 writes last.pt at the step reached; every rank reports."""
    metrics = {"epoch": epoch, "step": run.global_step, "stopped": True}
    path = None
    if ctx.rank == 0:
        path = save_checkpoint(make_checkpoint(run, epoch, result.steps, metrics), run_dir / LAST)
        log.info("stop requested: checkpointed epoch %d step %d to %s", epoch + 1, result.steps, path)
    if ctx.report:
        ctx.report(metrics, path)
    return metrics


def log_epoch(run: Run, metrics: dict[str, Any], result: EpochResult, extra: dict[str, float]) -> None:
    if "val_mean_dice" not in metrics:
        log.info("epoch %d/%d  loss %.4f  (no validation)  %.1f samples/s", metrics["epoch"], run.cfg.train.epochs,
                 result.losses.get("loss", float("nan")), result.samples_per_s)
        return
    log.info("epoch %d/%d  loss %.4f  val mean Dice %.4f  %s%s  %.1f samples/s", metrics["epoch"],
             run.cfg.train.epochs, result.losses.get("loss", float("nan")), metrics["val_mean_dice"],
             "  ".join(f"{c} {metrics.get(f'val_dice_{c}', float('nan')):.3f}" for c in run.classes),
             "".join(f"  {k[4:]} {v:.3f}" for k, v in extra.items()), result.samples_per_s)


# ----------------------------------------------------------------------------- fit


def preflight(cfg: Config) -> None:
    """Check the data and the model config in the driver, before any worker starts,
    so that bad input is one clear line instead of a failed worker group.  (The ranges of
    single settings are checked when the config is built: config.py.)"""
    store = open_store(cfg.data.store)
    if store.labels is None:
        raise InvalidInputError(f"store '{cfg.data.store}' has no labels; training needs a store ingested with "
                                "--labels (or made by 'xtrain synth')")
    plan = plan_data(cfg, store)
    if plan.census is not None:
        z0, z1 = plan.split.train
        if not sum(plan.census.per_plane["z"][z0:z1]):
            raise InvalidInputError(f"store '{cfg.data.store}' has no labelled voxel in the training region z "
                                    f"{[z0, z1]}; label some there, or set data.train_z where the labels are")
    classes = list(store.info.classes)
    model = build_model(cfg, cfg.data.slices, len(classes))
    parent = load_parent(cfg, resolved_model_kwargs(cfg, cfg.data.slices, len(classes)), classes)
    if parent is not None:
        init_weights(model, parent, cfg.model.name)  # train.init: its weights load (before anything is written)
    create_loss(cfg.loss.name, class_weights=cfg.loss.class_weights)


def fit(cfg: Config, run_dir: str | Path, ctx: WorkerContext | None = None,
        resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``cfg`` to ``cfg.train.epochs`` epochs (from ``resume``, a last.pt dict, if given).

    Rank 0 writes RUN_DIR/last.pt after every epoch (and on a stop request), RUN_DIR/model.pt
    whenever the validation score (``train.select``: mean Dice, or Dice and TPB) improves, and
    RUN_DIR/metrics.csv.  The recipe (recipe.py): lr schedule, weight EMA (validated and saved
    in model.pt), global-batch BatchNorm with more than one DDP rank.  Returns the last
    metrics with ``"stopped": True`` if a stop request interrupted the run.
    """
    ctx = ctx or WorkerContext()
    run_dir = Path(run_dir)
    run = build_run(cfg, ctx, resume)
    metrics: dict[str, Any] = {}
    for epoch in range(run.start_epoch, cfg.train.epochs):
        result = train_one_epoch(run, ctx, epoch, run.start_step if epoch == run.start_epoch else 0)
        if result.stopped:
            return checkpoint_stop(run, run_dir, ctx, epoch, result)
        matrix, extra = validate(run, ctx)
        metrics, improved = epoch_metrics(run, epoch, result, matrix, extra)
        path = save_epoch(run, run_dir, metrics, improved) if ctx.rank == 0 else None
        if ctx.rank == 0:
            log_epoch(run, metrics, result, extra)
        if ctx.report:
            ctx.report(metrics, path)
        if epoch + 1 < cfg.train.epochs and any_rank(ctx.should_stop(), ctx.device):
            return {**metrics, "stopped": True}  # epoch finished and checkpointed: stop here
    return metrics
