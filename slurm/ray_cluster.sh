#!/usr/bin/env bash
# Shared bootstrap of the slurm/*.sh jobs: a private Ray cluster on the allocation.
#   source slurm/ray_cluster.sh; ray_cluster_start; ...; run_xtrain ARGS...; ray_cluster_stop
#
# * activates $XTRAIN_VENV (default: $SLURM_SUBMIT_DIR/.venv),
# * starts the Ray head on this (the first) node, then one Ray worker node per other node with
#   srun (ray_worker_node), each on free ports and in a temp dir of its own (never the default
#   6379/8265/52365 and /tmp/ray: another Ray on the node, e.g. a user's or a test session's,
#   is left alone), each bound to the address the other nodes reach it at,
# * the site's settings: XTRAIN_RAY_IFACE (the network Ray and torch.distributed use),
#   XTRAIN_RAY_PORTS=LO-HI (every Ray port from a firewall's range), XTRAIN_RAY_TMP (node-local),
# * waits until every node has joined, exports RAY_ADDRESS (xtrain joins it),
# * run_xtrain runs the xtrain command in the background, forwards SIGTERM/SIGUSR1 to it
#   (#SBATCH --signal=B:TERM@120: the time limit's warning) and returns its exit code
#   (3: it checkpointed and asks to be resumed),
# * ray_cluster_stop (also on EXIT) kills exactly the processes these Ray nodes started, on
#   every node (by session id; never `ray stop`, which would end every Ray of the user on the node).
set -euo pipefail

XTRAIN_VENV=${XTRAIN_VENV:-${SLURM_SUBMIT_DIR:-$PWD}/.venv}
if [[ ! -x "$XTRAIN_VENV/bin/python" ]]; then
    echo "ray_cluster.sh: no python in XTRAIN_VENV=$XTRAIN_VENV; set XTRAIN_VENV to xtrain's virtualenv" >&2
    exit 2
fi
# shellcheck disable=SC1091
source "$XTRAIN_VENV/bin/activate"
export RAY_USAGE_STATS_ENABLED=0
# A raylet dies ("Timed out waiting for file .../dashboard_agent_listen_port_...") when its Python
# agents take longer than Ray's default to start: a busy node, or a venv on a cold shared file
# system.  Give them 2 minutes.
export RAY_agent_register_timeout_ms=${RAY_agent_register_timeout_ms:-120000}
# A token in ~/.ray (Ray >= 2.59) means clients must use token auth too.
if [[ -z "${RAY_AUTH_MODE:-}" && -f "$HOME/.ray/auth_token" ]]; then export RAY_AUTH_MODE=token; fi

RAY_CLUSTER_SH=$(realpath "${BASH_SOURCE[0]}")
RAY_TMP=${XTRAIN_RAY_TMP:-/tmp/xray-${SLURM_JOB_ID:-$$}}   # short: Ray's socket paths must fit 107 bytes
RAY_SID=""           # session id of this node's `ray start` (setsid): everything it started
RAY_WORKERS_PID=""   # the srun step running ray_worker_node on the other nodes
XTRAIN_PID=""

# --- the settings a facility makes (XTRAIN_RAY_IFACE, XTRAIN_RAY_PORTS, XTRAIN_RAY_TMP) --------
if [[ -n "${XTRAIN_RAY_PORTS:-}" ]]; then
    if [[ ! "$XTRAIN_RAY_PORTS" =~ ^([0-9]+)-([0-9]+)$ ]] || (( BASH_REMATCH[1] < 1024 || BASH_REMATCH[2] > 65535 \
            || BASH_REMATCH[2] - BASH_REMATCH[1] + 1 < 200 )); then
        echo "ray_cluster.sh: XTRAIN_RAY_PORTS=$XTRAIN_RAY_PORTS is not a range LO-HI of at least 200 ports within 1024-65535; e.g. XTRAIN_RAY_PORTS=20000-20999" >&2
        exit 2
    fi
    RAY_PORTS_LO=${BASH_REMATCH[1]} RAY_PORTS_HI=${BASH_REMATCH[2]}
fi

