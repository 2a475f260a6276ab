"""An image-aware pairwise (CRF) loss for sparse labels: boundaries go where the intensity changes.

    term = make_pairwise(cfg.loss)                     # None when loss.crf_weight == 0
    loss = supervised + term.weight * term(logits, image)

Scribbles stay away from every phase boundary, so the supervised loss never says where one lies.
This term says it for every pixel of the patch, labelled or not: neighbours p, q of similar
intensity should take the same class.  It is the relaxed Potts model of the weakly-supervised
"regularized losses" (Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation",
ECCV 2018) on a local window, as in the gated CRF loss (Obukhov et al., arXiv:1906.04651, 2019):

    term = sum_{p, q in N(p)} w_pq (1 - s_p . s_q) / sum_{p, q in N(p)} w_pq
    w_pq = exp(-(I_p - I_q)^2 / (2 sigma_I^2)) exp(-|p - q|^2 / (2 sigma_xy^2))

with s = softmax(logits) (B, K, P, P), I the patch's centre input slice (normalised: the 0.5/99.5
percentiles at 0 and 1), N(p) the (2r + 1)^2 - 1 pixels within ``loss.crf_radius`` = r.  The term
is the w-weighted probability that two neighbours take different classes: 0 for a prediction that
is constant on every region of similar intensity, and it is cheapest to change class where the
intensity changes most.  The defaults (sigma_I 0.1 of the normalised range, sigma_xy 6 px, r 2) are
the gated CRF loss's ``sigma_rgb`` and ``sigma_xy``, not tuned on this project's data.  It is
computed in float32 from shifted views (no unfold), and each unordered pair once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import LossConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairwiseTerm:
    """The run's pairwise term: its weight and kernel (``loss.crf_*``, config.py)."""

    weight: float
    radius: int
    sigma_intensity: float
    sigma_xy: float

    def __call__(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return pairwise_potts(logits, image, self.radius, self.sigma_intensity, self.sigma_xy)


def pairwise_potts(logits: torch.Tensor, image: torch.Tensor, radius: int = 2, sigma_intensity: float = 0.1,
                   sigma_xy: float = 6.0) -> torch.Tensor:
    """The relaxed Potts term (module docstring) of logits (B, K, P, P) against the centre channel of
    image (B, C, P, P): a scalar in [0, 1], differentiable in the logits only."""
    probs = logits.float().softmax(dim=1)  # (B, K, P, P)
    guide = image[:, image.shape[1] // 2].detach().float()  # (B, P, P): the slice the labels belong to
    _, _, h, w = probs.shape
    total = probs.new_zeros(())
    norm = probs.new_zeros(())
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx <= 0:
                continue  # each unordered pair once: (dy, dx) and (-dy, -dx) are the same pairs
            # p runs over [y0, y1) x [x0, x1); q = p + (dy, dx) stays inside the patch
            y0, y1 = 0, h - dy
            x0, x1 = max(0, -dx), w - max(0, dx)
            sp, sq = probs[:, :, y0:y1, x0:x1], probs[:, :, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            ip, iq = guide[:, y0:y1, x0:x1], guide[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            wpq = torch.exp(-(ip - iq) ** 2 / (2 * sigma_intensity ** 2) - (dy * dy + dx * dx) / (2 * sigma_xy ** 2))
            total = total + (wpq * (1 - (sp * sq).sum(dim=1))).sum()
            norm = norm + wpq.sum()
    return total / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def make_pairwise(cfg: LossConfig) -> PairwiseTerm | None:
    """None when ``loss.crf_weight`` is 0 (off: the loop is unchanged)."""
    if cfg.crf_weight <= 0:
        return None
    log.info("pairwise CRF loss: weight %g, radius %d, sigma_I %g, sigma_xy %g",
             cfg.crf_weight, cfg.crf_radius, cfg.crf_sigma, cfg.crf_sigma_xy)
    return PairwiseTerm(cfg.crf_weight, cfg.crf_radius, cfg.crf_sigma, cfg.crf_sigma_xy)
