"""Search-space parsing (no Ray): dotted keys, distributions, suggestions, value checks."""

from __future__ import annotations

import pytest

from xtrain.config import config_to_dict, load_config
from xtrain.errors import ConfigError, UnknownNameError
from xtrain.tune.space import apply_params, grid_size, parse_space, to_ray


def base():
    return config_to_dict(load_config("configs/tiny.yaml"))


def test_parses_every_kind_and_dotted_paths():
    params = parse_space({
        "optim.lr": {"loguniform": [1e-4, "1e-2"]},
        "train.batch_size": {"choice": [8, 16, 32]},
        "optim.beta1": {"uniform": [0.5, 0.9]},
        "model.name": {"choice": ["unet", "mlp"]},
        "data.fraction": {"grid": [0.1, 0.25, 0.5, 1.0]},
        "data.augment.noise_std": 0.3,
        "data.patch": {"randint": [32, 49]},
        "model.kwargs.width": {"grid": [4, 8]},
    }, base())
    kinds = {p.key: p.kind for p in params}
    assert kinds == {"optim.lr": "loguniform", "train.batch_size": "choice", "optim.beta1": "uniform",
                     "model.name": "choice", "data.fraction": "grid", "data.augment.noise_std": "fixed",
                     "data.patch": "randint", "model.kwargs.width": "grid"}
    assert params[0].args == (1e-4, 1e-2)  # YAML-1.1 "1e-2" string accepted as a number
    assert grid_size(params) == 8


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown config key 'optim\.lrr' in tune\.space; did you mean 'optim\.lr'"):
        parse_space({"optim.lrr": {"loguniform": [1e-4, 1e-2]}}, base())
    with pytest.raises(UnknownNameError, match="did you mean 'data.augment.noise_fraction'"):
        parse_space({"data.augment.noise_fraktion": {"grid": [0.0, 0.5]}}, base())
    with pytest.raises(UnknownNameError, match="did you mean 'train'"):
        parse_space({"trian.epochs": {"grid": [1, 2]}}, base())


def test_unknown_distribution_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="unknown search distribution 'log_uniform'.*did you mean 'loguniform'"):
        parse_space({"optim.lr": {"log_uniform": [1e-4, 1e-2]}}, base())
    with pytest.raises(UnknownNameError, match="did you mean 'choice'"):
        parse_space({"train.batch_size": {"choise": [8, 16]}}, base())


@pytest.mark.parametrize("spec, match", [
    ({"optim.lr": {"loguniform": [1e-2, 1e-4]}}, "low < high"),
    ({"optim.lr": {"loguniform": [0, 1e-2]}}, "low > 0"),
    ({"optim.lr": {"uniform": [0.1]}}, "takes 2 numbers"),
    ({"optim.lr": {"uniform": ["a", "b"]}}, "takes numbers"),
    ({"optim.lr": {"uniform": [0.1, 0.2], "choice": [1]}}, "one distribution"),
    ({"train.batch_size": {"choice": []}}, "takes a list"),
    ({"train.batch_size": {"choice": ["big", 16]}}, "value 'big' does not fit"),
    ({"train.batch_size": {"uniform": [8, 32]}}, "does not fit"),  # a float where an int is needed
    ({"train.use_gpu": {"grid": [0, 1]}}, "true or false"),
    ({"tune.num_samples": {"grid": [1, 2]}}, "cannot be searched"),
    ({"optim.lr.x": {"grid": [1, 2]}}, "not a section"),
])
def test_bad_specs_are_one_line_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(spec, base())


def test_apply_params_merges_sections_and_replaces_free_form_dicts():
    b = base()
    out = apply_params(b, {"optim.lr": 0.01, "model": {"name": "mlp", "kwargs": {"hidden": 16}},
                           "data.augment.noise_fraction": 0.5})
    assert out["optim"]["lr"] == 0.01 and out["optim"]["beta1"] == b["optim"]["beta1"]
    assert out["model"] == {"name": "mlp", "kwargs": {"hidden": 16}}  # unet kwargs do not leak into mlp
    assert out["data"]["augment"]["noise_fraction"] == 0.5 and out["data"]["augment"]["flips"] is True
    assert b["optim"]["lr"] != 0.01  # the base is not modified
    with pytest.raises(UnknownNameError, match="did you mean 'model.kwargs'"):
        parse_space({"model": {"choice": [{"name": "mlp", "kwarg": {}}]}}, b)


def test_shipped_sweep_and_study_configs_parse():
    for name, keys in [("tune", {"optim.lr", "train.batch_size", "optim.beta1", "model"}),
                       ("study_fraction", {"data.fraction"}), ("study_noise", {"data.augment.noise_fraction"})]:
        cfg = load_config(f"configs/{name}.yaml")
        params = parse_space(cfg.tune.space, config_to_dict(cfg))
        assert {p.key for p in params} == keys
    noise = load_config("configs/study_noise.yaml")
    assert noise.tune.scheduler == "fifo" and noise.data.augment.noise_std > 0
    assert load_config("configs/study_fraction.yaml").tune.scheduler == "fifo"
    assert load_config("configs/tune.yaml").tune.scheduler == "asha"


def test_to_ray_builds_tune_domains():
    from ray import tune

    space = to_ray(parse_space({"optim.lr": {"loguniform": [1e-4, 1e-2]}, "data.fraction": {"grid": [0.5, 1.0]},
                                "train.batch_size": {"choice": [8, 16]}, "optim.beta1": 0.8}, base()))
    assert isinstance(space["optim.lr"], tune.search.sample.Float)
    assert space["data.fraction"] == {"grid_search": [0.5, 1.0]}
    assert space["train.batch_size"].categories == [8, 16]
    assert space["optim.beta1"] == 0.8


def test_cli_tune_bad_space_or_existing_out_is_one_line_exit_2(tmp_path, capsys, tiny_store):
    from xtrain.cli import main

    out = tmp_path / "tune"
    rc = main(["tune", "--config", "configs/tiny.yaml", "--data", str(tiny_store), "--out", str(out),
               "--set", "tune.space={optim.lrr: {grid: [0.001]}}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "xtrain tune: error: unknown config key 'optim.lrr' in tune.space; did you mean 'optim.lr'?"
    assert not out.exists()
    rc = main(["tune", "--config", "configs/tiny.yaml", "--data", str(tiny_store), "--out", str(out),
               "--set", "tune.scheduler=hyperband"])
    assert rc == 2 and "unknown tune scheduler 'hyperband'" in capsys.readouterr().err
    out.mkdir()
    (out / "x").write_text("")
    rc = main(["tune", "--config", "configs/tiny.yaml", "--data", str(tiny_store), "--out", str(out)])
    assert rc == 2 and "already exists and is not empty" in capsys.readouterr().err
    rc = main(["tune", "--config", "configs/tiny.yaml", "--data", str(tiny_store), "--out", str(tmp_path / "new"),
               "--resume"])
    assert rc == 2 and "holds no sweep state" in capsys.readouterr().err
