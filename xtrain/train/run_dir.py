"""The run directory: what a training run keeps in RUN_DIR, and when it may be started or resumed.

    RUN_DIR/
      config.yaml    the resolved config (the driver, before any worker starts)
      last.pt        everything to continue training: after every epoch and on a stop request (rank 0)
      model.pt       what inference needs: the best validation epoch, or the last one without
                     model selection (rank 0)
      metrics.csv    one row per finished epoch (rank 0; a resumed run rewrites the rows it redoes)
      status.json    running / finished / interrupted / failed, or a sweep's early-stopped (the driver)
      STOP           the driver's request to every worker: checkpoint and return within one step
      .pids/rank-N   the process id of each training worker (latest attempt)
      train.log      rank 0's progress lines (the driver re-logs them)
      params.json    a Tune trial's parameters (tune/sweep.py)
      ray/           Ray Train's own storage

The rules (``xtrain train``, ``xtrain tune``'s trials and ``loop.fit`` all follow them):

* A fresh start needs a folder that is absent, empty, or holds only what a start that failed
  before training left (``failed_start``: config.yaml, STOP, empty folders).
* ``--resume`` continues from last.pt.  A finished run with the same settings is
  ``AlreadyComplete``; with other settings ``SettingsMismatchError`` names the key.  Settings
  may differ only in ``RUN_ONLY_KEYS`` (where and how fast a run computes, not what).  A run
  that stopped before its first checkpoint starts again from epoch 1; a folder holding only
  a failed start's config.yaml starts from the beginning.
* One writer per folder: ``run_lock`` (``xtrain.io.output_lock``, the lock file ``.RUN.lock``
  beside RUN_DIR) is held around the whole of ``xtrain train`` and ``xtrain tune``; a second
  process writing the same folder gets ``LockedError`` naming the first one's pid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..config import Config, config_to_dict, describe_differences, differences, save_config
from ..errors import RunStateError, SettingsMismatchError
from ..io import atomic_write, output_lock, read_csv, write_csv

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
LAST = "last.pt"
BEST = "model.pt"
METRICS = "metrics.csv"
STATUS = "status.json"
STOP = "STOP"
PIDS = ".pids"
TRAIN_LOG = "train.log"

# Keys that change where or how fast a run computes, not what it computes: a rerun may differ in them.
RUN_ONLY_KEYS = ("train.workers", "train.use_gpu", "train.max_failures", "data.loader_workers")
FAILED_START = frozenset({CONFIG, STOP})  # what a start that failed before training left behind


class AlreadyComplete(Exception):
    """Raised by ``prepare_run_dir`` for ``--resume`` of a finished run with the same settings."""


# ----------------------------------------------------------------------------- status


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_status(run_dir: Path, **fields: Any) -> None:
    status = {**read_status(run_dir), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(Path(run_dir) / STATUS, json.dumps(status, indent=2), what="the run status")


# ----------------------------------------------------------------------------- metrics


def write_metrics_row(run_dir: Path, row: dict[str, Any]) -> None:
    """Append an epoch's row (replacing rows of that epoch or later: a resumed run redoes them)."""
    path = Path(run_dir) / METRICS
    rows = [r for r in read_csv(path) if int(r["epoch"]) < int(row["epoch"])] + [row]
    write_csv(path, rows)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return read_csv(path)


