#!/usr/bin/env bash
# xtrain train on a Slurm allocation (Ray head on the first node, workers on the rest).
#   XTRAIN_CONFIG=configs/unet.yaml XTRAIN_DATA=/shared/soc.zarr XTRAIN_OUT=/shared/runs/unet \
#     sbatch slurm/train.sh [extra xtrain train args, e.g. --set optim.lr=3e-4]
# Facility settings to change: --partition, --gres=gpu:N (and XTRAIN_GPU=1: one worker per GPU),
# --cpus-per-task, --mem, --time, --nodes.  A time limit or preemption sends SIGTERM 120 s early:
# xtrain checkpoints, exits 3, and the job requeues itself and resumes from RUN_DIR/last.pt.
#SBATCH --job-name=xtrain-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=xtrain-train-%j.out
##SBATCH --partition=gpu
##SBATCH --gres=gpu:4
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$PWD}"
XTRAIN_CONFIG=${XTRAIN_CONFIG:-configs/unet.yaml}
XTRAIN_DATA=${XTRAIN_DATA:?set XTRAIN_DATA to the training store}
XTRAIN_OUT=${XTRAIN_OUT:-runs/train-${SLURM_JOB_ID:-local}}
source "${XTRAIN_HOME:-$PWD}/slurm/ray_cluster.sh"  # submit from the repository root (or set XTRAIN_HOME)

args=(train --config "$XTRAIN_CONFIG" --data "$XTRAIN_DATA" --out "$XTRAIN_OUT")
if [[ -n "${XTRAIN_WORKERS:-}" ]]; then args+=(--workers "$XTRAIN_WORKERS"); fi
if [[ "${XTRAIN_GPU:-0}" == 1 ]]; then args+=(--gpu); fi
# a requeued (or resubmitted) job continues its run; a finished run is left alone
state=$(python -c 'import json,sys; print(json.load(open(sys.argv[1])).get("state",""))' "$XTRAIN_OUT/status.json" 2>/dev/null || true)
if [[ "$state" == finished ]]; then echo "train.sh: $XTRAIN_OUT already finished"; exit 0; fi
if [[ -f "$XTRAIN_OUT/last.pt" ]]; then args+=(--resume); fi

run_job train.sh "${args[@]}" "$@"
