"""Ray job entry point: `xtrain train` on the cluster the job was submitted to.

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train.py --config configs/unet.yaml --data /shared/soc.zarr --out /shared/runs/train

Arguments are those of `xtrain train` (see `xtrain train --help`); paths must be visible to every
node (a shared file system).  The upload skips what .gitignore lists (Ray 2.60 reads it, and a
.rayignore); add --runtime-env-json '{"excludes": [".git", "*.zarr", "runs"]}' to skip the rest.
The job's python must be xtrain's venv (activate it before `ray start`, or name it).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:]))
