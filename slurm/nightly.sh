#!/usr/bin/env bash
# Nightly: ingest + segment + QC whatever arrived in XTRAIN_INCOMING, then resubmit for the next night.
#   XTRAIN_INCOMING=/beamline/incoming XTRAIN_MODEL=/shared/models/unet.pt XTRAIN_OUT=/shared/nightly \
#     sbatch --begin=02:00 slurm/nightly.sh
# Scheduling: this script resubmits itself with `sbatch --begin=<tomorrow $XTRAIN_NIGHTLY_AT>`
# (works everywhere).  Where scrontab is enabled, use it instead and set XTRAIN_RESUBMIT=0:
#   scrontab -e   ->   #SCRON --time=02:00:00
#                      0 2 * * * XTRAIN_RESUBMIT=0 XTRAIN_INCOMING=... bash /path/to/xtrain/slurm/nightly.sh
# Facility settings: --partition, --gres=gpu:1, --time, --cpus-per-task.
#SBATCH --job-name=xtrain-nightly
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=02:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --open-mode=append
#SBATCH --output=xtrain-nightly-%j.out
##SBATCH --partition=gpu
##SBATCH --gres=gpu:1
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$PWD}"
XTRAIN_INCOMING=${XTRAIN_INCOMING:?set XTRAIN_INCOMING to the folder new scans arrive in}
XTRAIN_MODEL=${XTRAIN_MODEL:?set XTRAIN_MODEL to the model.pt to segment with}
XTRAIN_OUT=${XTRAIN_OUT:?set XTRAIN_OUT to the nightly output folder}
XTRAIN_NIGHTLY_AT=${XTRAIN_NIGHTLY_AT:-02:00}
script="${XTRAIN_HOME:-$PWD}/slurm/nightly.sh"  # not $0: sbatch runs a spool copy of the script

# Resubmit first, so that tonight's failure does not end the schedule.
if [[ "${XTRAIN_RESUBMIT:-1}" == 1 && -n "${SLURM_JOB_ID:-}" ]]; then
    begin=$(date -d "tomorrow $XTRAIN_NIGHTLY_AT" +%Y-%m-%dT%H:%M:%S)
    sbatch --begin="$begin" --export=ALL --job-name=xtrain-nightly "$script" "$@" \
        || echo "nightly.sh: resubmission failed; submit again: sbatch --begin=$begin $script" >&2
fi

source "${XTRAIN_HOME:-$PWD}/slurm/ray_cluster.sh"  # submit from the repository root (or set XTRAIN_HOME)
run_job nightly.sh nightly --watch "$XTRAIN_INCOMING" --model "$XTRAIN_MODEL" --out "$XTRAIN_OUT" --once "$@"
