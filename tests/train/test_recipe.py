"""The training recipe: lr schedules, weight EMA, global-batch BatchNorm, whole-plane validation."""

from __future__ import annotations

import csv
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import StopAfter, tiny_config
from xtrain.config import load_config
from xtrain.errors import ConfigError
from xtrain.models.checkpoint import load_checkpoint
from xtrain.train.loop import WorkerContext, fit
from xtrain.train.recipe import GlobalBatchNorm2d, make_ema, make_schedulers




def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- schedules


def lr_sequence(schedule: str, steps: int, lr=1e-2, warmup=0.25, min_ratio=0.05) -> list[float]:
    cfg = load_config(None, [f"optim.schedule={schedule}", f"optim.lr={lr}", f"optim.warmup={warmup}",
                             f"optim.min_lr_ratio={min_ratio}"]).optim
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_schedulers({"model": opt}, cfg, steps)["model"]
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_is_linear_warmup_then_cosine():
    steps, lr, warm, r = 20, 1e-2, 5, 0.05
    got = lr_sequence("cosine", steps, lr, warm / steps, r)
    # the closed form, written out
    want = [lr * (s + 1) / warm if s < warm else
            lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))) for s in range(steps)]
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    # and torch's own composition of the same two phases
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    ref = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warm, eta_min=lr * r)], milestones=[warm])
    seq = []
    for _ in range(steps):
        seq.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert np.allclose(got, seq, rtol=1e-9)
    assert max(got) == pytest.approx(lr) and got[-1] < 0.1 * lr


def test_onecycle_is_torchs():
    got = lr_sequence("onecycle", 40, 1e-2, 0.3)
    assert got[0] == pytest.approx(1e-2 / 25) and max(got) == pytest.approx(1e-2)
    assert int(np.argmax(got)) == pytest.approx(0.3 * 40, abs=1) and got[-1] < 1e-5


def test_bad_recipe_keys_are_one_line_errors():
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        load_config(None, ["optim.schedule=cosin"])
    with pytest.raises(ConfigError, match=r"train.ema_decay.*\[0.0, 1.0\)"):
        load_config(None, ["train.ema_decay=1.0"])
    with pytest.raises(ConfigError, match="optim.warmup"):
        load_config(None, ["optim.warmup=-0.1"])
    with pytest.raises(ConfigError, match="val_mode=slab"):
        load_config(None, ["train.select=dice+tpb"])
    with pytest.raises(ConfigError, match="did you mean 'slab'"):
        load_config(None, ["data.val_mode=slabs"])


