"""Export a trained network for use without xtrain: TorchScript, ONNX, or a bioimage.io package.

    seg = build_segmenter(network, ckpt, normalise=True)    # network: the model.pt's, with weights
    onnx_bytes(seg, in_channels=3, min_size=16, meta=metadata(ckpt, network, sha256, normalised=True))
    xtrain export runs/unet/model.pt soc-unet.zip --format bioimageio --sample soc.zarr   (xtrain.pipelines.export)

What each format holds (the exported function is ``Segmenter``; Pix2Pix exports its generator, a
plain U-Net; the MLP exports as it is):

* ``torchscript`` / ``onnx`` alone: **the normalisation and the softmax are inside the graph.**
  Input ``raw`` (B, C, Y, X) float32 raw intensities, the C = in_channels consecutive slices of
  the volume along the slicing axis with the predicted slice in the middle (segment mirrors the
  volume at its border: slice -1 is slice 1); the graph computes
  x_norm = (x - p0_5) * (1 / (p99_5 - p0_5)) with the training statistics (``xtrain.data.normalise.normalize``,
  float32 in the same order, so bit-identical to xtrain's), the network, and a softmax over
  classes.  Output ``probabilities`` (B, K, Y, X) float32; labels = argmax over K.  Y and X are
  free (at least ``multiple``: the U-Net pads them to a multiple of 2**depth itself).  The same
  facts as JSON (``metadata``): ONNX ``metadata_props["xtrain"]``, TorchScript extra file
  ``xtrain.json``.
* ``bioimageio``: a model package to the bioimage.io spec 0.5 (``bioimageio.spec``'s own model
  classes), a .zip (or a folder for an OUT without suffix): the normalisation as
  ``scale_linear`` preprocessing (gain 1/(p99_5 - p0_5), offset -p0_5/(p99_5 - p0_5), after
  ``ensure_dtype`` float32), the weights as TorchScript and ONNX (network + softmax, no
  normalisation) and as the state dict with its architecture ``xtrain.models.export.Segmenter``
  (needs xtrain installed), the class names as output channel names, a test input (a tile of
  ``sample``) and its output, a cover image, citations of the network and the training data, and
  the same ``metadata`` under ``config.xtrain``.  ``bioimageio.core.test_model`` on the package
  runs every weight format on the test input and compares with the test output.

Provenance: ``metadata["provenance"]`` is the export's ``xtrain.provenance.provenance`` record (the
command line, xtrain version and git commit, host, start and end times, the source model.pt's sha256
and, for bioimage.io, the sample volume's checksum), so it is in ONNX ``metadata_props["xtrain"]``,
TorchScript's ``xtrain.json`` and the package's ``config.xtrain.provenance``.  The weights inside the
TorchScript and ONNX files have their own sha256 in the package's rdf.yaml (bioimage.io's own field).

Everything is written to a temporary sibling of OUT and renamed into place at the end: an error
or a full disk leaves no partial OUT.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch import nn

from .. import __version__
from ..errors import InvalidInputError, UnknownNameError
from ..io import remove_path, replace_into_place
from .fold import fold_batchnorm
from .mlp import PatchMLP
from .pix2pix import Pix2Pix
from .registry import create_model, num_parameters
from .unet import UNet

log = logging.getLogger(__name__)

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pts", ".torchscript"), "bioimageio": (".zip", "")}
# How far a re-run of the test tensors may drift (bioimage.io ReproducibilityTolerance): float32
# probabilities from other kernels (ONNX Runtime, oneDNN, a GPU) differ by ~1e-7 here.
TOLERANCE = 1e-4

# Citations (bioimage.io CiteEntry: text + DOI or URL)
UNET_CITE = {"text": "Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional networks for biomedical "
                     "image segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}
PIX2PIX_CITE = {"text": "Isola P., Zhu J.-Y., Zhou T., Efros A. A. (2017) Image-to-image translation with "
                        "conditional adversarial networks. CVPR 2017.", "doi": "10.1109/CVPR.2017.632"}


# ----------------------------------------------------------------------------- the exported function


class Segmenter(nn.Module):
    """(B, C, Y, X) float32 -> (B, K, Y, X) class probabilities: [normalise ->] network -> softmax.

    ``model_name``/``model_kwargs``: the network (``create_model``); ``p0_5``/``p99_5``: when
    given, the input is raw intensities normalised first as x_norm = (x - p0_5) * (1 / (p99_5 -
    p0_5)) in float32 (``xtrain.data.normalise.normalize``).  The constants are buffers outside the
    state dict, so ``state_dict()`` is the network's under ``net.`` (bioimage.io's architecture
    callable: ``Segmenter(model_name, model_kwargs)`` loads it).  ``net``: wrap this network instead
    of building one (its weights are shared, not copied).
    """

    def __init__(self, model_name: str = "unet", model_kwargs: dict[str, Any] | None = None,
                 p0_5: float | None = None, p99_5: float | None = None, *, net: nn.Module | None = None):
        super().__init__()
        self.net = net if net is not None else create_model(model_name, **(model_kwargs or {}))
        self.normalise = p0_5 is not None and p99_5 is not None
        lo = float(p0_5) if self.normalise else 0.0
        hi = float(p99_5) if self.normalise else 1.0
        scale = 1.0 / (hi - lo) if hi > lo else 1.0  # as normalize: float64, then float32
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = (x - self.lo) * self.scale
        return torch.softmax(self.net(x), dim=1)


def segmenter_spec(network: nn.Module, ckpt: dict[str, Any]) -> tuple[str, dict[str, Any], nn.Module]:
    """(model name, keyword arguments, network) of what is exported: a Pix2Pix's generator is a
    plain U-Net; a U-Net and the MLP are exported as they are."""
    name, kwargs = ckpt["model_name"], dict(ckpt.get("model_kwargs") or {})
    if isinstance(network, Pix2Pix):
        unet = set(UNet.__init__.__code__.co_varnames[1:UNet.__init__.__code__.co_argcount])
        return "unet", {k: v for k, v in kwargs.items() if k in unet}, network.generator
    if isinstance(network, (UNet, PatchMLP)):
        return name, kwargs, network
    raise InvalidInputError(f"model '{name}' ({type(network).__name__}) cannot be exported; export a unet, pix2pix "
                            "or mlp model")


def build_segmenter(network: nn.Module, ckpt: dict[str, Any], normalise: bool) -> Segmenter:
    """The ``Segmenter`` of a trained network (its weights copied; the network is left as it is)."""
    name, kwargs, net = segmenter_spec(network, ckpt)
    stats = ckpt.get("stats") or {}
    seg = Segmenter(name, kwargs, stats.get("p0_5") if normalise else None, stats.get("p99_5") if normalise else None)
    seg.net.load_state_dict(net.state_dict())
    return seg.eval()


def multiple(network: nn.Module) -> int:
    """The input edge the network works in: the U-Net pads Y, X to multiples of 2**depth, the MLP
    to multiples of its patch; inputs smaller than one multiple are not exported."""
    net = network.generator if isinstance(network, Pix2Pix) else network
    return int(net.patch) if isinstance(net, PatchMLP) else int(net.multiple)


def metadata(ckpt: dict[str, Any], network: nn.Module, model_sha256: str | None, normalised: bool,
             training_data: str | None = None, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an exported file says about itself (JSON-serialisable); ``provenance``: the export's record
    (``xtrain.provenance.provenance``: command, version and commit, host, times, the source model's and
    the sample's sha256), kept as it is under ``"provenance"``."""
    name, kwargs, _ = segmenter_spec(network, ckpt)
    c = int(kwargs.get("in_channels", 1))
    stats = ckpt.get("stats") or {}
    lo, hi = float(stats["p0_5"]), float(stats["p99_5"])
    norm = f"x_norm = (x - {lo:.9g}) / ({hi:.9g} - {lo:.9g})"
    return {
        "xtrain_version": __version__, "model_name": ckpt["model_name"], "exported_as": name, "model_kwargs": kwargs,
        "model_sha256": model_sha256, "classes": list(ckpt.get("classes") or []), "in_channels": c,
        "axes": "bcyx", "min_size": multiple(network),
        "channels": f"{c} consecutive slices along the slicing axis, the predicted slice in the middle"
                    + (" (mirrored at the volume border: slice -1 is slice 1)" if c > 1 else ""),
        "input": ("raw intensities, float32; normalised inside the graph: " if normalised else
                  "normalised intensities, float32: ") + norm,
        "normalisation": {"p0_5": lo, "p99_5": hi, "from": "the training data's statistics (model.pt 'stats')",
                          "inside_graph": normalised},
        "output": "softmax class probabilities (B, K, Y, X) float32, inside the graph; labels = argmax over K",
        "training_data": training_data, "provenance": provenance,
    }


