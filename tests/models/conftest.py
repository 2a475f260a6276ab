"""Model tests: one intra-op thread, and a tiny-batch overfitting helper."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Two intra-op threads on a busy 2-core machine make each step ~15x slower (threads
    # wait on each other at every op); one thread keeps these tests fast and steady.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def overfit():
    """The tiny-batch overfitting loop, as a fixture: ``overfit(model, x, labels, lr, steps)``."""
    return overfit_losses


def overfit_losses(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, lr: float, steps: int) -> list[float]:
    """Cross-entropy of ``model`` over ``steps`` Adam steps on one fixed batch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
