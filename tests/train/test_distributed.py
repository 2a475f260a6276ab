"""DDP helpers: the confusion-matrix all-reduce, global-batch BatchNorm on two gloo ranks, lockstep flags."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from xtrain.train.distributed import GlobalBatchNorm2d, allreduce_confusion, any_rank, all_gather, unwrap, wrap


def test_single_process_helpers_are_identities():
    net = nn.Linear(2, 2)
    assert wrap(net, torch.device("cpu")) is net and unwrap(net) is net
    assert any_rank(True, torch.device("cpu")) and not any_rank(False, torch.device("cpu"))
    assert all_gather({"a": 1}, 1) == [{"a": 1}]


def test_allreduce_without_process_group_is_identity():
    m = np.arange(9).reshape(3, 3)
    assert np.array_equal(allreduce_confusion(m), m)


def test_allreduce_in_a_process_group(tmp_path):
    # one gloo worker in this process (a 2-process spawn costs ~10 s of torch imports):
    # checks the collective path (tensor round trip, dtype); summing is all_reduce's job
    import torch.distributed as dist

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = np.arange(9, dtype=np.int32).reshape(3, 3)
        out = allreduce_confusion(m)
        assert out.dtype == np.int64 and np.array_equal(out, m)
        assert m[2, 2] == 8  # the input is not modified in place
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- global-batch BN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn_rank(rank: int, port: int, x: torch.Tensor, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        bn = GlobalBatchNorm2d(3)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        part = x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
        out = bn(part)
        (out * torch.arange(out.numel()).view_as(out).float().sin()[...]).sum().backward()
        queue.put((rank, *(t.detach().numpy().copy() for t in (out, part.grad, bn.running_mean, bn.running_var,
                                                                   bn.weight.grad, bn.bias.grad))))
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_on_two_gloo_ranks_equals_batchnorm_of_the_whole_batch():
    x = torch.randn(4, 3, 5, 7) * 3 + 1
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_bn_rank, args=(r, port, x, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = {r[0]: [torch.from_numpy(a) for a in r[1:]] for r in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # reference: one BatchNorm2d over all 4 samples; each rank's loss weights its own outputs
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    xx = x.clone().requires_grad_(True)
    out = bn(xx)
    w = torch.cat([torch.arange(out[:2].numel()).view_as(out[:2]).float().sin()] * 2)
    (out * w).sum().backward()
    for r in range(2):
        o, g, rm, rv, gw, gb = got[r]
        assert torch.allclose(o, out[r * 2:(r + 1) * 2].detach(), atol=1e-5)
        assert torch.allclose(g, xx.grad[r * 2:(r + 1) * 2], atol=1e-5)
        assert torch.allclose(rm, bn.running_mean, atol=1e-6) and torch.allclose(rv, bn.running_var, atol=1e-5)
    # the ranks' weight gradients sum to the whole batch's (DDP then averages them)
    assert torch.allclose(got[0][4] + got[1][4], bn.weight.grad, atol=1e-4)
    assert torch.allclose(got[0][5] + got[1][5], bn.bias.grad, atol=1e-4)
