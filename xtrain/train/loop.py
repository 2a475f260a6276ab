"""The training loop, without Ray: build, train_one_epoch, evaluate, fit.

``fit`` is what every Ray Train worker runs (see ray_trainer.py), and what the tests run
in-process with world_size=1.  Distributed behaviour comes only from torch.distributed:
when a process group is initialised the model is wrapped in DistributedDataParallel and
the validation confusion matrix is summed across ranks.

Determinism: the data of every step is a pure function of (seed, epoch, global sample
index) (see data/sampler.py), and the torch RNG (dropout) is reseeded from
(seed, epoch, rank, step) before every step.  A run stopped at any step boundary and
resumed from its checkpoint therefore takes exactly the same steps as one that never
stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import Config, config_to_dict
from ..data.sampler import GridPatches, RandomPatches, patch_loader, split_regions
from ..io import read_csv, write_csv
from ..data.store import open_store
from ..errors import ConfigError, InvalidInputError
from .losses import create_loss
from ..malloc import keep_freed_memory
from ..evaluate.metrics import ConfusionMatrix, allreduce_confusion, scores
from ..models import create_model, model_kwargs
from ..models.checkpoint import base_checkpoint, inference_checkpoint, save_checkpoint
from .recipe import convert_sync_batchnorm, has_batchnorm, load_scheduler_states, make_ema, make_schedulers
from .validate import ValidationSlab, selection_score

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "model.pt"
METRICS = "metrics.csv"


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
    """One Adam per trained network: Pix2Pix gets separate generator/discriminator optimisers."""
    o = cfg.optim

    def adam(params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)

    if is_gan(model):
        return {
            "generator": adam(model.generator.parameters(), o.lr),
            "discriminator": adam(model.discriminator.parameters(), o.d_lr or o.lr),
        }
    return {"model": adam(model.parameters(), o.lr)}


def wrap_distributed(module: nn.Module, device: torch.device) -> nn.Module:
    if not (dist.is_available() and dist.is_initialized()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def seed_step(seed: int, epoch: int, rank: int, step: int) -> None:
    """Reseed torch's RNG (dropout, etc.) from the step's coordinates: resume is exact."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank, step]).generate_state(1)[0]))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps DDP ranks in lockstep)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ----------------------------------------------------------------------------- one epoch


@dataclass
class Nets:
    """The trained network(s), possibly DDP-wrapped, and the unwrapped model for checkpoints."""

    model: nn.Module  # unwrapped; Pix2Pix or a plain segmenter
    segmenter: nn.Module  # DDP-wrapped forward path: generator for Pix2Pix, else the model
    discriminator: nn.Module | None  # DDP-wrapped discriminator for Pix2Pix


def make_nets(model: nn.Module, device: torch.device) -> Nets:
    model.to(device)
    if is_gan(model):
        return Nets(model, wrap_distributed(model.generator, device), wrap_distributed(model.discriminator, device))
    return Nets(model, wrap_distributed(model, device), None)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_step(nets: Nets, optimizers: dict[str, torch.optim.Optimizer], loss_fn: nn.Module, image: torch.Tensor,
               label: torch.Tensor, cfg: Config, amp: bool) -> dict[str, float]:
    """One optimisation step on a batch: image (B, C, P, P) float32, label (B, P, P) int64."""
    device = image.device
    if nets.discriminator is None:
        opt = optimizers["model"]
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            logits = nets.segmenter(image)  # (B, K, P, P)
            loss = loss_fn(logits.float(), label)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    from ..models.pix2pix import discriminator_loss, generator_adversarial_loss

    g_opt, d_opt = optimizers["generator"], optimizers["discriminator"]
    with _autocast(device, amp):
        logits = nets.segmenter(image)  # generator, (B, K, P, P)
    probs = torch.softmax(logits.float(), dim=1)
    real = F.one_hot(label.clamp(0, probs.shape[1] - 1), probs.shape[1]).permute(0, 3, 1, 2).float()
    # Discriminator: real (image, true mask) pairs against (image, generated probabilities).
    d_opt.zero_grad(set_to_none=True)
    with _autocast(device, amp):
        d_loss = discriminator_loss(nets.discriminator, image, real, probs.detach())
    d_loss.float().backward()
    d_opt.step()
    # Generator: segmentation loss + lambda * fool the (unwrapped: no gradient all-reduce) discriminator.
    g_opt.zero_grad(set_to_none=True)
    with _autocast(device, amp):
        adv = generator_adversarial_loss(unwrap(nets.discriminator), image, probs)
    seg = loss_fn(logits.float(), label)
    g_loss = seg + cfg.loss.adversarial_weight * adv.float()
    g_loss.backward()
    g_opt.step()
    return {"loss": float(seg.detach()), "g_adv": float(adv.detach()), "d_loss": float(d_loss.detach())}


