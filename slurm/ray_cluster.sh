#!/usr/bin/env bash
# Shared bootstrap of the slurm/*.sh jobs: a private Ray cluster on the allocation.
#   source slurm/ray_cluster.sh; ray_cluster_start; ...; run_xtrain ARGS...; ray_cluster_stop
#
# * activates $XTRAIN_VENV (default: $SLURM_SUBMIT_DIR/.venv),
# * starts the Ray head on this (the first) node and one Ray worker per other node with srun,
#   on free ports and in a temp dir of its own (never the default 6379/8265/52365 and /tmp/ray:
#   another Ray on the node, e.g. a user's or a test session's, is left alone),
# * waits until every node has joined, exports RAY_ADDRESS (xtrain joins it),
# * run_xtrain runs the xtrain command in the background, forwards SIGTERM/SIGUSR1 to it
#   (#SBATCH --signal=B:TERM@120: the time limit's warning) and returns its exit code
#   (3: it checkpointed and asks to be resumed),
# * ray_cluster_stop (also on EXIT) kills exactly the processes these Ray nodes started
#   (by session id; never `ray stop`, which would end every Ray of the user on the node).
set -euo pipefail

XTRAIN_VENV=${XTRAIN_VENV:-${SLURM_SUBMIT_DIR:-$PWD}/.venv}
if [[ ! -x "$XTRAIN_VENV/bin/python" ]]; then
    echo "ray_cluster.sh: no python in XTRAIN_VENV=$XTRAIN_VENV; set XTRAIN_VENV to xtrain's virtualenv" >&2
    exit 2
fi
# shellcheck disable=SC1091
source "$XTRAIN_VENV/bin/activate"
export RAY_USAGE_STATS_ENABLED=0
# A token in ~/.ray (Ray >= 2.59) means clients must use token auth too.
if [[ -z "${RAY_AUTH_MODE:-}" && -f "$HOME/.ray/auth_token" ]]; then export RAY_AUTH_MODE=token; fi

RAY_TMP=${XTRAIN_RAY_TMP:-/tmp/xray-${SLURM_JOB_ID:-$$}}   # short: Ray's socket paths must fit 107 bytes
RAY_HEAD_SID=""
RAY_WORKERS_PID=""
XTRAIN_PID=""

# N distinct free ports: all sockets are held open together, so the kernel cannot hand the
# same port out twice (one port per call can repeat: Ray then refuses to start).
free_ports() { python -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"; }

ray_cluster_start() {
    local nodes head_ip n_nodes cpus gpus
    mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname -s)}")
    n_nodes=${#nodes[@]}
    head_ip=$(hostname -I 2>/dev/null | awk '{print $1}'); head_ip=${head_ip:-127.0.0.1}
    cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
    gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    local p
    read -r -a p <<< "$(free_ports 9)"
    RAY_PORT=${p[0]}
    RAY_DASHBOARD_PORT=${p[1]}
    local ports=(--node-manager-port="${p[2]}" --object-manager-port="${p[3]}"
                 --dashboard-agent-listen-port="${p[4]}" --dashboard-agent-grpc-port="${p[5]}"
                 --metrics-export-port="${p[6]}" --runtime-env-agent-port="${p[7]}"
                 --ray-client-server-port="${p[8]}")
    mkdir -p "$RAY_TMP"
    echo "ray_cluster.sh: head $head_ip:$RAY_PORT (dashboard :$RAY_DASHBOARD_PORT), $n_nodes node(s), temp $RAY_TMP"
    # setsid: the head's processes (and the workers Ray forks) share one new session, which
    # ray_cluster_stop ends; --block keeps `ray start` as that session's leader.
    setsid ray start --head --block --node-ip-address="$head_ip" --port="$RAY_PORT" \
        --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" --include-dashboard=true \
        --num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$RAY_TMP" --disable-usage-stats "${ports[@]}" \
        > "$RAY_TMP/head.log" 2>&1 &
    RAY_HEAD_SID=$!
    disown "$RAY_HEAD_SID"  # stopped by session id below; no "Killed" job notice in the job log
    export RAY_ADDRESS="$head_ip:$RAY_PORT"
    if (( n_nodes > 1 )); then
        # one `ray start --block` per other node; ending this srun step ends them
        srun --nodes=$((n_nodes - 1)) --ntasks=$((n_nodes - 1)) --ntasks-per-node=1 --exclude="${nodes[0]}" \
            --kill-on-bad-exit=1 bash -c "ray start --block --address=$RAY_ADDRESS --num-cpus=$cpus \
            --num-gpus=\$( (nvidia-smi -L 2>/dev/null || true) | grep -c ^GPU || true) --temp-dir=$RAY_TMP --disable-usage-stats" \
            > "$RAY_TMP/workers.log" 2>&1 &
        RAY_WORKERS_PID=$!
    fi
    # wait for every node (ray start returns before the head accepts clients)
    local t0=$SECONDS
    until timeout 30 python - "$n_nodes" <<'PY' 2>/dev/null
import sys, ray
ray.init(address="auto", logging_level="error", log_to_driver=False)
alive = sum(1 for n in ray.nodes() if n["Alive"])
sys.exit(0 if alive >= int(sys.argv[1]) else 1)
PY
    do
        if ! kill -0 "$RAY_HEAD_SID" 2>/dev/null; then
            echo "ray_cluster.sh: the Ray head exited; see $RAY_TMP/head.log" >&2
            tail -20 "$RAY_TMP/head.log" >&2 || true
            return 1
        fi
        if (( SECONDS - t0 > ${XTRAIN_RAY_START_TIMEOUT:-180} )); then
            echo "ray_cluster.sh: Ray did not come up on $n_nodes node(s) in time; see $RAY_TMP/head.log" >&2
            tail -20 "$RAY_TMP/head.log" >&2 || true
            return 1
        fi
        sleep 2
    done
    echo "ray_cluster.sh: $n_nodes node(s) up after $((SECONDS - t0)) s"
}

