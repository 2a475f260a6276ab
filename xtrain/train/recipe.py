"""The training recipe around the loop: learning-rate schedules and an EMA of the weights
(BatchNorm statistics over the global batch under DDP: ``distributed.convert_sync_batchnorm``).

    schedulers = make_schedulers(optimizers, cfg.optim, total_steps)   # stepped after every step
    ema = make_ema(model, cfg.train.ema_decay)                         # None when off
    ema.update_parameters(model)                                        # after every step

Schedules (``optim.schedule``), as a factor of ``optim.lr`` at step s of S in total,
with W = round(optim.warmup * S) warm-up steps:

* ``constant``: 1.
* ``cosine``: (s + 1) / W while s < W (linear warm-up), then
  r + (1 - r) * (1 + cos(pi * (s - W) / (S - W))) / 2 with r = ``optim.min_lr_ratio``
  (SGDR, Loshchilov & Hutter 2017, without restarts; the warm-up as in Goyal et al. 2017).
  A ``torch.optim.lr_scheduler.LambdaLR`` of this closed form (``cosine_factor``).
* ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR`` (Smith & Topin 2018) with max_lr = lr,
  pct_start = warmup, cosine annealing, its default div_factor 25 and final_div_factor 1e4,
  and Adam's beta1 left alone (cycle_momentum=False).

Schedulers step once per optimiser step and their state goes into last.pt, so a run resumed
mid-epoch continues the exact lr sequence.

EMA (``train.ema_decay`` = d > 0): ``torch.optim.swa_utils.AveragedModel`` over parameters
*and* buffers (BatchNorm running statistics): w_ema <- w after the first step, then
w_ema <- d_n * w_ema + (1 - d_n) * w at the n-th update after it (Polyak averaging).  With
``train.ema_warmup`` (default) d_n = min(d, (1 + n) / (10 + n)), the warm-up of TensorFlow's
``tf.train.ExponentialMovingAverage(num_updates=...)``: without it a run shorter than ~1 / (1 - d)
steps validates weights that are mostly the random initialisation (a 32-step run at d = 0.995
predicted one class everywhere).  Without warm-up d_n = d.  Validation and model.pt use the EMA
weights.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torch.optim.swa_utils import AveragedModel

from ..config import SCHEDULES, OptimConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["SCHEDULES", "cosine_factor", "ema_decay_at", "make_ema", "make_schedulers", "warmup_steps"]


# ----------------------------------------------------------------------------- schedules


def warmup_steps(total_steps: int, warmup: float) -> int:
    return int(round(warmup * total_steps))


def cosine_factor(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """lr / base lr at 0-based step ``step`` (see the module docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _CosineFactor:
    """Picklable LambdaLR factor (a closure would not survive a Ray worker's pickling)."""

    def __init__(self, total_steps: int, warmup: int, min_ratio: float):
        self.total_steps, self.warmup, self.min_ratio = total_steps, warmup, min_ratio

    def __call__(self, step: int) -> float:
        return cosine_factor(step, self.total_steps, self.warmup, self.min_ratio)


def make_schedulers(optimizers: dict[str, torch.optim.Optimizer], cfg: OptimConfig,
                    total_steps: int) -> dict[str, LRScheduler]:
    """One scheduler per optimiser (none for ``constant``); ``total_steps`` >= 1 over the whole run."""
    if cfg.schedule == "constant":
        return {}
    total_steps = max(1, int(total_steps))
    warm = warmup_steps(total_steps, cfg.warmup)
    out: dict[str, LRScheduler] = {}
    for name, opt in optimizers.items():
        if cfg.schedule == "cosine":
            out[name] = LambdaLR(opt, _CosineFactor(total_steps, warm, cfg.min_lr_ratio))
        elif cfg.schedule == "onecycle":
            max_lr = [g["lr"] for g in opt.param_groups]
            out[name] = OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, pct_start=max(cfg.warmup, 1e-6),
                                   anneal_strategy="cos", cycle_momentum=False)
        else:  # config.py checks the name; a new entry in SCHEDULES must be handled here
            raise AssertionError(f"unhandled schedule {cfg.schedule!r} (known: {SCHEDULES})")
    return out


def load_scheduler_states(schedulers: dict[str, LRScheduler], states: dict[str, dict] | None,
                          total_steps: int) -> None:
    """Restore scheduler states from last.pt (a run resumed with more epochs stretches onecycle)."""
    if not schedulers:
        return
    if not states:
        raise ConfigError("the checkpoint has no scheduler state but optim.schedule is set; resume with the "
                         "schedule the run started with")
    for name, sched in schedulers.items():
        sched.load_state_dict(states[name])
        # building the scheduler set the optimiser's lr to step 0's: put back the resumed step's
        for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
            group["lr"] = lr
        if isinstance(sched, OneCycleLR) and sched.total_steps != total_steps:
            log.warning("onecycle schedule stretched from %d to %d steps on resume", sched.total_steps, total_steps)
            sched.total_steps = total_steps


# ----------------------------------------------------------------------------- EMA


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    """The EMA decay d_n of the n-th update after the first (n >= 1; see the module docstring)."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


class _EMAUpdate:
    """AveragedModel's ``multi_avg_fn``: w_ema <- lerp(w_ema, w, 1 - d_n).  A class, not a closure,
    so that the EMA pickles into Ray workers."""

    def __init__(self, decay: float, warmup: bool):
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def __call__(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(int(n_averaged), self.decay, self.warmup)
        for p_ema, p in zip(ema_params, params, strict=True):
            if p_ema.is_floating_point():
                p_ema.lerp_(p, weight)
            else:  # num_batches_tracked: AveragedModel averages every buffer; keep it an integer
                p_ema.copy_(p)


def make_ema(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel | None:
    """An EMA copy of ``model`` (unwrapped, not DDP) over parameters and buffers; None if decay == 0."""
    if decay <= 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=_EMAUpdate(decay, warmup), use_buffers=True)