@dataclass
class EpochResult:
    steps: int  # steps done in this epoch, counting steps done before a resume
    samples_per_s: float
    losses: dict[str, float]
    stopped: bool  # a stop was requested: the epoch is incomplete


def train_one_epoch(nets: Nets, optimizers: dict[str, torch.optim.Optimizer], loss_fn: nn.Module,
                    loader: torch.utils.data.DataLoader, cfg: Config, ctx: WorkerContext, epoch: int,
                    start_step: int = 0, after_step: Callable[[], None] | None = None) -> EpochResult:
    """Train over ``loader`` (which already skips the first ``start_step`` batches on resume).

    ``after_step()`` runs after every optimiser step (lr schedulers, the weight EMA)."""
    nets.model.train()
    sums: dict[str, float] = {}
    n_steps, n_samples = 0, 0
    t0 = time.perf_counter()
    step = start_step
    for image, label in loader:
        if any_rank(ctx.should_stop(), ctx.device):
            return EpochResult(step, _rate(n_samples, t0, ctx), _means(sums, n_steps), stopped=True)
        seed_step(cfg.train.seed, epoch, ctx.rank, step)
        image = image.to(ctx.device, non_blocking=True)
        label = label.to(ctx.device, non_blocking=True)
        for k, v in train_step(nets, optimizers, loss_fn, image, label, cfg, cfg.train.amp).items():
            if not math.isfinite(v):
                raise FloatingPointError(f"training loss '{k}' became {v} at epoch {epoch + 1}, step {step}; "
                                         "lower optim.lr or check the input data")
            sums[k] = sums.get(k, 0.0) + v
        if after_step is not None:
            after_step()
        n_steps += 1
        n_samples += image.shape[0]
        step += 1
    return EpochResult(step, _rate(n_samples, t0, ctx), _means(sums, n_steps), stopped=False)


def _rate(n_samples: int, t0: float, ctx: WorkerContext) -> float:
    return n_samples * ctx.world_size / max(time.perf_counter() - t0, 1e-9)


