"""Inference engines: one trained network, several runtimes, behind one call.

    engine = create_engine("openvino", network)       # after torch.set_num_threads(threads)
    probs = engine(x)      # x: (B, C, U, V) float32 normalised -> (B, K, U, V) float32 softmax probabilities

    eager        PyTorch fp32, channels_last, BatchNorm folded (``inference_model``): the reference
    compile      ``torch.compile`` (inductor) of the same module
    bf16         the same module under ``torch.autocast(bfloat16)`` (AVX-512 BF16 / AMX on a CPU, tensor
                 cores on a GPU); the softmax in float32
    onnxruntime  network + softmax exported to ONNX (``xtrain.models.export.onnx_bytes``), ONNX Runtime
                 (its CUDA provider on a GPU when onnxruntime-gpu is installed)
    openvino     the same ONNX graph, OpenVINO's CPU plugin at f32 inference precision
    openvino-bf16  the same at bf16 inference precision (OpenVINO's own default on an AVX-512 BF16 or AMX CPU)

Optional packages are imported only when their engine is created; ``available(name)`` says whether
it can be.  Each engine is a fixed function of a batch of fixed shape for a fixed thread count (torch's
threads, which ONNX Runtime and OpenVINO are given too), so ``predict.py``'s rules (global tiles,
fixed batch size, recorded threads) keep the output bit-identical across block sizes and worker
counts for every engine.  The engine changes the output bits, so ``segment`` records it with the
settings (job.json, the output's attributes) and ``--resume`` refuses another one.

``auto`` (``resolve``): the fastest engine that keeps at least 99.99 % of the voxel labels of eager
fp32 on the real volume, when its package is installed, else eager; decided per normalisation layer
(``AUTO``), because the engines rank differently for BatchNorm (folded into the convolutions) and
GroupNorm.  Measured with ``bench/engines.py`` on this project's machine (2 cores of an AMD EPYC with
AVX-512 BF16, shared, load average 1-5; U-Net width 16 depth 4, segment's 501 x 501 tiles of the real
volume at batch 1; median of 5 and of 7 interleaved rounds, two runs; matmul 2 threads: fp32 ~200,
bf16 ~820 GFLOP/s; the model: 92.0 kFLOP per voxel):

    vs eager (run 1/run 2)  compile    bf16       onnxruntime  openvino   openvino-bf16  eager Mvox/s
    GroupNorm               0.99/0.93  2.43/2.44  1.12/1.04    0.86/0.72  2.43/2.13      1.70/1.65
    BatchNorm               0.95/1.10  1.99/2.04  1.37/1.41    1.72/1.77  3.43/3.51      1.92/1.79

    labels = eager fp32, the trained CPU recipe model (GroupNorm, trained on soc.zarr) on 24 planes
    of the real volume through Predictor: compile, onnxruntime, openvino 0.999999;
    bf16 0.999810, openvino-bf16 0.999794 (below 99.99 %: bf16 is never chosen by auto).

    python bench/engines.py --model runs/soc/model.pt --data soc.zarr
    python bench/engines.py --data soc.zarr --rounds 7

Decision (``fastest_<norm>`` of bench/engines.py: the engine that segments the real volume, 250 planes
of 501^2 = 62.7 Mvox, soonest in one worker, setup (ONNX export, compilation, first call) + voxels /
rate, among those keeping >= 99.99 %): BatchNorm -> openvino (1.7x, fp32 kernels, labels at rounding
level: 0.999976 of a random-weight model's on the timing tiles; 22.0 / 24.9 s vs eager's 33.5 / 35.4 s);
GroupNorm -> eager: onnxruntime's 1.04-1.12x is inside the round-to-round spread on this shared machine
and does not pay back its ONNX export (4.8 / 5.4 s per worker): 37.7 / 41.9 s vs eager's 37.0 / 38.2 s.  fp32 eager runs at ~0.8 of the fp32 matmul
rate (152-177 GFLOP/s of direct-convolution FLOPs); openvino's BatchNorm figure is above the matmul
limit (1.45), so its 3x3 convolutions do fewer FLOPs (Winograd).  bf16 doubles the speed, at 99.98 %
of the labels: ask for it with ``--engine bf16`` where that is good enough.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, UnknownNameError
from ..models.fold import fold_batchnorm

log = logging.getLogger(__name__)

ENGINES = ("eager", "compile", "bf16", "onnxruntime", "openvino", "openvino-bf16")
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}  # engine -> the package it needs
GPU_ENGINES = ("eager", "compile", "bf16", "onnxruntime")  # OpenVINO has no NVIDIA GPU plugin
# The engines ``auto`` tries in order per norm layer of the U-Net, the first available one wins, else eager (CPU;
# a GPU runs eager; a network without a norm, the MLP, was not measured: eager).  See the module docstring.
AUTO: dict[str, tuple[str, ...]] = {"batch": ("openvino", "onnxruntime"), "group": ()}
AGREEMENT = 0.9999  # the share of eager fp32's voxel labels an engine must keep to be chosen by auto


def available(name: str) -> bool:
    """Whether engine ``name`` can be created here (its optional package is installed)."""
    return name in ENGINES and (name not in PACKAGES or find_spec(PACKAGES[name]) is not None)


def resolve(name: str, device: str | torch.device = "cpu", norm: str | None = None) -> str:
    """The concrete engine for ``name``: ``auto`` -> the first available of ``AUTO[norm]`` (``norm``:
    the U-Net's ``norm`` keyword) on a CPU, eager on a GPU; any other name checked
    (``UnknownNameError``; ``InvalidInputError`` when its package is missing or it has no build for
    ``device``)."""
    gpu = torch.device(device).type == "cuda"
    if name == "auto":
        return "eager" if gpu else next(e for e in (*AUTO.get(norm or "", ()), "eager") if available(e))
    if name not in ENGINES:
        raise UnknownNameError("engine", name, (*ENGINES, "auto"))
    if not available(name):
        raise InvalidInputError(f"engine '{name}' needs the package '{PACKAGES[name]}', which is not installed; "
                                f"pip install {PACKAGES[name]} or choose --engine eager")
    if gpu and name not in GPU_ENGINES:
        raise InvalidInputError(f"engine '{name}' has no GPU build; with --gpu use one of {', '.join(GPU_ENGINES)}")
    return name


def inference_model(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``model`` for prediction: eval mode, every Conv2d -> BatchNorm2d pair inside
    an ``nn.Sequential`` folded into one convolution (``xtrain.models.fold.fold_batchnorm``;
    the same function of the input up to float rounding, about 1e-7), in ``channels_last``
    memory format.  The caller's model is left as it was (training validates a live model).

    Why: on 2 CPU cores a width-16 depth-4 U-Net on (4, 1, 256, 256) batches runs at
    0.61 Mvox/s as is, 0.87 in channels_last and 0.97 with BatchNorm folded in as well
    (oneDNN's NHWC convolutions skip a reorder per layer).  Training stays in the default
    format: there channels_last was slower (GroupNorm, 128^2 patches: 12.0 vs 16.3 patches/s).
    """
    return fold_batchnorm(model).to(device=device, memory_format=torch.channels_last)


class Engine:
    """``engine(x)``: (B, C, U, V) float32 normalised numpy -> (B, K, U, V) float32 probabilities."""

    name = "base"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchEngine(Engine):
    """eager / compile / bf16: the folded channels_last module, optionally compiled or autocast."""

    def __init__(self, name: str, model: nn.Module, device: torch.device):
        self.name, self.device = name, device
        module = inference_model(model, device)
        self.module: Callable[[torch.Tensor], torch.Tensor] = torch.compile(module, dynamic=False) if name == "compile" else module
        self.bf16 = name == "bf16"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.module(t)
        return torch.softmax(logits.float(), dim=1).contiguous().cpu().numpy()  # back to (B, K, U, V) row-major


def _onnx_model(model: nn.Module, in_channels: int) -> bytes:
    """The network (a Pix2Pix's generator) + softmax as ONNX: normalised inputs, batch/Y/X dynamic."""
    from ..models.export import Segmenter, multiple, onnx_bytes
    from ..models.pix2pix import Pix2Pix

    net = model.generator if isinstance(model, Pix2Pix) else model
    return onnx_bytes(Segmenter(net=net), in_channels, multiple(model), input_name="x")


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime, one session, ``threads`` intra-op threads, sequential execution."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module, in_channels: int, device: torch.device, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise InvalidInputError("engine 'onnxruntime' on a GPU needs onnxruntime-gpu (CUDAExecutionProvider); "
                                        "install it or choose --engine eager or bf16")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(_onnx_model(model, in_channels), options, providers=providers)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]


