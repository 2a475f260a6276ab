"""Checkpoints: plain tensors and values only, loaded with weights_only=True; a pickle payload is refused
naming the file and never runs; an architecture mismatch keeps torch's "size mismatch" detail; model.pt
records the inference settings its model is run with (validated_inference)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from xtrain.cli import main
from xtrain.config import Config, config_to_dict
from xtrain.errors import CorruptFileError
from xtrain.models import create_model
from xtrain.models.checkpoint import (inference_checkpoint, load_checkpoint, model_from_checkpoint, model_info,
                                     validated_inference)


class Payload:
    """What a booby-trapped model.pt carries: unpickling it runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_training_writes_only_tensors_and_plain_values(tiny_model):
    for name in ("model.pt", "last.pt"):
        path = tiny_model.parent / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], name
        ckpt = torch.load(path, weights_only=True)
        assert "rng" not in ckpt  # never restored (resume reseeds each step), so not stored


def test_a_model_carrying_a_pickle_payload_is_refused_and_nothing_runs(tiny_model, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ckpt = torch.load(tiny_model, weights_only=True)
    ckpt["notes"] = Payload(marker)
    evil = tmp_path / "model.pt"
    torch.save(ckpt, evil)
    with pytest.raises(CorruptFileError) as e:
        load_checkpoint(evil)
    assert str(e.value).startswith(f"checkpoint '{evil}' is refused: it holds more than tensors and plain values "
                                   "(posix.system)")
    assert main(["segment", str(evil), str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xtrain segment: error: checkpoint '{evil}' is refused") and "\n" not in err
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    assert main(["nightly", "--watch", str(incoming), "--model", str(evil), "--out", str(tmp_path / "res"),
                 "--once"]) == 2
    assert "is refused" in capsys.readouterr().err
    assert not marker.exists()  # the payload never ran


def test_an_older_last_pt_with_numpy_rng_states_still_loads(tiny_model, tmp_path):
    import random

    ckpt = torch.load(tiny_model.parent / "last.pt", weights_only=True)
    ckpt["rng"] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(ckpt, tmp_path / "last.pt")  # as xtrain wrote it before
    assert load_checkpoint(tmp_path / "last.pt")["rng"]["numpy"][0] == "MT19937"


def test_an_architecture_mismatch_keeps_torchs_size_mismatch_detail(tiny_model, tmp_path):
    ckpt = torch.load(tiny_model, weights_only=True)
    wider = dict(ckpt["model_kwargs"], width=ckpt["model_kwargs"]["width"] * 2)
    ckpt["model_kwargs"] = wider
    with pytest.raises(CorruptFileError) as e:
        model_from_checkpoint(ckpt, tmp_path / "model.pt")
    text = str(e.value)
    assert "Error(s) in loading state_dict for UNet: size mismatch for " in text and "copying a param with shape" in text
    assert "\n" not in text and "more;" not in text
    create_model(ckpt["model_name"], **wider)  # the refusal is about the weights, not the kwargs


def resolved(axis: str) -> dict:
    cfg = Config()
    cfg.data.axis = axis
    return config_to_dict(cfg)


@pytest.mark.parametrize("axis, want", [("any", {"axes": "zyx", "clean": True}), ("z", {"axes": "z", "clean": False}),
                                        ("y", {"axes": "z", "clean": False}), ("x", {"axes": "z", "clean": False})])
def test_the_rule_all_axes_trained_means_zyx_and_clean(axis, want):
    assert validated_inference(resolved(axis)) == want


def test_no_config_records_nothing():
    assert validated_inference(None) is None and validated_inference({}) is None


def test_model_pt_carries_the_record_and_model_info_reads_it():
    train = {"kind": "train", "model_name": "unet", "model_kwargs": {"in_channels": 3, "num_classes": 3},
             "model_state": {}, "config": resolved("any"), "classes": ["pore", "ysz", "ni"], "rng": {}}
    model = inference_checkpoint(train)
    assert model["inference"] == {"axes": "zyx", "clean": True} and "rng" not in model and model["kind"] == "model"
    assert model_info(model, "m.pt").inference == {"axes": "zyx", "clean": True}
    assert "inference" not in inference_checkpoint({**train, "config": None})  # nothing to derive it from
    assert model_info({**model, "inference": None}, "m.pt").inference is None  # an older model.pt


@pytest.mark.parametrize("record", [{"axes": "y", "clean": True}, {"axes": "zyx"}, {"axes": "z", "clean": "yes"},
                                    "zyx"])
def test_a_malformed_record_is_a_corrupt_file(record):
    model = {"model_name": "unet", "model_kwargs": {"in_channels": 1, "num_classes": 3}, "inference": record}
    with pytest.raises(CorruptFileError, match="m.pt.*records inference settings"):
        model_info(model, "m.pt")