def _means(sums: dict[str, float], n: int) -> dict[str, float]:
    return {k: v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def evaluate(segmenter: nn.Module, loader: torch.utils.data.DataLoader, num_classes: int,
             device: torch.device, amp: bool = True) -> ConfusionMatrix:
    """This rank's confusion matrix over its shard of the validation grid (sum it across ranks)."""
    segmenter.eval()
    cm = ConfusionMatrix(num_classes)
    for image, label in loader:
        with _autocast(device, amp):
            logits = segmenter(image.to(device))
        cm.update(logits.argmax(dim=1).cpu(), label)
    return cm


# ----------------------------------------------------------------------------- metrics file


def write_metrics_row(run_dir: Path, row: dict[str, Any]) -> None:
    """Append an epoch's row (replacing rows of that epoch or later: a resumed run redoes them)."""
    path = run_dir / METRICS
    rows = [r for r in read_csv(path) if int(r["epoch"]) < int(row["epoch"])] + [row]
    write_csv(path, rows)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return read_csv(path)


# ----------------------------------------------------------------------------- fit


def preflight(cfg: Config) -> None:
    """Check the data and the model config in the driver, before any worker starts,
    so that bad input is one clear line instead of a failed worker group."""
    store = open_store(cfg.data.store)
    if store.labels is None:
        raise InvalidInputError(f"store '{cfg.data.store}' has no labels; training needs a store ingested with "
                                "--labels (or made by 'xtrain synth')")
    split_regions(store.shape[0], cfg.data)
    build_model(cfg, cfg.data.slices, len(store.info.classes))
    create_loss(cfg.loss.name, class_weights=cfg.loss.class_weights)
    if cfg.train.workers < 1 or cfg.train.batch_size < 1 or cfg.train.epochs < 1:
        raise ConfigError("train.workers, train.batch_size and train.epochs must be >= 1; "
                          f"got {cfg.train.workers}, {cfg.train.batch_size}, {cfg.train.epochs}")


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
    keep_freed_memory()  # activations reuse their pages each step instead of faulting them in (malloc.py)
    store = open_store(cfg.data.store)
    classes = list(store.info.classes)
    num_classes = len(classes)
    split = split_regions(store.shape[0], cfg.data)

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts)
    model = build_model(cfg, cfg.data.slices, num_classes)
    optimizers = build_optimizers(model, cfg)
    start_epoch, start_step, global_step = 0, 0, 0
    best, best_dice = -math.inf, -1.0
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        for name, opt in optimizers.items():
            opt.load_state_dict(resume["optimizer_states"][name])
        start_epoch, start_step = int(resume["epoch"]), int(resume.get("epoch_step", 0))
        global_step, best_dice = int(resume["step"]), float(resume.get("best_mean_dice", -1.0))
        best = float(resume.get("best_score", best_dice))
    distributed = ctx.world_size > 1 and dist.is_available() and dist.is_initialized()
    if cfg.train.sync_bn and distributed and has_batchnorm(model):
        model = convert_sync_batchnorm(model, ctx.device)  # BN statistics of the global batch
    nets = make_nets(model, ctx.device)
    ema = make_ema(nets.model, cfg.train.ema_decay, cfg.train.ema_warmup)
    if ema is not None and resume is not None:
        if "ema_state" not in resume:
            raise ConfigError("the checkpoint has no EMA weights but train.ema_decay > 0; resume with the "
                              "train.ema_decay the run started with")
        ema.load_state_dict(resume["ema_state"])
    loss_fn = create_loss(cfg.loss.name, class_weights=cfg.loss.class_weights).to(ctx.device)

    train_set = RandomPatches(cfg.data.store, cfg.data, split.train, rank=ctx.rank, world_size=ctx.world_size,
                              seed=cfg.train.seed, train=True)
    val_set = GridPatches(cfg.data.store, cfg.data, split.val, rank=ctx.rank, world_size=ctx.world_size)
    train_loader = patch_loader(train_set, cfg.train.batch_size, cfg.data.loader_workers)
    val_loader = patch_loader(val_set, cfg.train.batch_size, cfg.data.loader_workers)
    val_slab = ValidationSlab(cfg.data.store, split.val, store.info.stats) if cfg.data.val_mode == "slab" else None
    total_steps = cfg.train.epochs * math.ceil(len(train_set) / cfg.train.batch_size)
    schedulers = make_schedulers(optimizers, cfg.optim, total_steps)
    if resume is not None:
        load_scheduler_states(schedulers, resume.get("scheduler_states"), total_steps)

    def after_step() -> None:
        for sched in schedulers.values():
            sched.step()
        if ema is not None:
            ema.update_parameters(nets.model)

    def eval_segmenter() -> nn.Module:
        """The network validation and model.pt use: the EMA weights when on (never DDP-wrapped)."""
        net = ema.module if ema is not None else nets.model
        return net.generator if is_gan(net) else net
    resolved = config_to_dict(cfg)
    kwargs = resolved_model_kwargs(cfg, cfg.data.slices, num_classes)

    def checkpoint(epoch_done: int, epoch_step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return base_checkpoint(
            model_name=cfg.model.name, model_kwargs=kwargs, model_state=nets.model.state_dict(),
            optimizer_states={k: o.state_dict() for k, o in optimizers.items()},
            scheduler_states={k: s.state_dict() for k, s in schedulers.items()},
            **({"ema_state": ema.state_dict()} if ema is not None else {}),
            epoch=epoch_done, epoch_step=epoch_step, step=global_step, config=resolved,
            stats=store.info.stats, classes=classes, metrics=metrics, best_mean_dice=best_dice, best_score=best,
            voxel_size_nm=list(store.info.voxel_size_nm) if store.info.voxel_size_nm else None,  # (z, y, x)
            split={"train": list(split.train), "val": list(split.val)}, store=str(cfg.data.store),
        )

    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        skip = start_step if epoch == start_epoch else 0  # steps already done before a resume
        train_set.set_epoch(epoch, start=skip * cfg.train.batch_size)
        result = train_one_epoch(nets, optimizers, loss_fn, train_loader, cfg, ctx, epoch, start_step=skip,
                                 after_step=after_step)
        global_step += result.steps - skip
        if result.stopped:
            metrics = {"epoch": epoch, "step": global_step, "stopped": True}
            path = None
            if ctx.rank == 0:
                path = save_checkpoint(checkpoint(epoch, result.steps, metrics), run_dir / LAST)
                log.info("stop requested: checkpointed epoch %d step %d to %s", epoch + 1, result.steps, path)
            if ctx.report:
                ctx.report(metrics, path)
            return metrics

        extra: dict[str, float] = {}
        if val_slab is not None:  # whole planes; ranks share the planes and gather the labels
            slab = val_slab.evaluate(eval_segmenter(), cfg.data.slices, num_classes, classes, ctx.rank,
                                     ctx.world_size, ctx.device)
            matrix = slab.matrix
            extra = {"val_tpb_ratio": slab.tpb_ratio, "val_fraction_error_pp": slab.fraction_error_pp}
        else:
            segmenter = nets.segmenter if ema is None else eval_segmenter()
            matrix = allreduce_confusion(evaluate(segmenter, val_loader, num_classes, ctx.device,
                                                  cfg.train.amp).matrix)
        val = scores(matrix, classes)
        lr = next(iter(optimizers.values())).param_groups[0]["lr"]
        metrics = {"epoch": epoch + 1, "step": global_step, "samples_per_s": round(result.samples_per_s, 2),
                   "lr": lr, **{f"train_{k}": v for k, v in result.losses.items()},
                   **{f"val_{k}": v for k, v in _flat_scores(val).items()}, **extra}
        score = selection_score(metrics, cfg.train.select, cfg.train.select_tpb_weight)
        improved = score > best
        if improved:
            best, best_dice = score, metrics["val_mean_dice"]
        metrics["val_score"] = score
        metrics["best_score"] = best
        metrics["best_mean_dice"] = best_dice
        path = None
        if ctx.rank == 0:
            ckpt = checkpoint(epoch + 1, 0, metrics)
            write_metrics_row(run_dir, metrics)
            if improved:
                weights = {"model_state": ema.module.state_dict()} if ema is not None else {}
                save_checkpoint(inference_checkpoint({**ckpt, **weights}), run_dir / BEST)
            path = save_checkpoint(ckpt, run_dir / LAST)
            log.info("epoch %d/%d  loss %.4f  val mean Dice %.4f  %s%s  %.1f samples/s", epoch + 1,
                     cfg.train.epochs, result.losses.get("loss", float("nan")), metrics["val_mean_dice"],
                     "  ".join(f"{c} {metrics.get(f'val_dice_{c}', float('nan')):.3f}" for c in classes),
                     "".join(f"  {k[4:]} {v:.3f}" for k, v in extra.items()), result.samples_per_s)
        if ctx.report:
            ctx.report(metrics, path)
        if epoch + 1 < cfg.train.epochs and any_rank(ctx.should_stop(), ctx.device):
            return {**metrics, "stopped": True}  # epoch finished and checkpointed: stop here
    return metrics


def _flat_scores(val: dict[str, Any]) -> dict[str, float]:
    """scores() -> flat {"mean_dice": .., "dice_pore": .., ...} for CSV columns and Ray metrics."""
    flat = {k: float(v) for k, v in val.items() if k != "per_class"}
    for cls, values in val["per_class"].items():
        flat.update({f"{k}_{cls}": float(v) for k, v in values.items() if k != "support"})
    return flat