ray_cluster_stop() {
    local pids
    if [[ -n "$RAY_WORKERS_PID" ]]; then kill "$RAY_WORKERS_PID" 2>/dev/null || true; fi
    if [[ -n "$RAY_HEAD_SID" ]]; then
        for sig in TERM TERM TERM KILL; do
            pids=$(ps -eo pid=,sid= | awk -v s="$RAY_HEAD_SID" '$2 == s {print $1}')
            [[ -z "$pids" ]] && break
            # shellcheck disable=SC2086
            kill -s "$sig" $pids 2>/dev/null || true
            sleep 2
        done
        RAY_HEAD_SID=""
    fi
    if [[ -n "$RAY_WORKERS_PID" ]]; then wait "$RAY_WORKERS_PID" 2>/dev/null || true; RAY_WORKERS_PID=""; fi
    rm -rf "$RAY_TMP" 2>/dev/null || true
}

_forward_signal() {
    echo "ray_cluster.sh: got SIG$1: asking xtrain to checkpoint and stop" >&2
    if [[ -n "$XTRAIN_PID" ]]; then kill -s "$1" "$XTRAIN_PID" 2>/dev/null || true; fi
}

# run_xtrain ARGS...: xtrain in the background (so the batch shell can take the signal), its exit code
run_xtrain() {
    trap '_forward_signal TERM' TERM
    trap '_forward_signal USR1' USR1
    xtrain "$@" &
    XTRAIN_PID=$!
    local rc=0
    while true; do
        rc=0
        wait "$XTRAIN_PID" || rc=$?
        # wait returns >128 when a trapped signal interrupted it: xtrain is still running
        if kill -0 "$XTRAIN_PID" 2>/dev/null; then continue; fi
        break
    done
    XTRAIN_PID=""
    trap - TERM USR1
    return "$rc"
}

# requeue_if_stopped RC: exit code 3 = checkpointed at the time limit / preemption: run again
requeue_if_stopped() {
    local rc=$1
    if [[ "$rc" == 3 && -n "${SLURM_JOB_ID:-}" && "${XTRAIN_REQUEUE:-1}" == 1 ]]; then
        echo "ray_cluster.sh: xtrain stopped with a checkpoint; requeueing job $SLURM_JOB_ID (it resumes)"
        scontrol requeue "$SLURM_JOB_ID" || echo "ray_cluster.sh: scontrol requeue failed; resubmit with the same XTRAIN_OUT" >&2
    fi
}

# run_job NAME ARGS...: the tail of every slurm/*.sh: start the cluster, run `xtrain ARGS`,
# requeue on exit code 3, and exit with xtrain's code (the EXIT trap stops Ray).
run_job() {
    local name=$1 rc=0
    shift
    echo "$name: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: xtrain $*"
    ray_cluster_start
    run_xtrain "$@" || rc=$?
    echo "$name: xtrain exited with $rc"
    requeue_if_stopped "$rc"
    exit "$rc"
}

trap ray_cluster_stop EXIT
