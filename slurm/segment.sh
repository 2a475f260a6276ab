#!/usr/bin/env bash
# xtrain segment (blockwise inference with Ray workers) on a Slurm allocation.
#   XTRAIN_MODEL=runs/unet/model.pt XTRAIN_DATA=/shared/scan.zarr XTRAIN_OUT=/shared/scan-seg.zarr \
#     sbatch slurm/segment.sh [extra xtrain segment args]
# Facility settings: --partition, --gres=gpu:N, --cpus-per-task, --time, --nodes.  segment resumes
# from its block markers, so a requeued job continues where it stopped.
#SBATCH --job-name=xtrain-segment
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=xtrain-segment-%j.out
##SBATCH --partition=gpu
##SBATCH --gres=gpu:1
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$PWD}"
XTRAIN_MODEL=${XTRAIN_MODEL:?set XTRAIN_MODEL to a model.pt}
XTRAIN_DATA=${XTRAIN_DATA:?set XTRAIN_DATA to the store (or TIFF stack) to segment}
XTRAIN_OUT=${XTRAIN_OUT:?set XTRAIN_OUT to the output store}
source "${XTRAIN_HOME:-$PWD}/slurm/ray_cluster.sh"  # submit from the repository root (or set XTRAIN_HOME)

args=(segment "$XTRAIN_MODEL" "$XTRAIN_DATA" "$XTRAIN_OUT")
if [[ -n "${XTRAIN_WORKERS:-}" ]]; then args+=(--workers "$XTRAIN_WORKERS"); fi
if [[ "${XTRAIN_GPU:-0}" == 1 ]]; then args+=(--gpu); fi
# A finished OUT is left alone; otherwise --resume: a requeued job continues from the block
# markers in the partial output (with nothing to resume, segment starts from the beginning).
if [[ -e "$XTRAIN_OUT" ]]; then echo "segment.sh: $XTRAIN_OUT already exists"; exit 0; fi
args+=(--resume)
run_job segment.sh "${args[@]}" "$@"
