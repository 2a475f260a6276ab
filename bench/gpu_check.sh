#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (H200: torch, no Ray, zarr or dask): segment z / zyx of a
# 512^3 volume in bf16, the bare forward, the GPU engines, U-Net and Pix2Pix training throughput; under
# 8 minutes; ends with a RESULT line (bench/gpu_check.py says what each figure is).
#
#   here:   bash bench/gpu_wheels.sh                       # once: zarr, dask, ome-zarr-models ... -> .whl/
#   device: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#   CPU:    python bench/gpu_check.py --dry-run           # every step, tiny, the GPU machine's packages
#
# Without a CUDA GPU it prints one line and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU here ($PY: no torch, or torch.cuda.is_available() is false); nothing to check"
    exit 0
fi
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing the carried wheels (.whl/) failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
fi
"$PY" -c "import zarr, dask.array, ome_zarr_models" 2>/dev/null \
    || { echo "gpu_check: zarr, dask or ome-zarr-models missing: run bash bench/gpu_wheels.sh here and carry .whl"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" bench/gpu_check.py "$@"