def test_schedule_and_ema_resume_exactly(train_store, tmp_path):
    """Stopped mid-epoch and resumed: weights, EMA weights and lr equal an uninterrupted run."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = tiny_config(train_store, "train.epochs=2", "optim.schedule=cosine", "optim.warmup=0.3",
                      "train.ema_decay=0.9", "model.kwargs={width: 8, depth: 2, dropout: 0.2}")
    fit(cfg, tmp_path / "a")
    stopped = fit(cfg, tmp_path / "b", WorkerContext(should_stop=StopAfter(6)))
    assert stopped["stopped"]
    fit(cfg, tmp_path / "b", resume=load_checkpoint(tmp_path / "b" / "last.pt"))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for key in ("model_state", "ema_state"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a["optimizer_states"]["model"]["param_groups"][0]["lr"] == \
        b["optimizer_states"]["model"]["param_groups"][0]["lr"]
    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["lr"] for r in ra] == [r["lr"] for r in rb]
    # 8 steps, 2 warm-up: after epoch 1 (4 steps) the lr is the cosine at step 4 of 8
    lr, warm = cfg.optim.lr, 2
    want = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (4 - warm) / (8 - warm))))
    assert float(ra[0]["lr"]) == pytest.approx(want, rel=1e-9)


# ----------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_decayed_average_of_the_weights(warmup):
    from xtrain.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, width=4, depth=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    d = 0.8
    ema = make_ema(model, d, warmup=warmup)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 3, (4, 16, 16))
    history = []
    for _ in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update_parameters(model)
        history.append({k: v.detach().clone().double() for k, v in model.state_dict().items()})
    # independent recursion: w_ema = w_1, then w_ema = d_n w_ema + (1 - d_n) w_{n+1}, with
    # d_n = min(d, (1 + n) / (10 + n)) under warm-up (TensorFlow's ExponentialMovingAverage)
    decays = [min(d, (1 + n) / (10 + n)) if warmup else d for n in range(1, len(history))]
    if warmup:
        assert decays[0] == pytest.approx(2 / 11) and max(decays) < d  # the warm-up is active in 6 steps
    for k, v in ema.module.state_dict().items():
        if not v.is_floating_point():
            continue
        want = history[0][k]
        for dn, w in zip(decays, history[1:]):
            want = dn * want + (1 - dn) * w[k]
        assert torch.allclose(v.double(), want, rtol=1e-5, atol=1e-6), k
    raw = model.state_dict()
    assert any(not torch.equal(raw[k], v) for k, v in ema.module.state_dict().items() if v.is_floating_point())


def test_model_pt_holds_the_ema_weights(train_store, tmp_path):
    fit(tiny_config(train_store, "train.epochs=1", "train.ema_decay=0.5"), tmp_path)
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "model.pt")
    ema = {k[len("module."):]: v for k, v in last["ema_state"].items() if k.startswith("module.")}
    assert best["model_state"].keys() == last["model_state"].keys() == ema.keys()
    assert all(torch.equal(best["model_state"][k], ema[k]) for k in ema)
    assert any(not torch.equal(best["model_state"][k], last["model_state"][k]) for k in ema
               if ema[k].is_floating_point())


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


# ----------------------------------------------------------------------------- whole-plane validation


def test_slab_validation_records_tpb_ratio_and_fraction_error(train_store, tmp_path):
    from xtrain.data.normalise import normalize
    from xtrain.data.store import open_store
    from xtrain.evaluate.microstructure import analyze
    from xtrain.models import create_model

    cfg = tiny_config(train_store, "train.epochs=1", "data.val_mode=slab", "train.select=dice+tpb")
    fit(cfg, tmp_path)
    row = rows(tmp_path)[0]
    best = load_checkpoint(tmp_path / "model.pt")
    model = create_model(best["model_name"], **best["model_kwargs"])
    model.load_state_dict(best["model_state"])
    model.eval()
    store = open_store(train_store)
    z0, z1 = best["config"]["data"]["val_z"] or (25, 33)  # val_fraction 0.25 of 33 slices: z 25..32
    image = normalize(np.asarray(store.image[z0:z1]), store.info.stats)
    truth = np.asarray(store.labels[z0:z1])
    with torch.no_grad():
        pred = model(torch.from_numpy(image)[:, None]).argmax(1).numpy().astype(np.uint8)  # whole planes
    t, p = analyze(truth, percolation=False), analyze(pred, percolation=False)
    assert float(row["val_tpb_ratio"]) == pytest.approx(p["tpb"]["density"] / t["tpb"]["density"], rel=1e-6)
    err = max(abs(p["fractions"][c] - t["fractions"][c]) for c in ("pore", "ysz", "ni")) * 100
    assert float(row["val_fraction_error_pp"]) == pytest.approx(err, rel=1e-6)
    dice = float(row["val_mean_dice"])
    assert float(row["val_score"]) == pytest.approx(dice - 0.1 * abs(float(row["val_tpb_ratio"]) - 1))


# ----------------------------------------------------------------------------- Ray Train, 2 workers


@pytest.mark.slow
def test_two_ray_workers_with_sync_bn_train_like_one_worker_on_the_whole_batch(ray_cluster, train_store, tmp_path):
    """With global-batch BatchNorm, 2 DDP workers x batch 16 see the batch of 1 worker x batch 32
    (the same global samples: item i of rank r is global sample r + 2i), so their BatchNorm
    running statistics after a step agree; with per-worker BatchNorm they do not."""
    from xtrain.train.ray_trainer import train

    common = ("train.epochs=1", "loss.name=ce", "data.samples_per_epoch=32", "data.val_patches=4")
    train(tiny_config(train_store, "train.workers=2", "train.batch_size=16", "train.sync_bn=true", *common),
          tmp_path / "sync")
    train(tiny_config(train_store, "train.workers=2", "train.batch_size=16", "train.sync_bn=false", *common),
          tmp_path / "local")
    (tmp_path / "one").mkdir()
    fit(tiny_config(train_store, "train.workers=1", "train.batch_size=32", *common), tmp_path / "one")
    one, sync, local = (load_checkpoint(tmp_path / d / "last.pt")["model_state"] for d in ("one", "sync", "local"))
    stats = [k for k in one if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats
    for k in stats:
        assert torch.allclose(sync[k], one[k], rtol=1e-4, atol=1e-5), k
    err_sync = max(float((sync[k] - one[k]).abs().max()) for k in stats)
    err_local = max(float((local[k] - one[k]).abs().max()) for k in stats)
    assert err_local > 10 * err_sync, (err_local, err_sync)