class OpenVinoEngine(Engine):
    """OpenVINO CPU plugin at ``precision`` (f32 or bf16), ``threads`` inference threads, one stream; one
    compiled model per input shape (static shapes compile to faster kernels than a dynamic one)."""

    def __init__(self, model: nn.Module, in_channels: int, threads: int, precision: str = "f32"):
        import openvino as ov

        self.name = "openvino" if precision == "f32" else f"openvino-{precision}"
        self.core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:  # OpenVINO reads an ONNX model from a file
            path = Path(tmp) / "model.onnx"
            path.write_bytes(_onnx_model(model, in_channels))
            self.model = self.core.read_model(str(path))
        self.config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1,
                       "PERFORMANCE_HINT": "LATENCY"}
        self.compiled: dict[tuple[int, ...], object] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        shape = tuple(x.shape)
        if shape not in self.compiled:
            static = self.model.clone()
            static.reshape({0: list(shape)})
            self.compiled[shape] = self.core.compile_model(static, "CPU", self.config)
        request = self.compiled[shape]
        return np.asarray(request(np.ascontiguousarray(x, np.float32))[0])


def network_norm(model: nn.Module) -> str | None:
    """The norm layer of a U-Net (a Pix2Pix's generator): "batch", "group", or None (no norm layer)."""
    kinds = {type(m) for m in getattr(model, "generator", model).modules()}
    return "batch" if nn.BatchNorm2d in kinds else "group" if nn.GroupNorm in kinds else None


def create_engine(name: str, model: nn.Module, *, in_channels: int | None = None,
                  device: str | torch.device = "cpu", threads: int | None = None) -> Engine:
    """Engine ``name`` (a concrete one or ``auto``, see ``resolve``) running ``model`` (left as it is)
    on ``device`` with ``threads`` threads (default: torch's current count)."""
    device = torch.device(device)
    name = resolve(name, device, network_norm(model))
    threads = threads or torch.get_num_threads()
    in_channels = in_channels or int(getattr(model, "in_channels", 1))
    if name in ("eager", "compile", "bf16"):
        return TorchEngine(name, model, device)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(model, in_channels, device, threads)
    return OpenVinoEngine(model, in_channels, threads, "bf16" if name == "openvino-bf16" else "f32")
