"""The run-directory protocol shared by `xtrain train`, `xtrain tune` and the loop (no Ray needed)."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from xtrain.errors import RunStateError, SettingsMismatchError
from xtrain.train.run_dir import (CONFIG, LAST, STOP, AlreadyComplete, check_same_config, failed_start, last_metrics,
                                  prepare_run_dir, prepare_trial_dir, write_metrics_row, write_status)


def test_a_failed_starts_config_yaml_blocks_neither_a_fresh_start_nor_resume(tiny_store, tmp_path):
    cfg = tiny_config(tiny_store)
    run = tmp_path / "run"
    prepare_run_dir(run, cfg, resume=False)  # what a start that failed in preflight of its workers leaves
    (run / STOP).touch()
    assert failed_start(run) and sorted(p.name for p in run.iterdir()) == [STOP, CONFIG]
    again, resume_from = prepare_run_dir(run, cfg, resume=False)
    assert again == run.resolve() and resume_from is None and not (run / STOP).exists()
    assert prepare_run_dir(run, cfg, resume=True) == (run.resolve(), None)  # nothing to resume: from the start
    (run / "metrics.csv").write_text("epoch\n1\n")
    with pytest.raises(RunStateError, match="already exists and is not empty; choose a new --out"):
        prepare_run_dir(run, cfg, resume=False)


def test_resume_allows_only_run_only_keys_to_differ_whatever_the_state(tiny_store, tmp_path):
    cfg = tiny_config(tiny_store)
    run = tmp_path / "run"
    prepare_run_dir(run, cfg, resume=False)
    (run / LAST).write_bytes(b"")  # an interrupted run: it has a checkpoint
    write_status(run, state="interrupted")
    with pytest.raises(RunStateError, match="pass --resume to continue it"):
        prepare_run_dir(run, cfg, resume=False)
    assert prepare_run_dir(run, tiny_config(tiny_store, "train.workers=1", "data.loader_workers=2"),
                           resume=True) == (run.resolve(), run.resolve() / LAST)
    with pytest.raises(SettingsMismatchError, match="optim.lr was 0.003, now 0.01"):
        prepare_run_dir(run, tiny_config(tiny_store, "optim.lr=0.01"), resume=True)
    write_status(run, state="finished")
    with pytest.raises(AlreadyComplete):
        prepare_run_dir(run, tiny_config(tiny_store, "train.max_failures=0"), resume=True)
    with pytest.raises(SettingsMismatchError, match="train.epochs was 3, now 4"):
        check_same_config(run, tiny_config(tiny_store, "train.epochs=4"))


def test_a_trial_directory_restarts_unless_it_has_a_checkpoint(tiny_store, tmp_path):
    cfg = tiny_config(tiny_store)
    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "metrics.csv").write_text("epoch\n1\n")  # an attempt that died before its first checkpoint
    assert prepare_trial_dir(trial, cfg) is None and sorted(p.name for p in trial.iterdir()) == [CONFIG]
    (trial / LAST).write_bytes(b"")
    (trial / STOP).touch()
    assert prepare_trial_dir(trial, cfg) == trial / LAST and not (trial / STOP).exists()


def test_metrics_rows_of_a_redone_epoch_are_replaced_and_read_back_as_numbers(tmp_path):
    for epoch, loss in ((1, 0.9), (2, 0.8), (3, 0.7)):
        write_metrics_row(tmp_path, {"epoch": epoch, "step": 4 * epoch, "train_loss": loss, "note": "x"})
    write_metrics_row(tmp_path, {"epoch": 2, "step": 8, "train_loss": 0.75, "note": "x"})  # a resumed run redoes 2
    assert last_metrics(tmp_path) == {"epoch": 2, "step": 8, "train_loss": 0.75}


def test_a_run_made_before_a_key_existed_resumes_as_its_default(tiny_store, tmp_path):
    """A config.yaml without the self-training keys (written before they existed) resumes with them at their
    defaults (off), and is refused when the resume turns them on."""
    import yaml

    cfg = tiny_config(tiny_store)
    run = tmp_path / "run"
    prepare_run_dir(run, cfg, resume=False)
    old = yaml.safe_load((run / CONFIG).read_text())
    for key in ("pseudo_weight", "pseudo_threshold", "pseudo_start"):
        del old["train"][key]
    del old["data"]["unlabelled_fraction"]
    (run / CONFIG).write_text(yaml.safe_dump(old))
    check_same_config(run, cfg)
    with pytest.raises(SettingsMismatchError, match="train.pseudo_weight was 0.0, now 1.0"):
        check_same_config(run, tiny_config(tiny_store, "train.pseudo_weight=1.0", "train.ema_decay=0.9"))