def numeric(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics.csv row as numbers (epoch and step int, the rest float; text columns dropped)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = int(v) if k in ("epoch", "step") else float(v)
        except (TypeError, ValueError):
            pass
    return out


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last metrics.csv row of RUN_DIR as numbers ({} before the first epoch)."""
    rows = read_metrics(Path(run_dir) / METRICS)
    return numeric(rows[-1]) if rows else {}


# ----------------------------------------------------------------------------- starting and resuming


def _with_defaults(saved: Any, defaults: Any) -> Any:
    """``saved`` (a config.yaml's nested dict) with the keys it lacks taken from ``defaults``: a run made
    before a key existed ran as that key's default does (new keys default to the old behaviour, e.g.
    ``train.pseudo_weight: 0``), so its resume is not refused for the key."""
    if not isinstance(saved, dict) or not isinstance(defaults, dict):
        return saved
    return {**defaults, **{k: _with_defaults(v, defaults.get(k)) for k, v in saved.items()}}


def check_same_config(run_dir: Path, cfg: Config, what: str = "run") -> None:
    """Refuse (naming the key) a ``cfg`` that differs from RUN_DIR/config.yaml beyond ``RUN_ONLY_KEYS``."""
    import yaml

    try:
        saved = yaml.safe_load((Path(run_dir) / CONFIG).read_text()) or {}
    except FileNotFoundError:
        return
    new = json.loads(json.dumps(config_to_dict(cfg), default=str))
    saved = _with_defaults(json.loads(json.dumps(saved, default=str)),
                           json.loads(json.dumps(config_to_dict(Config()), default=str)))
    keys = [k for k in differences(saved, new) if k not in RUN_ONLY_KEYS]
    if keys:
        raise SettingsMismatchError(f"{what} '{run_dir}' was made with other settings: "
                                    f"{describe_differences(saved, new, keys)}; rerun with the same settings "
                                    "or choose a new --out")


def run_lock(folder: str | Path, command: str) -> contextlib.AbstractContextManager[None]:
    """The one-writer lock of a run or tune ``folder`` for ``xtrain COMMAND`` (module docstring); creates
    the parent folder so the lock can be taken.  Raises ``LockedError`` (on entering) while another holds it."""
    folder = Path(folder).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    return output_lock(folder, command)


def failed_start(folder: Path, extra: frozenset[str] = frozenset()) -> bool:
    """``folder`` does not exist, or holds only what a start that failed before any work leaves
    (``FAILED_START``, ``extra``, empty folders): nothing to keep, nothing to resume."""
    folder = Path(folder)
    if not folder.exists():
        return True
    return all(p.name in FAILED_START | extra and (p.is_file() or not any(p.iterdir())) for p in folder.iterdir())


def prepare_run_dir(run_dir: str | Path, cfg: Config, resume: bool) -> tuple[Path, Path | None]:
    """Create RUN_DIR or check it may be resumed (module docstring).  Returns (absolute run dir,
    the last.pt to resume from or None).  Writes config.yaml; removes a stale STOP.

    Raises ``AlreadyComplete``, ``SettingsMismatchError`` or ``RunStateError`` (a non-empty
    folder without ``--resume``; ``--resume`` of a folder that never ran)."""
    run_dir = Path(run_dir).resolve()
    last = run_dir / LAST
    state = read_status(run_dir).get("state")
    empty = failed_start(run_dir)
    if resume:
        if state == "finished":
            check_same_config(run_dir, cfg)
            raise AlreadyComplete(str(run_dir))
        if not last.exists():
            if empty and run_dir.exists():
                log.info("nothing to resume in '%s' (a start that failed left only %s); starting from the "
                         "beginning", run_dir, CONFIG)
            elif not state:
                raise RunStateError(f"cannot resume '{run_dir}': it has no {LAST}; start it without --resume")
            else:
                check_same_config(run_dir, cfg)
                log.warning("run '%s' stopped (%s) before its first checkpoint; starting it from epoch 1", run_dir,
                            state)
            resume = False
        else:
            check_same_config(run_dir, cfg)
    elif not empty:
        hint = "pass --resume to continue it" if last.exists() and state != "finished" else "choose a new --out"
        raise RunStateError(f"run directory '{run_dir}' already exists and is not empty; {hint}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STOP).unlink(missing_ok=True)
    save_config(cfg, run_dir / CONFIG)
    return run_dir, (last if resume else None)


def prepare_trial_dir(run_dir: Path, cfg: Config) -> Path | None:
    """A Tune trial's RUN_DIR, started or continued without asking: the last.pt to resume from,
    or None after clearing what an attempt left before its first checkpoint.  A finished
    trial is the caller's to report (``read_status``), never prepared again."""
    run_dir = Path(run_dir)
    resume = run_dir / LAST if (run_dir / LAST).exists() else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # started but never checkpointed: start again
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STOP).unlink(missing_ok=True)
    save_config(cfg, run_dir / CONFIG)
    return resume


# ----------------------------------------------------------------------------- the workers' side


def record_worker(run_dir: Path, rank: int) -> None:
    """RUN_DIR/.pids/rank-N: which process is which rank (operators; tests killing one)."""
    (Path(run_dir) / PIDS).mkdir(exist_ok=True)
    atomic_write(Path(run_dir) / PIDS / f"rank-{rank}", f"{os.getpid()}\n", what="a worker pid file")


def log_to_run(run_dir: Path) -> None:
    """Send the ``xtrain`` logger's INFO lines to RUN_DIR/train.log (rank 0; once per process)."""
    xlog = logging.getLogger("xtrain")
    xlog.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) for h in xlog.handlers):
        handler = logging.FileHandler(Path(run_dir) / TRAIN_LOG)
        handler.setFormatter(logging.Formatter("%(message)s"))
        xlog.addHandler(handler)
