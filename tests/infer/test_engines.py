"""Inference engines (xtrain/infer/engines.py): the eager model preparation, every engine's probabilities,
``auto`` and refusals, and segment with each engine: bit-identical across block sizes and Ray workers,
recorded, and --resume refuses another engine."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_store
from xtrain.errors import InvalidInputError, SettingsMismatchError, UnknownNameError
from xtrain.infer import open_segmentation, segment
from xtrain.infer.engines import AUTO, ENGINES, available, create_engine, inference_model, network_norm, resolve
from xtrain.models import create_model

SHAPE = (23, 45, 39)
FAST = dict(tile=32, halo=4, chunks=(8, 16, 16), shard=False, probabilities=True)
INSTALLED = [e for e in ENGINES if available(e)]
FP32 = ("eager", "compile", "onnxruntime", "openvino")  # the engines that compute in float32


def _trained_bn_unet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, width=4, depth=2, norm="batch")
    model.train()
    with torch.no_grad():  # a few batches give the BatchNorm layers non-trivial running statistics
        for _ in range(3):
            model(torch.randn(2, 1, 21, 19) * 3 + 1)
    return model


def test_inference_model_folds_batchnorm_and_computes_the_same_function():
    model = _trained_bn_unet()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = inference_model(model)
    assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not fused.training
    assert fused.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    # the caller's (live, training) model is untouched: same mode, same layers
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    x = torch.randn(3, 1, 23, 17)
    with torch.inference_mode():
        expected = model.eval()(x)
        got = fused(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == expected.shape == (3, 3, 23, 17)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_inference_model_keeps_groupnorm():
    torch.manual_seed(1)
    model = create_model("unet", in_channels=3, num_classes=3, width=8, depth=1, norm="group")
    fused = inference_model(model)
    assert sum(isinstance(m, nn.GroupNorm) for m in fused.modules()) == sum(
        isinstance(m, nn.GroupNorm) for m in model.modules()) > 0
    x = torch.randn(2, 3, 15, 13)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def _engine_input() -> tuple[nn.Module, np.ndarray]:
    model = _trained_bn_unet()
    x = np.random.default_rng(0).standard_normal((2, 1, 37, 29), dtype=np.float32)
    return model.eval(), x


@pytest.mark.parametrize("name", INSTALLED)
def test_every_engine_gives_eager_probabilities(name):
    model, x = _engine_input()
    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(x)), 1).numpy()  # the plain model, not inference_model
    engine = create_engine(name, model, in_channels=1, threads=1)
    got = engine(x)
    assert got.shape == (2, 3, 37, 29) and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
    # float32 engines agree to rounding; bf16 keeps 8 mantissa bits (relative error ~ 2**-8 per op)
    np.testing.assert_allclose(got, want, atol=1e-5 if name in FP32 else 0.05)
    assert np.array_equal(engine(x), got)  # a fixed function of a fixed-shape batch


def test_resolve_refuses_unknown_and_gpu_less_engines():
    with pytest.raises(UnknownNameError, match="did you mean 'openvino'"):
        resolve("openvin")
    for norm in ("batch", "group", None):
        assert resolve("auto", norm=norm) == next(e for e in (*AUTO.get(norm, ()), "eager") if available(e))
    assert resolve("auto", "cuda", "batch") == "eager"
    assert network_norm(_trained_bn_unet()) == "batch"
    assert network_norm(create_model("pix2pix", width=4, depth=2, norm="group")) == "group"  # the generator's
    with pytest.raises(InvalidInputError, match="no GPU build"):
        resolve("openvino", "cuda")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("engines")
    return {"model": tiny_model, "store": make_store(root / "vol.zarr", SHAPE, seed=5)}


def _arrays(path):
    g = open_segmentation(path)
    return g.labels[:], g.probabilities[:]


@pytest.mark.slow
@pytest.mark.parametrize("name", [e for e in INSTALLED if e != "eager"])
def test_segment_with_an_engine_is_bit_identical_across_blocks_and_recorded(data, tmp_path, name, caplog):
    with caplog.at_level(logging.INFO, logger="xtrain.infer.segmentation"):
        small = segment(data["model"], data["store"], tmp_path / "small.zarr", block=(8, 16, 16), threads=1,
                        engine=name, **FAST)
    assert f"engine: {name}" in caplog.text
    whole = segment(data["model"], data["store"], tmp_path / "whole.zarr", block=SHAPE, threads=1, engine=name,
                    **FAST)
    (la, pa), (lb, pb) = _arrays(small), _arrays(whole)
    assert np.array_equal(la, lb) and np.array_equal(pa, pb)
    eager_labels, eager_probs = _arrays(segment(data["model"], data["store"], tmp_path / "eager.zarr", block=SHAPE,
                                                threads=1, **FAST))
    assert (la == eager_labels).mean() > (0.999 if name in FP32 else 0.98)
    if name in FP32:
        np.testing.assert_allclose(pa, eager_probs, atol=1e-3)  # stored as float16: one ulp is 2.4e-4 at 0.3
    assert open_segmentation(small).info.source["settings"]["engine"] == name


@pytest.mark.slow
# one exported engine (ONNX Runtime; OpenVINO reads the same ONNX file and is built the same way on a worker)
# and one torch engine: each Ray worker start costs ~20 s of the suite
@pytest.mark.parametrize("name", [e for e in ("onnxruntime", "bf16") if e in INSTALLED])
def test_ray_workers_give_the_in_process_bits_with_an_engine(data, tmp_path, name, ray_cluster):
    one = segment(data["model"], data["store"], tmp_path / "one.zarr", block=(8, 16, 16), threads=1, engine=name,
                  **FAST)
    two = segment(data["model"], data["store"], tmp_path / "two.zarr", block=(8, 16, 16), threads=1, workers=2,
                  engine=name, **FAST)
    (la, pa), (lb, pb) = _arrays(one), _arrays(two)
    assert np.array_equal(la, lb) and np.array_equal(pa, pb)


def test_auto_is_logged_and_resume_refuses_another_engine(data, tmp_path, caplog):
    out = tmp_path / "seg.zarr"
    with caplog.at_level(logging.INFO, logger="xtrain.infer.segmentation"):
        segment(data["model"], data["store"], out, threads=1, engine="auto", **FAST)
    from xtrain.models.checkpoint import load_checkpoint, model_from_checkpoint

    chosen = resolve("auto", norm=network_norm(model_from_checkpoint(load_checkpoint(data["model"]), data["model"])[0]))
    assert f"engine: {chosen} (auto)" in caplog.text
    assert open_segmentation(out).info.source["settings"]["engine"] == chosen
    other = "bf16" if chosen != "bf16" else "eager"
    with pytest.raises(SettingsMismatchError, match="engine"):
        segment(data["model"], data["store"], out, threads=1, engine=other, resume=True, **FAST)
    segment(data["model"], data["store"], out, threads=1, engine="auto", resume=True, **FAST)  # auto keeps it


@pytest.mark.parametrize("case", ["unknown engine", "gpu without cuda"])
def test_segment_refuses_in_one_line_exit_2(data, tmp_path, capsys, case):
    from xtrain.cli import main

    if case == "gpu without cuda" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    extra = ["--engine", "openvin"] if case == "unknown engine" else ["--gpu", "--workers", "1"]
    out = tmp_path / "out.zarr"
    assert main(["segment", str(data["model"]), str(data["store"]), str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtrain segment: error:") and "\n" not in err, err
    assert ("did you mean 'openvino'" if case == "unknown engine" else "no CUDA device") in err
    assert not out.exists()
