"""The exported function (Segmenter) and its graphs: normalise -> network -> softmax, BatchNorm folded, any Y, X."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xtrain.data.normalise import normalize
from xtrain.models import create_model, model_kwargs
from xtrain.models.export import build_segmenter, onnx_bytes, torchscript_bytes
from xtrain.models.fold import fold_batchnorm

STATS = {"p0_5": 1000.0, "p99_5": 3000.0}
pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like(norm: str) -> tuple[torch.nn.Module, dict]:
    """A U-Net with non-trivial BatchNorm statistics (as after training) and its checkpoint dict."""
    torch.manual_seed(0)
    kwargs = model_kwargs("unet", in_channels=3, width=4, depth=2, norm=norm)
    net = create_model("unet", **kwargs).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, 32, 32) * 2 + 0.5)  # running statistics move away from (0, 1)
    return net.eval(), {"model_name": "unet", "model_kwargs": kwargs, "stats": STATS}


def test_segmenter_is_normalise_network_softmax():
    net, ckpt = trained_like("batch")
    raw = torch.rand(2, 3, 37, 29) * 4000
    with torch.inference_mode():
        want = torch.softmax(net(torch.from_numpy(normalize(raw.numpy(), STATS))), 1)
        seg = build_segmenter(net, ckpt, normalise=True)
        torch.testing.assert_close(seg(raw), want, atol=0, rtol=0)  # the same float32 ops as normalize
        plain = build_segmenter(net, ckpt, normalise=False)
        torch.testing.assert_close(plain(torch.from_numpy(normalize(raw.numpy(), STATS))), want, atol=0, rtol=0)


def test_fold_batchnorm_removes_batchnorm_and_keeps_the_function():
    net, _ = trained_like("batch")
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the caller's model is left alone
    x = torch.randn(2, 3, 21, 34)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_onnx_and_torchscript_graphs_have_free_batch_y_x(norm, tmp_path):
    import onnxruntime as ort

    net, ckpt = trained_like(norm)
    seg = build_segmenter(net, ckpt, normalise=True)
    session = ort.InferenceSession(onnx_bytes(seg, in_channels=3, min_size=4))
    (tmp_path / "m.pt").write_bytes(torchscript_bytes(seg, {}))
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    for shape in [(1, 3, 37, 29), (3, 3, 64, 20)]:  # sizes the exporter never saw, odd and even
        raw = (np.random.default_rng(1).random(shape) * 4000).astype(np.float32)
        with torch.inference_mode():
            want = seg(torch.from_numpy(raw)).numpy()
            np.testing.assert_allclose(scripted(torch.from_numpy(raw)).numpy(), want, atol=1e-5)
        np.testing.assert_allclose(session.run(None, {"raw": raw})[0], want, atol=1e-5)