# N distinct free ports: all sockets are held open together, so the kernel cannot hand the
# same port out twice (one port per call can repeat: Ray then refuses to start).  With
# XTRAIN_RAY_PORTS=LO-HI they come from LO..LO+99 (the rest of the range is for Ray's workers).
free_ports() { python - "$1" "${RAY_PORTS_LO:-}" <<'PY'
import random, socket, sys
n, lo = int(sys.argv[1]), sys.argv[2]
candidates = random.sample(range(int(lo), int(lo) + 100), 100) if lo else [0] * n
socks = []
for port in candidates:
    s = socket.socket()
    try:
        s.bind(("", port))
    except OSError:
        s.close()
        continue
    socks.append(s)
    if len(socks) == n:
        break
if len(socks) < n:
    sys.exit(f"ray_cluster.sh: only {len(socks)} of the {n} ports Ray needs are free in {lo}-{int(lo) + 99} "
             f"on {socket.gethostname()}; choose another XTRAIN_RAY_PORTS range")
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Ray's worker processes take ports from --min/--max-worker-port (default 10002-19999)
worker_port_args() {
    if [[ -n "${RAY_PORTS_LO:-}" ]]; then echo "--min-worker-port=$((RAY_PORTS_LO + 100)) --max-worker-port=$RAY_PORTS_HI"; fi
}

# node_ip [PEER]: the IPv4 address Ray binds on this node and announces to the others.
#   XTRAIN_RAY_IFACE=ib0: that interface's address (the same name on every node);
#   else with PEER (another node of the job): the source address of this node's route to PEER,
#     i.e. the address PEER can answer to (a route lookup: a UDP connect sends nothing);
#   else (one node): 127.0.0.1 (nothing outside the node needs to reach it).
# Not `hostname -I` alone on several nodes: its first address may be on a network the other
# nodes cannot reach (a management or NAT interface), and the hostname may resolve to 127.0.0.1.
node_ip() {
    local ip=""
    if [[ -n "${XTRAIN_RAY_IFACE:-}" ]]; then
        ip=$(ip -4 -o addr show dev "$XTRAIN_RAY_IFACE" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
        if [[ -z "$ip" ]]; then
            echo "ray_cluster.sh: XTRAIN_RAY_IFACE=$XTRAIN_RAY_IFACE has no IPv4 address on $(hostname -s); set it to an interface every node has (see ip -4 addr)" >&2
            return 2
        fi
    elif [[ -n "${1:-}" ]]; then
        ip=$(python -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((socket.gethostbyname(sys.argv[1]), 9))
print(s.getsockname()[0])' "$1") || { echo "ray_cluster.sh: no route from $(hostname -s) to $1; set XTRAIN_RAY_IFACE" >&2; return 2; }
    else
        ip=127.0.0.1
    fi
    echo "$ip"
}

# torch.distributed (gloo, NCCL's bootstrap) picks a network of its own: on nodes with several,
# point it at the interface carrying Ray's address, unless the site set it.
export_socket_ifname() {
    local ifname
    ifname=$( (ip -4 -o addr show 2>/dev/null || true) | awk -v ip="$1" '{split($4, a, "/"); if (a[1] == ip) {print $2; exit}}')
    if [[ -z "$ifname" ]]; then return 0; fi
    export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$ifname} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$ifname}
}

gpu_count() { (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true; }

ray_cluster_start() {
    local nodes head_ip n_nodes peer=""
    mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname -s)}")
    n_nodes=${#nodes[@]}
    if (( n_nodes > 1 )); then  # the address Slurm reaches another node of the job at
        peer=$( (scontrol show node "${nodes[1]}" 2>/dev/null || true) | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
        peer=${peer:-${nodes[1]}}
    fi
    head_ip=$(node_ip "$peer") || exit 2
    export_socket_ifname "$head_ip"
    local p ports
    read -r -a p <<< "$(free_ports 9)"
    (( ${#p[@]} == 9 )) || exit 2
    RAY_PORT=${p[0]}
    RAY_DASHBOARD_PORT=${p[1]}
    ports=(--node-manager-port="${p[2]}" --object-manager-port="${p[3]}"
           --dashboard-agent-listen-port="${p[4]}" --dashboard-agent-grpc-port="${p[5]}"
           --metrics-export-port="${p[6]}" --runtime-env-agent-port="${p[7]}"
           --ray-client-server-port="${p[8]}")
    # shellcheck disable=SC2207
    ports+=($(worker_port_args))
    mkdir -p "$RAY_TMP"
    echo "ray_cluster.sh: head $head_ip:$RAY_PORT on $(hostname -s) (dashboard :$RAY_DASHBOARD_PORT), $n_nodes node(s), temp $RAY_TMP"
    # setsid: the head's processes (and the workers Ray forks) share one new session, which
    # ray_cluster_stop ends; --block keeps `ray start` as that session's leader.
    setsid ray start --head --block --node-ip-address="$head_ip" --port="$RAY_PORT" \
        --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" --include-dashboard=true \
        --num-cpus="${SLURM_CPUS_ON_NODE:-$(nproc)}" --num-gpus="$(gpu_count)" --temp-dir="$RAY_TMP" \
        --disable-usage-stats "${ports[@]}" > "$RAY_TMP/head.log" 2>&1 &
    RAY_SID=$!
    disown "$RAY_SID"  # stopped by session id below; no "Killed" job notice in the job log
    export RAY_ADDRESS="$head_ip:$RAY_PORT"
    local t0=$SECONDS
    # the head first: its GCS must be up before a worker node can register (a raylet that has
    # not registered within 30 s exits), and on a small node they would compete for the CPUs
    _wait_for "$RAY_TMP/head.log" 1 || return 1
    if (( n_nodes > 1 )); then
        # one Ray worker node per other node (ray_worker_node below); ending this step ends them
        srun --job-name=xtrain-ray-workers --nodes=$((n_nodes - 1)) --ntasks=$((n_nodes - 1)) \
            --ntasks-per-node=1 --exclude="$(hostname -s)" --kill-on-bad-exit=1 \
            bash -c 'source "$0"; ray_worker_node' "$RAY_CLUSTER_SH" > "$RAY_TMP/workers.log" 2>&1 &
        RAY_WORKERS_PID=$!
        _wait_for "$RAY_TMP/workers.log" $((n_nodes - 1)) || return 1
    fi
    # and the cluster sees every node (one driver connection: each costs a few CPU-seconds)
    until timeout 60 python - "$n_nodes" <<'PY' 2>/dev/null
import sys, ray
ray.init(address="auto", logging_level="error", log_to_driver=False)
alive = sum(1 for n in ray.nodes() if n["Alive"])
sys.exit(0 if alive >= int(sys.argv[1]) else 1)
PY
    do
        _check_alive || return 1
        sleep 2
    done
    echo "ray_cluster.sh: $n_nodes node(s) up after $((SECONDS - t0)) s"
}

# _wait_for LOG N: until `ray start` has said "Ray runtime started" N times in LOG (it says so
# once its node has registered with the head), while the head and the worker nodes live
_wait_for() {
    local n
    while true; do
        n=$(grep -c "Ray runtime started" "$1" 2>/dev/null) || n=0
        (( ${n:-0} >= $2 )) && return 0
        _check_alive || return 1
        sleep 1
    done
}

_check_alive() {
    if ! kill -0 "$RAY_SID" 2>/dev/null; then
        echo "ray_cluster.sh: the Ray head exited; see $RAY_TMP/head.log" >&2
        tail -20 "$RAY_TMP/head.log" >&2 || true
        return 1
    fi
    if [[ -n "$RAY_WORKERS_PID" ]] && ! kill -0 "$RAY_WORKERS_PID" 2>/dev/null; then
        echo "ray_cluster.sh: the Ray worker nodes exited:" >&2
        tail -20 "$RAY_TMP/workers.log" >&2 || true
        return 1
    fi
    if (( SECONDS - t0 > ${XTRAIN_RAY_START_TIMEOUT:-300} )); then
        echo "ray_cluster.sh: Ray did not come up in ${XTRAIN_RAY_START_TIMEOUT:-300} s; see $RAY_TMP/head.log, $RAY_TMP/workers.log" >&2
        tail -20 "$RAY_TMP/head.log" "$RAY_TMP/workers.log" >&2 || true
        return 1
    fi
}

# ray_worker_node: runs (via srun) on every node but the head's: a Ray worker node that joins
# RAY_ADDRESS, in a session of its own, with its own free ports and temp dir (node-local disk).
# On SIGTERM (srun passes on the end of the step) or exit it stops that session by session id:
# processes that outlive `ray start` are re-parented to init and escape Slurm's process
# tracking (proctrack/linuxproc), so the step's end alone would leave them running.
ray_worker_node() {
    local ip p ports
    ip=$(node_ip "${RAY_ADDRESS%:*}") || exit 2
    export_socket_ifname "$ip"
    read -r -a p <<< "$(free_ports 6)"
    (( ${#p[@]} == 6 )) || exit 2
    ports=(--node-manager-port="${p[0]}" --object-manager-port="${p[1]}"
           --dashboard-agent-listen-port="${p[2]}" --dashboard-agent-grpc-port="${p[3]}"
           --metrics-export-port="${p[4]}" --runtime-env-agent-port="${p[5]}")
    # shellcheck disable=SC2207
    ports+=($(worker_port_args))
    # a folder of its own under the head's: XTRAIN_RAY_TMP is node-local at a site, but where
    # nodes share /tmp (this CI's two nodes on one machine) they must not share Ray's sockets
    RAY_TMP="$RAY_TMP/$(hostname -s)"
    mkdir -p "$RAY_TMP"
    trap 'exit 143' TERM INT  # the EXIT trap (ray_cluster_stop) ends the session
    local attempt rc
    for attempt in 1 2 3; do
        echo "ray_cluster.sh: worker $ip on $(hostname -s) joins $RAY_ADDRESS, temp $RAY_TMP"
        setsid ray start --block --address="$RAY_ADDRESS" --node-ip-address="$ip" \
            --num-cpus="${SLURM_CPUS_ON_NODE:-$(nproc)}" --num-gpus="$(gpu_count)" --temp-dir="$RAY_TMP" \
            --disable-usage-stats "${ports[@]}" &
        RAY_SID=$!
        rc=0
        wait "$RAY_SID" || rc=$?
        # `ray start --block` returns only when its node failed, e.g. "The current node timed out
        # during startup" (its raylet has 30 s to register with the head: a busy head is slower)
        stop_session "$RAY_SID"
        RAY_SID=""
        echo "ray_cluster.sh: the Ray worker node on $(hostname -s) exited with $rc (attempt $attempt of 3)" >&2
        sleep 5
    done
    return 1
}

ray_cluster_stop() {
    # the other nodes first: SIGTERM to the step's processes; ray_worker_node then stops its
    # session.  (SIGTERM to srun itself makes Slurm SIGKILL the step: no clean-up on the nodes.)
    if [[ -n "$RAY_WORKERS_PID" ]]; then
        local step
        step=$(squeue -s -h -j "${SLURM_JOB_ID:-0}" -o "%i %j" 2>/dev/null | awk '$2 == "xtrain-ray-workers" {print $1; exit}')
        if [[ -n "$step" ]]; then scancel --signal=TERM "$step" 2>/dev/null || true; fi
        for _ in $(seq 150); do kill -0 "$RAY_WORKERS_PID" 2>/dev/null || break; sleep 0.2; done
        kill "$RAY_WORKERS_PID" 2>/dev/null || true
        wait "$RAY_WORKERS_PID" 2>/dev/null || true
        RAY_WORKERS_PID=""
    fi
    if [[ -n "$RAY_SID" ]]; then stop_session "$RAY_SID"; RAY_SID=""; fi
    rm -rf "$RAY_TMP" 2>/dev/null || true
}

# stop_session SID: end every process of session SID (TERM three times 2 s apart, then KILL),
# returning as soon as none is left (Ray's processes usually go within a second of the first TERM)
stop_session() {
    local pids sig
    for sig in TERM TERM TERM KILL; do
        pids=$(_session_pids "$1")
        [[ -z "$pids" ]] && return 0
        # shellcheck disable=SC2086
        kill -s "$sig" $pids 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            sleep 0.2
            [[ -z "$(_session_pids "$1")" ]] && return 0
        done
    done
}

_session_pids() { ps -eo pid=,sid= | awk -v s="$1" '$2 == s {print $1}'; }

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