# ----------------------------------------------------------------------------- the formats


def torchscript_bytes(seg: Segmenter, meta: dict[str, Any]) -> bytes:
    """``torch.jit.script`` of ``seg`` (BatchNorm folded) with ``meta`` as the extra file xtrain.json."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is bioimage.io's and Fiji's format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(fold_batchnorm(seg)), buffer, _extra_files={"xtrain.json": json.dumps(meta)})
    return buffer.getvalue()


def onnx_bytes(seg: Segmenter, in_channels: int, min_size: int, meta: dict[str, Any] | None = None,
               input_name: str = "raw") -> bytes:
    """ONNX of ``seg`` (BatchNorm folded; torch.export-based exporter) with batch, Y and X dynamic
    (Y, X >= ``min_size``); ``meta`` as ``metadata_props["xtrain"]``."""
    from torch.export import Dim

    size = 4 * max(min_size, 16)
    example = torch.zeros(2, in_channels, size, size)
    dims = {0: Dim("batch"), 2: Dim("height", min=min_size), 3: Dim("width", min=min_size)}
    with _quiet_exporter():
        program = torch.onnx.export(fold_batchnorm(seg), (example,), dynamo=True, input_names=[input_name],
                                    output_names=["probabilities"], dynamic_shapes={"x": dims}, verbose=False)
    proto = program.model_proto
    if meta is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "xtrain", json.dumps(meta)
    return proto.SerializeToString()


class _quiet_exporter:
    """torch.onnx's exporter logs each step and warns about torchvision at WARNING: keep them at debug."""

    NAMES = ("torch.onnx", "torch.export", "torch._export", "onnx_ir", "onnxscript")

    def __enter__(self):
        self.levels = {n: logging.getLogger(n).level for n in self.NAMES}
        for n in self.NAMES:
            logging.getLogger(n).setLevel(logging.ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecations (LeafSpec), not ours

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        for n, level in self.levels.items():
            logging.getLogger(n).setLevel(level)


# ----------------------------------------------------------------------------- bioimage.io


def _cover(x: np.ndarray, probs: np.ndarray, colours: list[tuple[int, ...]], path: Path) -> None:
    """A 2:1 PNG: the test input's centre slice (normalised grey) beside its predicted labels
    (``colours``: RGB(A) 0-255 per class)."""
    from matplotlib.image import imsave

    grey = np.clip(x[0, x.shape[1] // 2], 0.0, 1.0)
    labels = probs[0].argmax(0)
    rgb = np.asarray(colours, np.float32)[:, :3] / 255.0
    imsave(path, np.concatenate([np.repeat(grey[..., None], 3, axis=2), rgb[labels]], axis=1))


def _documentation(meta: dict[str, Any], data: dict[str, Any]) -> str:
    c = meta["in_channels"]
    return f"""# xtrain {meta['exported_as']} segmenter ({', '.join(meta['classes'])})

Semantic segmentation of synchrotron X-ray tomography slices (PXCT) into {', '.join(meta['classes'])}, trained
with xtrain {meta['xtrain_version']} (model `{meta['model_name']}`, {json.dumps(meta['model_kwargs'])}).

## Input
{meta['channels']}: {c} channel(s), axes (batch, channel, y, x), y and x at least {meta['min_size']} (any size
works; the network pads to multiples of {meta['min_size']}).  Raw intensities; the preprocessing normalises them
with the training statistics: {meta['input'].split(': ', 1)[1]}.

## Output
Softmax class probabilities (batch, class, y, x); the label of a voxel is the class of highest probability.
xtrain segments a volume plane by plane in overlapping tiles blended by a Gaussian window, optionally along
z, y and x with the probabilities averaged (`xtrain segment --axes zyx`).

## Training data
{data['name']}: {data['description']}

## Validation
The model was selected on a held-out contiguous z range of the training volume (mean Dice; xtrain's
`train.select`).  Validate it on new data with labels: `xtrain segment MODEL.pt SCAN OUT.zarr` then
`xtrain evaluate OUT.zarr LABELS` (Dice per class, phase fractions, triple-phase-boundary density), or compare
this package's output with labels in any bioimage.io consumer.  Validation metrics recorded at export:
{json.dumps(meta.get('metrics') or {}, sort_keys=True)}
"""


# Long by design: one bioimageio.spec ModelDescr built field by field in the spec's order (inputs, outputs,
# weights, documentation, citations); splitting it would scatter one declarative record.
def bioimageio_description(seg: Segmenter, ckpt: dict[str, Any], meta: dict[str, Any], tile: np.ndarray,
                           data: dict[str, Any], colours: list[tuple[int, ...]], folder: Path, *,
                           name: str | None = None, authors: list[str] | None = None, license: str = "BSD-3-Clause"):
    """The bioimage.io 0.5 ``ModelDescr`` of ``seg`` (a ``Segmenter`` without normalisation: the
    package's preprocessing normalises), its files written into ``folder``.

    ``tile``: the raw test input (1, C, T, T) float32; ``data``: the training data's ``name``,
    ``description`` and ``cite`` (a CiteEntry dict or None); ``colours``: RGB(A) per class for the
    cover image."""
    import bioimageio.spec.model.v0_5 as bio
    import onnx
    from bioimageio.spec.dataset.v0_3 import DatasetDescr

    stats = ckpt["stats"]
    lo, hi = float(stats["p0_5"]), float(stats["p99_5"])
    gain = 1.0 / (hi - lo) if hi > lo else 1.0
    offset = -lo * gain
    x = (tile.astype(np.float32) * np.float32(gain) + np.float32(offset)).astype(np.float32)  # as scale_linear
    if seg.normalise:
        raise ValueError("a bioimage.io Segmenter must not normalise: the package's preprocessing does")
    with torch.inference_mode():
        probs = seg(torch.from_numpy(x)).numpy()
    np.save(folder / "test_input.npy", tile.astype(np.float32))
    np.save(folder / "test_output.npy", probs)
    # the sample tensors are for people (any TIFF reader); the test tensors for bioimage.io's test
    tifffile.imwrite(folder / "sample_input.tif", tile.astype(np.float32), photometric="minisblack")
    tifffile.imwrite(folder / "sample_output.tif", probs, photometric="minisblack")
    _cover(x, probs, colours, folder / "cover.png")
    torch.save(seg.state_dict(), folder / "weights.pt")
    (folder / "model.torchscript.pt").write_bytes(torchscript_bytes(seg, meta))
    onnx_file = folder / "model.onnx"
    onnx_file.write_bytes(onnx_bytes(seg, meta["in_channels"], meta["min_size"], meta, input_name="raw"))
    opset = max(o.version for o in onnx.load(str(onnx_file)).opset_import if o.domain in ("", "ai.onnx"))
    (folder / "README.md").write_text(_documentation({**meta, "metrics": ckpt.get("metrics")}, data))

    c, m = meta["in_channels"], meta["min_size"]
    channel_names = ["slice"] if c == 1 else [f"slice{i - c // 2:+d}".replace("+0", "") for i in range(c)]
    size = bio.ParameterizedSize(min=m, step=m)
    classes = [re.sub(r"\W", "_", k) or f"class{i}" for i, k in enumerate(meta["classes"])]
    torch_version = bio.Version(torch.__version__.split("+")[0])
    arch = bio.ArchitectureFromLibraryDescr(import_from="xtrain.models.export", callable=bio.Identifier("Segmenter"),
                                            kwargs={"model_name": meta["exported_as"],
                                                    "model_kwargs": meta["model_kwargs"]})
    cites = [UNET_CITE] + ([PIX2PIX_CITE] if meta["model_name"] == "pix2pix" else [])
    if data["cite"]:
        cites.append(data["cite"])
    kind = meta["exported_as"].replace("unet", "U-Net").replace("mlp", "MLP")
    return bio.ModelDescr(
        name=name or f"xtrain {kind} PXCT segmenter ({' '.join(classes)})"[:128],
        description=f"2D/2.5D {kind} segmenting PXCT slices into {', '.join(meta['classes'])}; input: "
                    f"{c} consecutive slice(s), output: class probabilities.",
        authors=[bio.Author(name=a) for a in (authors or ["xtrain"])],
        cite=[bio.CiteEntry(**e) for e in cites],
        license=bio.LicenseId(license),
        documentation=bio.FileDescr(source=folder / "README.md"),
        covers=[bio.FileDescr(source=folder / "cover.png")],
        tags=["pxct", "x-ray-tomography", "solid-oxide-cell", "semantic-segmentation", "2d", "pytorch",
              meta["exported_as"]],
        training_data=DatasetDescr(name=data["name"], description=data["description"],
                                   cite=[bio.CiteEntry(**data["cite"])] if data["cite"] else [],
                                   source=data["cite"].get("url") if data["cite"] else None),
        inputs=[bio.InputTensorDescr(
            id=bio.TensorId("raw"), description=f"{c} consecutive slice(s), raw intensities",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=channel_names),
                  bio.SpaceInputAxis(id=bio.AxisId("y"), size=size), bio.SpaceInputAxis(id=bio.AxisId("x"), size=size)],
            test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
            sample_tensor=bio.FileDescr(source=folder / "sample_input.tif"),
            data=bio.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32")),
                           bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=gain, offset=offset))])],
        outputs=[bio.OutputTensorDescr(
            id=bio.TensorId("probabilities"), description="softmax class probabilities",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=classes),
                  bio.SpaceOutputAxis(id=bio.AxisId("y"), size=bio.SizeReference(tensor_id=bio.TensorId("raw"),
                                                                                 axis_id=bio.AxisId("y"))),
                  bio.SpaceOutputAxis(id=bio.AxisId("x"), size=bio.SizeReference(tensor_id=bio.TensorId("raw"),
                                                                                 axis_id=bio.AxisId("x")))],
            test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
            sample_tensor=bio.FileDescr(source=folder / "sample_output.tif"),
            data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
        weights=bio.WeightsDescr(
            pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                source=folder / "weights.pt", architecture=arch, pytorch_version=torch_version,
                comment="Segmenter's state dict (network + softmax); the architecture needs xtrain installed"),
            torchscript=bio.TorchscriptWeightsDescr(source=folder / "model.torchscript.pt",
                                                    pytorch_version=torch_version, parent="pytorch_state_dict",
                                                    comment="torch.jit.script, BatchNorm folded"),
            onnx=bio.OnnxWeightsDescr(source=onnx_file, opset_version=opset, parent="pytorch_state_dict",
                                      comment="torch.onnx.export (dynamo), BatchNorm folded")),
        config=bio.Config(bioimageio=bio.BioimageioConfig(
            reproducibility_tolerance=[bio.ReproducibilityTolerance(relative_tolerance=TOLERANCE,
                                                                    absolute_tolerance=TOLERANCE)],
            architecture_type=f"2D {kind}", modality="X-ray ptychographic computed tomography (PXCT)",
            task="semantic segmentation", model_parameter_count=num_parameters(seg)), xtrain=meta),
    )


