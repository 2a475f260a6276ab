"""xtrain export (xtrain.pipelines.export): a bioimage.io package that bioimage.io's own test passes, ONNX /
TorchScript that label a real-sized plane exactly as `xtrain segment` does, Pix2Pix and MLP exports, one-line
refusals."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import make_store
from xtrain.cli import main
from xtrain.data.normalise import normalize
from xtrain.data.store import open_store
from xtrain.models import create_model, model_kwargs
from xtrain.models.export import UNET_CITE
from xtrain.pipelines.export import SOC_PXCT, training_data
from xtrain.models.checkpoint import load_checkpoint, save_checkpoint

STATS = {"p0_5": 1000.0, "p99_5": 3000.0}


def export(*args):
    return main(["export", *map(str, args)])


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_sha256(folder):
    """Independently of xtrain.provenance: each file's relative name, size and content hash, sorted by name."""
    h = hashlib.sha256()
    for name, f in sorted((str(f.relative_to(folder.parent)), f) for f in folder.rglob("*") if f.is_file()):
        h.update(f"{name}\0{f.stat().st_size}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def check_provenance(meta, model, argv):
    """The record of ``xtrain.provenance.provenance`` with the source model's sha256 and the command."""
    rec = meta["provenance"]
    assert {"command", "xtrain_version", "git_commit", "host", "started", "ended", "inputs", "models"} <= set(rec)
    assert rec["models"]["model"]["sha256"] == meta["model_sha256"] == sha256(model)
    assert shlex.split(rec["command"])[-len(argv):] == argv and rec["started"] <= rec["ended"]
    return rec


def random_checkpoint(path, name, **kwargs):
    """model.pt of an untrained ``name`` network (export only needs weights, statistics and classes)."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    save_checkpoint({"format": 1, "kind": "model", "model_name": name, "model_kwargs": model_kwargs(name, **kwargs),
                     "model_state": model.state_dict(), "stats": STATS, "classes": ["pore", "ysz", "ni"]}, path)
    return model.eval()


@pytest.mark.slow
def test_bioimageio_package_passes_bioimageio_core_test(tiny_model, tmp_path, monkeypatch):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description

    out = tmp_path / "tiny.zip"
    argv = ["export", str(tiny_model), str(out), "--format", "bioimageio", "--author", "A. Tester"]
    monkeypatch.setattr(sys, "argv", ["xtrain", *argv])
    assert main(argv) == 0
    summary = test_model(out)  # runs every weight format on the test input and compares with the test output
    assert summary.status == "passed", summary.format()
    tested = {d.loc[1] for d in summary.details if d.loc[:1] == ("weights",) and d.status == "passed"}
    assert tested == {"pytorch_state_dict", "torchscript", "onnx"}

    ckpt = load_checkpoint(tiny_model)
    descr = load_model_description(out)
    lo, hi = ckpt["stats"]["p0_5"], ckpt["stats"]["p99_5"]
    ensure, scale = descr.inputs[0].preprocessing[:2]  # the spec appends an ensure_dtype of its own
    assert ensure.kwargs.dtype == "float32"
    assert scale.kwargs.gain == pytest.approx(1 / (hi - lo)) and scale.kwargs.offset == pytest.approx(-lo / (hi - lo))
    assert [a.id for a in descr.inputs[0].axes] == ["batch", "channel", "y", "x"]
    assert descr.inputs[0].axes[1].channel_names == ["slice-1", "slice", "slice+1"]  # the 2.5D model's 3 slices
    assert descr.outputs[0].axes[1].channel_names == ckpt["classes"]
    assert str(descr.cite[0].doi) == UNET_CITE["doi"] and descr.covers and descr.authors[0].name == "A. Tester"
    assert descr.config.xtrain["normalisation"]["p0_5"] == lo
    rec = check_provenance(descr.config.xtrain, tiny_model, argv)
    store = tiny_model.parents[1] / "train.zarr"  # the sample: the training store the test input is cut from
    assert rec["inputs"]["sample"]["sha256"] == folder_sha256(store)
    names = zipfile.ZipFile(out).namelist()
    assert {"rdf.yaml", "cover.png", "test_input.npy", "model.onnx", "README.md"} <= set(names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_training_data_cites_the_real_volume_when_trained_on_it(tiny_model, tmp_path):
    import tifffile

    from xtrain.data.ingest import ingest

    ckpt = load_checkpoint(tiny_model)
    found = training_data(ckpt)
    assert found["cite"] is None and "test" in found["description"]  # a synthetic test store: nothing to cite
    (tmp_path / "images").mkdir()
    for i in range(1, 4):  # the real volume's slice names
        tifffile.imwrite(tmp_path / "images" / f"SOCprist{i:04d}.tiff", np.full((7, 5), i, np.uint16))
    ingest(tmp_path / "images", tmp_path / "soc.zarr")
    ckpt["config"]["data"]["store"] = str(tmp_path / "soc.zarr")
    assert training_data(ckpt) == SOC_PXCT
    assert "magn2998/XraySegmentation" in SOC_PXCT["cite"]["url"]
    ckpt["config"]["data"]["store"] = str(tmp_path / "gone.zarr")
    assert "not found" in training_data(ckpt)["description"]


@pytest.mark.slow
def test_onnx_and_torchscript_label_a_501_plane_as_segment_does(tiny_model, tmp_path):
    import onnx
    import onnxruntime as ort

    from xtrain.infer import open_segmentation, segment

    store = make_store(tmp_path / "plane.zarr", shape=(5, 501, 501), seed=3)
    segment(tiny_model, store, tmp_path / "seg.zarr", normalisation="train")  # one 501^2 tile per plane
    labels = open_segmentation(tmp_path / "seg.zarr").labels[2]  # (501, 501)
    raw = open_store(store).image[1:4].astype(np.float32)[None]  # (1, 3, 501, 501): slices z-1, z, z+1

    assert export(tiny_model, tmp_path / "m.onnx", "--format", "onnx") == 0
    probs = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"raw": raw})[0]
    assert probs.shape == (1, 3, 501, 501)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)  # the softmax is inside the graph
    assert np.array_equal(probs[0].argmax(0), labels)
    meta = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}["xtrain"])
    assert meta["normalisation"]["inside_graph"] and meta["classes"] == ["pore", "ysz", "ni"]

    assert export(tiny_model, tmp_path / "m.pt", "--format", "torchscript") == 0
    files = {"xtrain.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    with torch.inference_mode():
        probs = scripted(torch.from_numpy(raw)).numpy()
    assert np.array_equal(probs[0].argmax(0), labels)
    ts_meta = json.loads(files["xtrain.json"])
    assert ts_meta.pop("provenance")["models"] == meta.pop("provenance")["models"]  # each export its own times
    assert ts_meta == meta


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_files_carry_the_provenance_record(tmp_path, monkeypatch, fmt):
    import onnx

    random_checkpoint(tmp_path / "m.pt", "unet", width=4, depth=2)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m-ts.pt")
    argv = ["export", str(tmp_path / "m.pt"), str(out), "--format", fmt]
    monkeypatch.setattr(sys, "argv", ["xtrain", *argv])
    assert main(argv) == 0
    if fmt == "onnx":
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["xtrain"])
    else:
        files = {"xtrain.json": ""}
        torch.jit.load(str(out), _extra_files=files)
        meta = json.loads(files["xtrain.json"])
    rec = check_provenance(meta, tmp_path / "m.pt", argv)
    assert rec["inputs"] == {} and rec["models"]["model"]["path"] == str((tmp_path / "m.pt").resolve())


def test_pix2pix_exports_its_generator(tmp_path):
    model = random_checkpoint(tmp_path / "p2p.pt", "pix2pix", in_channels=1, width=4, depth=2)
    assert export(tmp_path / "p2p.pt", tmp_path / "g.pt", "--format", "torchscript") == 0
    scripted = torch.jit.load(str(tmp_path / "g.pt"))
    raw = torch.rand(2, 1, 37, 29) * 4000
    x = torch.from_numpy(normalize(raw.numpy(), STATS))
    with torch.inference_mode():
        torch.testing.assert_close(scripted(raw), torch.softmax(model.generator(x), 1), atol=1e-6, rtol=1e-5)
    assert not any(k.startswith("discriminator") for k in scripted.state_dict())


def test_mlp_exports(tmp_path):
    model = random_checkpoint(tmp_path / "mlp.pt", "mlp", in_channels=1, patch=8, hidden=16)
    assert export(tmp_path / "mlp.pt", tmp_path / "mlp-ts.pt", "--format", "torchscript") == 0
    scripted = torch.jit.load(str(tmp_path / "mlp-ts.pt"))
    raw = torch.rand(2, 1, 20, 13) * 4000
    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(normalize(raw.numpy(), STATS))), 1)
        torch.testing.assert_close(scripted(raw), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", ["missing model", "existing out", "unknown format", "suffix", "license"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    random_checkpoint(tmp_path / "m.pt", "unet", width=4, depth=2)
    out = tmp_path / "out.onnx"
    args = [tmp_path / "m.pt", out, "--format", "onnx"]
    if case == "missing model":
        args[0] = tmp_path / "nope.pt"
    elif case == "existing out":
        out.write_text("keep me")
    elif case == "unknown format":
        args[-1] = "onx"
    elif case == "suffix":
        args[-1] = "torchscript"
    else:
        args = [tmp_path / "m.pt", tmp_path / "p.zip", "--format", "bioimageio", "--license", "free-for-all"]
    assert export(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("xtrain export: error:")
    want = {"missing model": "nope.pt", "existing out": "--overwrite", "unknown format": "did you mean 'onnx'",
            "suffix": "must end in", "license": "free-for-all"}[case]
    assert want in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.pt"] + (["out.onnx"] if case == "existing out"
                                                                             else []))
    if case == "existing out":
        assert out.read_text() == "keep me"
