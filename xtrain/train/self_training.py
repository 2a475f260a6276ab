"""Self-training from the EMA teacher's confident predictions (issue 21: use the unlabelled voxels).

    st = make_self_training(cfg.train, run.ema, total_steps)        # None when train.pseudo_weight == 0
    term = st if st is not None and st.active(global_step) else None
    train_step(..., pseudo=term)                                   # loss + pseudo_weight * pseudo CE

The method:

* **Teacher**: the EMA of the student's weights (``train.ema_decay``; recipe.py), in eval mode and
  without gradient, on the same (augmented) batch as the student: Mean Teacher (Tarvainen & Valpola
  2017, "Mean teachers are better role models", NeurIPS), here as the source of hard targets.
* **Pseudo-labels**: at every *unlabelled* pixel (``IGNORE``) whose teacher max softmax probability is
  at least ``train.pseudo_threshold``, the teacher's argmax; everything else (labelled pixels, unsure
  ones) stays ``IGNORE``.  Hard, confidence-thresholded pseudo-labels as in Lee 2013 ("Pseudo-Label:
  the simple and efficient semi-supervised learning method", ICML workshop) and FixMatch (Sohn et al.
  2020, NeurIPS; its ``max_probs.ge(threshold)`` mask).  Unlike FixMatch there is no separate strong
  augmentation: teacher and student see the same input, the teacher's weights differ.
* **Loss**: ``pseudo_weight * CE(student logits, pseudo-labels)``, the plain cross-entropy (no class
  weights) averaged over the accepted pixels (0 when none is accepted: ``losses.CrossEntropyLoss``),
  added to the supervised loss from step ``round(pseudo_start * total_steps)`` on (an early teacher is
  near its random initialisation).
* **Metrics**: ``pseudo_loss`` and ``pseudo_accept`` (accepted / unlabelled pixels of the batch; 0
  when the batch has no unlabelled pixel or before the start), per step, averaged per epoch by the
  loop (``train_pseudo_accept`` in metrics.csv).

Unlabelled pixels reach the student only where patches hold them: with whole painted planes every
patch drawn around a labelled voxel lies in its plane, so ``data.unlabelled_fraction`` draws a share
of the patches uniformly over the region (data/sampler.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..config import TrainConfig
from ..data.labels import IGNORE
from ..errors import ConfigError
from .losses import CrossEntropyLoss

log = logging.getLogger(__name__)


def pseudo_labels(teacher_logits: torch.Tensor, label: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pseudo-labels (B, P, P) int64 from teacher logits (B, K, P, P) and labels (B, P, P).

    The teacher's argmax where ``label`` is ``IGNORE`` and the teacher's max softmax probability is
    ``>= threshold``; ``IGNORE`` everywhere else, so a labelled pixel is never overridden.
    """
    confidence, cls = torch.softmax(teacher_logits.detach().float(), dim=1).max(dim=1)  # (B, P, P) each
    accept = (label == IGNORE) & (confidence >= threshold)
    return torch.where(accept, cls, torch.full_like(cls, IGNORE))


def pseudo_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, label: torch.Tensor,
                threshold: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The unweighted pseudo-label cross-entropy of a batch (logits (B, K, P, P), labels (B, P, P)), and
    its metrics ``pseudo_loss`` and ``pseudo_accept`` (accepted / unlabelled pixels)."""
    pseudo = pseudo_labels(teacher_logits, label, threshold)
    loss = CrossEntropyLoss()(student_logits.float(), pseudo)
    unlabelled = int((label == IGNORE).sum())
    accepted = int((pseudo != IGNORE).sum())
    return loss, {"pseudo_loss": float(loss.detach()), "pseudo_accept": accepted / unlabelled if unlabelled else 0.0}


IDLE = {"pseudo_loss": 0.0, "pseudo_accept": 0.0}  # a step before the start: same metrics columns every epoch


@dataclass(frozen=True)
class SelfTraining:
    """The run's self-training: the teacher network (the EMA's module), the loss weight, the confidence
    threshold and the first global step (0-based) with pseudo-labels."""

    teacher: nn.Module
    weight: float
    threshold: float
    first_step: int

    def active(self, global_step: int) -> bool:
        return global_step >= self.first_step


def make_self_training(cfg: TrainConfig, ema: AveragedModel | None, total_steps: int) -> SelfTraining | None:
    """None when ``train.pseudo_weight`` is 0 (off: the loop is unchanged); the EMA is the teacher
    (config.py refuses pseudo_weight > 0 without ``train.ema_decay``)."""
    if cfg.pseudo_weight <= 0:
        return None
    if ema is None:  # config.py refuses this already; a config changed after it was built is caught here
        raise ConfigError(f"train.pseudo_weight={cfg.pseudo_weight} needs train.ema_decay > 0: the EMA weights are "
                          "the teacher; e.g. --set train.ema_decay=0.995")
    first = int(round(cfg.pseudo_start * total_steps))
    log.info("self-training from the EMA teacher: weight %g, threshold %g, from step %d of %d",
             cfg.pseudo_weight, cfg.pseudo_threshold, first, total_steps)
    return SelfTraining(ema.module, cfg.pseudo_weight, cfg.pseudo_threshold, first)
