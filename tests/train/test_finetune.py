"""Fine-tuning (``train.init`` / ``--init``): the run starts from the parent's weights, refuses a model that
does not fit (one line, exit 2, nothing written), records the parent's sha256, takes the new data's
normalisation, resumes without re-initialising, and beats training from scratch on two labelled slices."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import StopAfter, make_store, planes, tiny_config
from xtrain.cli import main
from xtrain.data.labels import IGNORE, census
from xtrain.data.sampler import RandomPatches, patch_loader
from xtrain.data.store import open_store, write_store
from xtrain.errors import ModelMismatchError, SettingsMismatchError
from xtrain.models.checkpoint import load_checkpoint, model_from_checkpoint, model_info, save_checkpoint
from xtrain.train.distributed import seed_step
from xtrain.train.losses import create_loss
from xtrain.train.loop import WorkerContext, fit, plan_data, preflight
from xtrain.train.run_dir import prepare_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 threads on the shared 2 cores: each step ~15x slower
ARCH = "model.kwargs={width: 8, depth: 2, norm: group, dropout: 0.2}"  # dropout: the step's RNG must match too


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A tiny U-Net's model.pt, trained for 2 epochs on one store (its own statistics)."""
    root = tmp_path_factory.mktemp("parent")
    store = make_store(root / "old.zarr", shape=(33, 50, 47), seed=1)
    (root / "run").mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture (function-scoped) does for the tests
    try:
        fit(tiny_config(store, "train.epochs=2", ARCH), root / "run")
    finally:
        torch.set_num_threads(threads)
    return root / "run" / "model.pt"


def fit_new(cfg, run_dir, **kwargs):
    """``fit`` into a new folder (fit itself expects RUN_DIR, as prepare_run_dir makes it)."""
    run_dir.mkdir(parents=True)
    return fit(cfg, run_dir, **kwargs)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def first_batch(cfg):
    """The first training batch of ``cfg`` (epoch 0, rank 0) as the loop draws it."""
    split = plan_data(cfg, open_store(cfg.data.store)).split
    patches = RandomPatches(cfg.data.store, cfg.data, split.train, seed=cfg.train.seed, train=True)
    patches.set_epoch(0)
    return next(iter(patch_loader(patches, cfg.train.batch_size, 0)))


def test_the_first_step_starts_from_the_parent_weights(parent, tmp_path):
    new = make_store(tmp_path / "new.zarr", shape=(29, 45, 51), seed=7)
    one_step = ["train.epochs=1", "data.samples_per_epoch=16", ARCH]  # one step of 16: train_loss is its loss
    cfg = tiny_config(new, *one_step, f"train.init={parent}")
    metrics = fit_new(cfg, tmp_path / "ft")
    # independently: the parent's network, in training mode, on the same batch with the same dropout seed
    base, _ = model_from_checkpoint(load_checkpoint(parent), parent)
    base.train()
    image, label = first_batch(cfg)
    seed_step(cfg.train.seed, 0, 0, 0)
    with torch.no_grad():
        expected = float(create_loss(cfg.loss.name)(base(image), label))
    assert metrics["train_loss"] == pytest.approx(expected, rel=1e-5)
    scratch = fit_new(tiny_config(new, *one_step), tmp_path / "scratch")["train_loss"]
    assert abs(scratch - expected) > 1e-3  # the check can fail: a random start has another loss

    ckpt = load_checkpoint(tmp_path / "ft" / "model.pt")
    assert ckpt["parent"] == {"path": str(parent.resolve()), "sha256": sha256(parent)}
    assert model_info(ckpt, "model.pt").parent == ckpt["parent"]
    assert ckpt["stats"] == open_store(new).info.stats != load_checkpoint(parent)["stats"]  # the new data's
    assert load_checkpoint(tmp_path / "ft" / "last.pt")["parent"] == ckpt["parent"]
    assert "parent" not in load_checkpoint(tmp_path / "scratch" / "model.pt")


def test_a_pix2pix_starts_its_generator_from_a_unet(parent, tmp_path):
    cfg = tiny_config(make_store(tmp_path / "new.zarr", shape=(29, 45, 51), seed=7), "train.epochs=1",
                      "data.samples_per_epoch=16", "model.name=pix2pix", f"train.init={parent}", "optim.lr=1e-12",
                      "model.kwargs={width: 8, depth: 2, norm: group, dropout: 0.2, disc_width: 8, disc_layers: 2}")
    fit_new(cfg, tmp_path / "ft")
    generator = {k[len("generator."):]: v for k, v in load_checkpoint(tmp_path / "ft" / "last.pt")["model_state"].items()
                 if k.startswith("generator.")}
    start = load_checkpoint(parent)["model_state"]
    assert generator.keys() == start.keys()
    for k in start:  # one step at lr 1e-12: still the parent's weights
        assert torch.allclose(generator[k], start[k], atol=1e-6), k


