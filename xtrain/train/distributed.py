"""DistributedDataParallel helpers: the only place the training code talks to torch.distributed.

    net = wrap(model, device)                    # DDP when a process group is up, else the model itself
    unwrap(net)                                  # the plain module (checkpoints, EMA)
    any_rank(flag, device)                       # True on every rank if true on any (stops in lockstep)
    allreduce_confusion(matrix)                  # sum a (K, K) confusion matrix over ranks
    all_gather(obj, world_size)                  # [obj of rank 0, obj of rank 1, ...] on every rank
    seed_step(seed, epoch, rank, step)           # torch RNG of one step: resume is exact
    model = convert_sync_batchnorm(model, device)  # BatchNorm over the global batch, before wrap()

Every function works unchanged in a single process (no process group: world size 1), so the
loop runs the same code in tests and on N Ray Train workers.  The collectives (``any_rank``,
``allreduce_confusion``, ``all_gather``, ``GlobalBatchNorm2d`` in training) must be called by
every rank the same number of times.

SyncBatchNorm: ``torch.nn.SyncBatchNorm`` refuses CPU tensors (torch 2.13: "expected input
tensor to be on GPU"), and xtrain trains with gloo on CPU nodes.  ``GlobalBatchNorm2d`` is the
same computation for any device: the batch mean and variance of every channel are summed over
all ranks with a differentiable all-reduce (whose backward all-reduces the gradients, as
SyncBatchNorm's backward does), so every rank normalises with, and tracks running statistics
of, the global batch.  On CUDA torch's own SyncBatchNorm is used.  Both keep BatchNorm2d's
state-dict keys: model.pt loads into a plain U-Net.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """A torch.distributed process group is initialised (by Ray Train's TorchConfig, or a test)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when a process group is up (gradients all-reduced), else itself."""
    if not is_distributed():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps DDP ranks in lockstep)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def allreduce_confusion(matrix: np.ndarray) -> np.ndarray:
    """Sum ``matrix`` over all workers of the default torch.distributed process group.

    Returns it unchanged (as int64) when torch.distributed is not initialised, so the same
    code runs in a single process.  Every worker must call it (it is a collective).
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    if not is_distributed():
        return matrix
    t = torch.from_numpy(matrix.copy())
    if dist.get_backend() == "nccl":  # NCCL reduces only GPU tensors
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy().astype(np.int64)


def all_gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in a single process."""
    if world == 1 or not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def seed_step(seed: int, epoch: int, rank: int, step: int) -> None:
    """Reseed torch's RNG (dropout, etc.) from the step's coordinates: resume is exact."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank, step]).generate_state(1)[0]))


# ----------------------------------------------------------------------------- global-batch BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the
    ranks' output gradients (what torch.distributed.nn's deprecated all_reduce does)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of all DDP ranks (any device).

    Outside training, or without an initialised process group of more than one rank, it is a
    plain BatchNorm2d.  Input (B, C, Y, X); every rank must call it the same number of times
    (DDP's lockstep guarantees that in training).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        n = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        total = _AllReduceSum.apply(n)  # voxels per channel, all ranks
        mean = _AllReduceSum.apply(x.sum(dim=(0, 2, 3))) / total  # (C,)
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / total  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(unbiased, m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a global-batch one: torch's SyncBatchNorm on CUDA,
    ``GlobalBatchNorm2d`` elsewhere.  Parameters and running statistics are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in module.modules())
