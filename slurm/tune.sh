#!/usr/bin/env bash
# xtrain tune (a sweep or a grid study) on a Slurm allocation; trials spread over all nodes.
#   XTRAIN_CONFIG=configs/tune.yaml XTRAIN_DATA=/shared/soc.zarr XTRAIN_OUT=/shared/runs/tune XTRAIN_TRIALS=32 \
#     sbatch --nodes=4 slurm/tune.sh [extra xtrain tune args]
# Facility settings: --partition, --gres=gpu:N (+ XTRAIN_GPU=1), --cpus-per-task, --time, --nodes.
# SIGTERM 120 s before the limit: running trials checkpoint, the job requeues and --resume
# continues the sweep (finished trials are kept).
#SBATCH --job-name=xtrain-tune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=12:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=xtrain-tune-%j.out
##SBATCH --partition=gpu
##SBATCH --gres=gpu:4
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$PWD}"
XTRAIN_CONFIG=${XTRAIN_CONFIG:-configs/tune.yaml}
XTRAIN_DATA=${XTRAIN_DATA:?set XTRAIN_DATA to the training store}
XTRAIN_OUT=${XTRAIN_OUT:-runs/tune-${SLURM_JOB_ID:-local}}
source "${XTRAIN_HOME:-$PWD}/slurm/ray_cluster.sh"  # submit from the repository root (or set XTRAIN_HOME)

args=(tune --config "$XTRAIN_CONFIG" --data "$XTRAIN_DATA" --out "$XTRAIN_OUT")
if [[ -n "${XTRAIN_TRIALS:-}" ]]; then args+=(--trials "$XTRAIN_TRIALS"); fi
if [[ "${XTRAIN_GPU:-0}" == 1 ]]; then args+=(--gpu); fi
if [[ -f "$XTRAIN_OUT/results.csv" && -f "$XTRAIN_OUT/best.yaml" ]] && ! grep -q ",interrupted," "$XTRAIN_OUT/results.csv"; then
    echo "tune.sh: $XTRAIN_OUT already finished"; exit 0
fi
if [[ -d "$XTRAIN_OUT/experiment" ]]; then args+=(--resume); fi

run_job tune.sh "${args[@]}" "$@"