def _cli_train(store, out, parent, *sets):
    return main(["train", "--config", "configs/tiny.yaml", "--data", str(store), "--out", str(out), "--init",
                 str(parent), "--set", ARCH, *[a for s in sets for a in ("--set", s)]])


def test_a_model_that_does_not_fit_is_refused_with_exit_2_and_nothing_written(parent, tmp_path, capsys):
    same = make_store(tmp_path / "same.zarr", shape=(29, 45, 51), seed=2)
    two = make_store(tmp_path / "two.zarr", shape=(29, 45, 51), seed=2, classes=("pore", "solid"))
    cases = [
        (two, [], "predicts classes ['pore', 'ysz', 'ni'] but the store has ['pore', 'solid']"),
        (same, ["model.kwargs={width: 16, depth: 2, norm: group, dropout: 0.2}"], "width=8 (this run: 16)"),
        (same, ["data.slices=3"], "in_channels=1 (this run: 3); set data.slices=1, or"),
        (same, ["model.name=mlp", "model.kwargs={}"], "is a unet and this run trains a mlp"),
    ]
    for store, sets, message in cases:
        out = tmp_path / f"run-{len(message)}"
        assert _cli_train(store, out, parent, *sets) == 2
        err = capsys.readouterr().err
        assert [line for line in err.splitlines() if "error:" in line and message in line], err
        assert not out.exists()
    # weights that do not fit the architecture they claim: torch's detail is kept
    broken = load_checkpoint(parent)
    key = next(k for k, v in broken["model_state"].items() if v.ndim == 4)
    broken["model_state"][key] = broken["model_state"][key][:1]
    save_checkpoint(broken, tmp_path / "broken.pt")
    assert _cli_train(same, tmp_path / "run-b", tmp_path / "broken.pt") == 2
    err = capsys.readouterr().err
    assert "does not load into this run's unet" in err and "size mismatch for" in err, err
    assert not (tmp_path / "run-b").exists()
    with pytest.raises(ModelMismatchError, match="size mismatch"):  # fit without preflight refuses it too
        fit_new(tiny_config(same, ARCH, f"train.init={tmp_path / 'broken.pt'}"), tmp_path / "fit-b")


