"""Ray job entry point: `xtrain segment` on the cluster the job was submitted to.

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/segment.py MODEL.pt SCAN.zarr SEG.zarr --workers 4

Arguments are those of `xtrain segment` (see `xtrain segment --help`); paths must be visible to every
node (a shared file system).  The upload skips what .gitignore lists (Ray 2.60 reads it, and a
.rayignore); add --runtime-env-json '{"excludes": [".git", "*.zarr", "runs"]}' to skip the rest.
The job's python must be xtrain's venv (activate it before `ray start`, or name it).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("segment", sys.argv[1:]))
