"""Config files and --set overrides: duplicate keys refused with both line numbers, a malformed value is one line."""

from __future__ import annotations

import pytest

from xtrain.cli import main
from xtrain.config import load_config, load_yaml, parse_override
from xtrain.errors import ConfigError


def test_a_second_section_with_the_same_name_is_refused_naming_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("data:\n  patch: 32\nmodel:\n  name: unet\ndata:\n  samples_per_epoch: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert str(e.value) == (f"config file '{cfg}' has the key 'data' twice (lines 1 and 5); YAML would keep only "
                            "the second: merge them into one")
    cfg.write_text("optim:\n  lr: 0.001\n  weight_decay: 0.0\n  lr: 0.01\n")  # nested keys too
    with pytest.raises(ConfigError, match=r"the key 'lr' twice \(lines 2 and 4\)"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"--set 'model.kwargs=\{width: 8, width: 16\}' has the key 'width' twice"):
        parse_override("model.kwargs={width: 8, width: 16}")


def test_merge_keys_still_override_as_yaml_means():
    assert load_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 5\n", "t")["run"] == {"x": 5, "y": 2}


def test_a_malformed_set_value_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--set 'model.kwargs=\{width: 8, depth: 2': the value is not valid YAML"):
        parse_override("model.kwargs={width: 8, depth: 2")
    rc = main(["train", "--config", "configs/tiny.yaml", "--data", str(tmp_path / "s.zarr"), "--out",
               str(tmp_path / "run"), "--set", "model.kwargs={width: 8, depth: 2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("xtrain train: error: --set 'model.kwargs={width: 8, depth: 2': the value is "
                                      "not valid YAML (expected ',' or '}'") and "\n" not in err, err
    assert not (tmp_path / "run").exists()