# ----------------------------------------------------------------------------- checks and writing


def check_format(out: Path, fmt: str) -> None:
    """Refuse an unknown format (``UnknownNameError``) or an OUT whose suffix does not fit it
    (``InvalidInputError``)."""
    if fmt not in FORMATS:
        raise UnknownNameError("export format", fmt, FORMATS)
    if out.suffix.lower() not in SUFFIXES[fmt]:
        want = " or ".join(f"'{s}'" if s else "no suffix (a folder)" for s in SUFFIXES[fmt])
        raise InvalidInputError(f"output '{out}' of --format {fmt} must end in {want}")


def check_package_fields(name: str | None, license: str) -> None:
    """Refuse a licence that is no SPDX id, or a name that bioimage.io does not allow, before any work."""
    from bioimageio.spec.model.v0_5 import LicenseId

    try:
        LicenseId(license)
    except ValueError as exc:
        raise InvalidInputError(f"licence '{license}' is not an SPDX licence id; use e.g. CC-BY-4.0, BSD-3-Clause "
                                "or MIT") from exc
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_+\- ()]{5,128}", name):
        raise InvalidInputError(f"name '{name}' must be 5-128 letters, digits, spaces or _+-() (bioimage.io)")


def write_bioimageio(seg: Segmenter, ckpt: dict[str, Any], meta: dict[str, Any], tile: np.ndarray,
                     data: dict[str, Any], colours: list[tuple[int, ...]], out: Path, **fields: Any) -> None:
    """Write the package (``bioimageio_description``) as ``out`` (.zip, or a folder for no suffix)
    through a temporary sibling renamed into place: a failure leaves no partial ``out``."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.files.") as files:
        descr = bioimageio_description(seg, ckpt, meta, tile, data, colours, Path(files), **fields)
        try:
            if out.suffix.lower() == ".zip":
                save_bioimageio_package(descr, output_path=tmp)
            else:
                save_bioimageio_package_as_folder(descr, output_path=tmp)
            replace_into_place(tmp, out)
        finally:
            if tmp.exists():
                remove_path(tmp)
