#!/usr/bin/env bash
# Fetch (here, where pip reaches PyPI) the wheels bench/gpu_check.sh installs on the lent H200 machine, which
# has torch, numpy, tifffile, h5py, scipy, scikit-image, pyyaml, toolz, cloudpickle, fsspec and click but no
# zarr, dask or ome-zarr-models (the device tool's KINDS.md) and no network.  Python 3.12 there.
#   bash bench/gpu_wheels.sh          # -> .whl/ (in .gitignore); then run with carry [".whl"]
# The versions are those of the environment's PY (default: the python on PATH; give the project's venv), so the
# H200 runs what the tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
PKGS=(zarr numcodecs donfig google-crc32c dask partd locket ome-zarr-models pydantic-zarr pydantic pydantic-core
      annotated-types typing-inspection typing-extensions)
pins=()
for p in "${PKGS[@]}"; do pins+=("$p==$("$PY" -m pip show "$p" 2>/dev/null | awk '/^Version:/ {print $2}')"); done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls -s .whl
