"""model.pt records the inference settings its model is run with (validated_inference)."""

from __future__ import annotations

import pytest

from xtrain.config import Config, config_to_dict
from xtrain.errors import CorruptFileError
from xtrain.models.checkpoint import inference_checkpoint, model_info, validated_inference


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
