"""Shared by the ``ray job submit`` entry points: make xtrain importable, forward to the CLI.

Inside a Ray job RAY_ADDRESS is set, so xtrain joins the job's cluster (``ray.init()`` without
``num_cpus``) instead of starting a local Ray, and the CLI runs volume-wide Dask graphs on it
(``xtrain.runtime.volume_scheduler``; ``XTRAIN_DASK_ON_RAY=0`` keeps them on local threads).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(command: str, argv: list[str]) -> int:
    if str(REPO) not in sys.path:  # --working-dir . puts the repo on the path; a plain `python jobs/x.py` too
        sys.path.insert(0, str(REPO))
    if not os.environ.get("RAY_ADDRESS"):
        print(f"jobs/{command}.py: RAY_ADDRESS is not set: not inside a Ray job; xtrain starts a local Ray",
              file=sys.stderr)
    from xtrain.cli import main

    return main([command, *argv])
