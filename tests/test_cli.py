"""The command line: help texts with examples, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xtrain.cli import PRESET_NAMES, SUGGEST_SCORES, build_parser, main
from xtrain.infer.suggest import DEFAULT_SCORE, SCORES
from xtrain.data.synth import PRESETS


def test_every_subcommand_help_has_an_example(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"ingest", "synth", "train"}
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"xtrain {name}" in out, name


def test_the_cli_choices_kept_here_for_a_fast_help_match_the_library():
    assert set(PRESET_NAMES) == set(PRESETS)
    assert set(SUGGEST_SCORES) == set(SCORES) and SUGGEST_SCORES[0] == DEFAULT_SCORE


def run(*args):
    return subprocess.run([sys.executable, "-m", "xtrain.cli", *args], capture_output=True, text=True)


def test_unknown_config_key_suggests_the_closest(tiny_store, tmp_path):
    r = run("train", "--config", "configs/tiny.yaml", "--data", str(tiny_store), "--out", str(tmp_path / "run"),
            "--set", "optim.lrr=0.1")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "optim.lrr" in r.stderr and "did you mean 'optim.lr'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_key_in_yaml_names_the_file(tiny_store, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    r = run("train", "--config", str(bad), "--data", str(tiny_store), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "did you mean 'train.epochs'" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_train_on_missing_store_is_one_line(tmp_path):
    r = run("train", "--config", "configs/tiny.yaml", "--data", str(tmp_path / "nope.zarr"), "--out",
            str(tmp_path / "run"))
    assert r.returncode == 2 and "nope.zarr" in r.stderr and "does not exist" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_z_ranges_start_at_zero():
    from xtrain.cli import build_parser

    args = build_parser().parse_args(["compare", "--labels", "l.zarr", "--report", "r", "--fit-z", "0,200",
                                      "--z", "205,250"])
    assert args.fit_z == (0, 200) and args.z == (205, 250)