def test_a_resumed_fine_tune_equals_an_uninterrupted_one_and_does_not_init_again(parent, tmp_path):
    new = make_store(tmp_path / "new.zarr", shape=(29, 45, 51), seed=7)
    cfg = tiny_config(new, "train.epochs=2", ARCH, f"train.init={parent}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fit(cfg, tmp_path / "a")
    assert fit(cfg, tmp_path / "b", WorkerContext(should_stop=StopAfter(6)))["stopped"]  # in epoch 2
    partial = load_checkpoint(tmp_path / "b" / "last.pt")
    original = sha256(parent)
    # the parent file changes before the resume: the run continues from last.pt, as started
    copy = tmp_path / "parent_copy.pt"
    copy.write_bytes(parent.read_bytes())
    changed = load_checkpoint(parent)
    changed["model_state"] = {k: torch.zeros_like(v) for k, v in changed["model_state"].items()}
    save_checkpoint(changed, parent)
    try:
        fit(cfg, tmp_path / "b", resume=partial)
    finally:
        parent.write_bytes(copy.read_bytes())
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert b["parent"]["sha256"] == original == a["parent"]["sha256"]
    # train.init is a setting of the run: a resume with another parent is refused, naming it
    run_dir, _ = prepare_run_dir(tmp_path / "c", cfg, resume=False)
    (run_dir / "last.pt").write_bytes((tmp_path / "b" / "last.pt").read_bytes())  # a run that checkpointed
    assert prepare_run_dir(run_dir, cfg, resume=True)[1] == run_dir / "last.pt"  # same settings: resumed
    with pytest.raises(SettingsMismatchError, match="train.init"):
        prepare_run_dir(run_dir, tiny_config(new, "train.epochs=2", ARCH, f"train.init={copy}"), resume=True)


# --------------------------------------------------------------------------- easy -> hard, synthetic


def _synthetic_store(path, preset, seed, labelled=None):
    """A synthetic (``xtrain.data.synth``) store; ``labelled``: the z-planes that keep labels (the rest
    IGNORE) besides the dense validation slab z >= 24."""
    from xtrain.data.stats import IntensityStats
    from xtrain.data.synth import generate

    image, labels, info = generate((32, 64, 64), preset=preset, seed=seed)
    if labelled is not None:
        keep = planes(labels.shape, "z", labelled)
        keep[24:] = True
        labels = np.where(keep, labels, np.uint8(IGNORE)).astype(np.uint8)
    with write_store(path, labels.shape) as w:
        w.create("image", labels.shape, np.uint16)[:] = image
        w.create("labels", labels.shape, np.uint8)[:] = labels
        stats = IntensityStats(np.uint16)
        stats.update(image)
        w.info.classes, w.info.stats, w.info.source = ["pore", "ysz", "ni"], stats.to_dict(), info
        if labelled is not None:
            w.info.labels = census(labels).to_dict()
    return path


def test_fine_tuned_from_easy_beats_scratch_on_two_slices_of_hard(tmp_path):
    easy = _synthetic_store(tmp_path / "easy.zarr", "easy", 0)
    hard = _synthetic_store(tmp_path / "hard.zarr", "hard", 3, labelled=(6, 16))
    common = ["data.train_z=[0, 20]", "data.val_z=[24, 32]", "data.patch=32", "data.val_patches=16",
              "model.kwargs={width: 8, depth: 2, norm: batch}"]
    base = fit_new(tiny_config(easy, "train.epochs=12", "data.samples_per_epoch=128", *common), tmp_path / "base")
    short = ["train.epochs=4", "data.samples_per_epoch=64", *common]  # 16 steps of 16 patches
    tuned = fit_new(tiny_config(hard, *short, f"train.init={tmp_path / 'base' / 'model.pt'}"), tmp_path / "ft")
    scratch = fit_new(tiny_config(hard, *short), tmp_path / "scratch")
    print(json.dumps({"base_on_easy": base["val_mean_dice"], "finetune": tuned["val_mean_dice"],
                      "scratch": scratch["val_mean_dice"]}))
    assert tuned["val_mean_dice"] > scratch["val_mean_dice"] + 0.05


def test_preflight_checks_the_init_model(parent, tmp_path):
    store = make_store(tmp_path / "s.zarr", shape=(29, 45, 51), seed=2)
    preflight(tiny_config(store, ARCH, f"train.init={parent}"))  # fits: nothing raised
    with pytest.raises(ModelMismatchError, match="depth=2 \\(this run: 3\\)"):
        preflight(tiny_config(store, "model.kwargs={width: 8, depth: 3, norm: group, dropout: 0.2}",
                              f"train.init={parent}"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preflight(tiny_config(store, ARCH, f"train.init={tmp_path / 'none.pt'}"))


def test_the_one_process_round_fine_tunes_with_the_parents_own_recipe(parent, tmp_path):
    """What the napari widget runs: ``fit(parent_config(model, store, ...), run_dir)``, no Ray, on a sparse store."""
    from xtrain.train.finetune import parent_config

    painted = make_store(tmp_path / "painted.zarr", shape=(29, 45, 51), seed=4, labelled=planes((29, 45, 51), "z", (5, 20)))
    cfg = parent_config(parent, painted, ["train.epochs=1", "data.samples_per_epoch=16"])
    assert cfg.train.init == str(parent.resolve()) and cfg.data.store == str(painted.resolve())
    assert cfg.model.kwargs == load_checkpoint(parent)["config"]["model"]["kwargs"]
    assert cfg.data.train_z is None and cfg.data.val_z is None
    metrics = fit_new(cfg, tmp_path / "round")
    assert metrics["epoch"] == 1 and load_checkpoint(tmp_path / "round" / "model.pt")["parent"]["sha256"] == sha256(parent)


def test_the_fine_tune_recipe_fits_a_model_of_the_dense_recipe():
    from xtrain.config import load_config

    tune, dense = load_config("configs/soc_unet_finetune_cpu.yaml"), load_config("configs/soc_unet_cpu.yaml")
    assert (tune.model, tune.data.slices, tune.data.axis) == (dense.model, dense.data.slices, dense.data.axis)
    assert tune.optim.lr < dense.optim.lr and tune.optim.warmup > 0 and tune.optim.schedule == "cosine"


# --------------------------------------------------------------------------- Ray Train and Tune


@pytest.mark.slow
def test_every_ddp_rank_starts_from_the_parent_weights(ray_cluster, parent, tmp_path):
    from xtrain.train.ray_trainer import train

    new = make_store(tmp_path / "new.zarr", shape=(29, 45, 51), seed=7)
    cfg = tiny_config(new, ARCH, "train.workers=2", "train.epochs=1", "data.samples_per_epoch=32", "optim.lr=1e-12",
                      f"train.init={parent}")
    metrics = train(cfg, tmp_path / "run")
    assert metrics["epoch"] == 1 and not metrics["stopped"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    start = load_checkpoint(parent)["model_state"]
    for k in start:  # one step at lr 1e-12 on 2 ranks: the parent's weights (GroupNorm: no running statistics)
        assert torch.allclose(ckpt["model_state"][k], start[k], atol=1e-6), k
    assert load_checkpoint(tmp_path / "run" / "model.pt")["parent"]["sha256"] == sha256(parent)


# a sweep that starts every trial from a model: tests/tune/test_tune_tracking.py (one sweep for both)
