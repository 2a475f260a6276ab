"""Checkpoints: plain tensors and values only, loaded with weights_only=True; a pickle payload is refused
naming the file and never runs; an architecture mismatch keeps torch's "size mismatch" detail."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from xtrain.cli import main
from xtrain.errors import CorruptFileError
from xtrain.models import create_model
from xtrain.models.checkpoint import load_checkpoint, model_from_checkpoint


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
