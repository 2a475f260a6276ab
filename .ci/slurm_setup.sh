#!/usr/bin/env bash
# Configure and start a local Slurm (munge + slurmctld + slurmd) on this machine, for
# tests/test_slurm*.py.  Needs root and Debian's munge, slurmctld and slurmd packages
# (apt-get install munge slurmctld slurmd).  Idempotent: a second run finds everything up and
# exits 0.  Exits non-zero with one line on stderr when Slurm cannot be brought up.
#
#   .ci/slurm_setup.sh             one node: this machine (all its CPUs)
#   .ci/slurm_setup.sh --two-node  plus a second node, $NODE2, on this machine: a slurmd in its own
#                                  network namespace (ip netns) and UTS namespace (unshare --uts,
#                                  its own hostname), joined to this one by a veth pair on the
#                                  private subnet $SUBNET.0/24 (this node .1, $NODE2 .2; no route
#                                  anywhere else).  $NODE2 has 1 CPU; this node keeps all of its
#                                  CPUs for the one-node tests (two-node jobs ask 1 CPU per node).
#                                  Munge is shared through its socket (/run/munge), and so is the
#                                  file system.
#   .ci/slurm_setup.sh --down      stop the daemons this script started (by pid file) and remove
#                                  the namespace and the veth pair
# Running the one-node form after --two-node reverts to one node (and removes the namespace).
# When --two-node cannot be set up, the reason goes to $TWO_NODE_ERR (tests/test_slurm_two_node.py
# skips with it) and the script exits 3, leaving the one-node cluster up.
set -euo pipefail

NODE2=${XTRAIN_NODE2:-xtrain-n2}     # the second node's NodeName and hostname
SUBNET=${XTRAIN_NODE2_SUBNET:-10.213.77}  # a /24 nothing else on this machine uses
NETNS=xtrain-n2                      # ip netns name
# the veth pair: "xtv0" on both sides (the $NODE2 end is created inside its namespace), so that XTRAIN_RAY_IFACE=xtv0 names the test network on every node, like ib0 at a site
VETH=xtv0
TWO_NODE_ERR=/run/xtrain-two-node.err
HOSTS_MARK="# xtrain two-node test (.ci/slurm_setup.sh)"

die() { echo "slurm_setup.sh: $*" >&2; exit 1; }
mode=one
case "${1:-}" in
    "") ;;
    --two-node) mode=two ;;
    --down) mode=down ;;
    *) die "unknown option '$1'; use --two-node, --down or nothing (one node)" ;;
esac
[[ $(id -u) == 0 ]] || die "must run as root (it writes /etc/slurm and starts daemons)"
for b in munged slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] || die "$b not found; apt-get install munge slurmctld slurmd"
done
export PATH=/usr/sbin:$PATH

node=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
conf_dir=/etc/slurm
log_dir=/var/log/slurm

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# stop the daemon of a pid file (TERM, then KILL after 10 s) and wait until it is gone
stop_pidfile() {
    local pid
    running "$1" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}
# the second node: its slurmd first (it lives in the namespace), then the namespace and the veth
node2_down() {
    stop_pidfile "/run/slurmd-$NODE2.pid"
    if [[ " $(ip netns list 2>/dev/null | awk '{print $1}' | tr '\n' ' ') " == *" $NETNS "* ]]; then ip netns del "$NETNS"; fi
    if ip link show "$VETH" >/dev/null 2>&1; then ip link del "$VETH" 2>/dev/null || true; fi  # gone with the namespace
    if grep -q "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
        local kept; kept=$(grep -v "$HOSTS_MARK" /etc/hosts)
        printf '%s\n' "$kept" > /etc/hosts  # in place: /etc/hosts may be a bind mount
    fi
}
# the namespace, the veth pair and the addresses; idempotent.  Returns 1 with the reason on stderr.
node2_net_up() {
    local other
    other=$(ip -4 route show "$SUBNET.0/24" 2>/dev/null | grep -v "dev $VETH " || true)
    if [[ -n "$other" ]]; then echo "subnet $SUBNET.0/24 is already routed here ($other); set XTRAIN_NODE2_SUBNET" >&2; return 1; fi
    # (no `... | grep -q` under pipefail: grep exits at the first match, the writer gets SIGPIPE
    # and the pipeline counts as failed)
    [[ " $(ip netns list | awk '{print $1}' | tr '\n' ' ') " == *" $NETNS "* ]] || ip netns add "$NETNS" || return 1
    if ! ip link show "$VETH" >/dev/null 2>&1; then
        ip netns exec "$NETNS" ip link del "$VETH" 2>/dev/null || true  # a half of an old pair
        ip link add "$VETH" type veth peer name "$VETH" netns "$NETNS" || return 1
    fi
    [[ $(ip addr show dev "$VETH") == *"inet $SUBNET.1/"* ]] || ip addr add "$SUBNET.1/24" dev "$VETH" || return 1
    ip link set "$VETH" up || return 1
    # $NODE2 resolves locally: no name look-up for it ever leaves this machine
    grep -q "$HOSTS_MARK" /etc/hosts || echo "$SUBNET.2 $NODE2 $HOSTS_MARK" >> /etc/hosts
    ip netns exec "$NETNS" sh -ec "ip link set lo up
        ip addr show dev $VETH | grep -q 'inet $SUBNET.2/' || ip addr add $SUBNET.2/24 dev $VETH
        ip link set $VETH up" || return 1
    # the two ends reach each other (TCP, inside the subnet only)
    python3 - "$SUBNET" "$NETNS" <<'PY' || return 1
import socket, subprocess, sys
subnet, netns = sys.argv[1], sys.argv[2]
srv = socket.socket(); srv.bind((f"{subnet}.1", 0)); srv.listen(1); srv.settimeout(10)
port = srv.getsockname()[1]
client = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                           f"import socket; socket.create_connection(('{subnet}.1', {port}), timeout=5).close()"])
try:
    srv.accept()[0].close()
except OSError as exc:
    sys.exit(f"no TCP connection from {netns} ({subnet}.2) to {subnet}.1:{port}: {exc}")
finally:
    client.wait(10)
PY
}

if [[ $mode == down ]]; then
    node2_down
    for pidf in /run/slurmd-"$node".pid /run/slurmd.pid /run/slurmctld.pid; do stop_pidfile "$pidf"; done
    echo "slurm_setup.sh: Slurm daemons stopped, namespace $NETNS removed"
    exit 0
fi

# --- munge ---------------------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null; then mungekey --create --force --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
fi
owner=root
id munge >/dev/null 2>&1 && owner=munge
chown -R "$owner:$owner" /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 700 /etc/munge /var/lib/munge /var/log/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ $owner == munge ]]; then runuser -u munge -- munged; else munged --force; fi
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null 2>&1 || die "munged does not answer; see /var/log/munge/munged.log"
fi

# --- the second node's network ---------------------------------------------------------------
two_node_failed=""
if [[ $mode == two ]]; then
    rm -f "$TWO_NODE_ERR"
    if ! err=$(node2_net_up 2>&1); then
        two_node_failed="network namespace set-up failed: $(echo "$err" | tail -3 | tr '\n' ' ')"
        node2_down 2>/dev/null || true
        mode=one
    fi
else
    node2_down
    echo "one-node Slurm (.ci/slurm_setup.sh without --two-node)" > "$TWO_NODE_ERR"
fi

# --- slurm.conf ----------------------------------------------------------------------------
mkdir -p "$conf_dir" "$log_dir" /var/spool/slurmctld
if [[ $mode == two ]]; then
    ctld_host="$node($SUBNET.1)"  # $node resolves to 127.0.0.1 here: $NODE2 must get the veth address
    nodes="NodeName=$node NodeAddr=$SUBNET.1 CPUs=$cpus RealMemory=$mem_mb Weight=1 State=UNKNOWN
NodeName=$NODE2 NodeAddr=$SUBNET.2 NodeHostname=$NODE2 CPUs=1 RealMemory=$((mem_mb / 2)) Weight=2 State=UNKNOWN"
    part_nodes="$node,$NODE2"
else
    ctld_host=$node
    nodes="NodeName=$node CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    part_nodes=$node
fi
conf=$(cat <<CONF
# written by .ci/slurm_setup.sh: a ${mode}-node test cluster
ClusterName=xtrain-ci
SlurmctldHost=$ctld_host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire s (default 120): short for the requeue test
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
# %n: each slurmd of this machine has its own spool, pid and log file
SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
# bf_interval: a requeued job is eligible again after cred_expire, then waits for the next backfill
# pass (default every 30 s: up to 30 s idle per requeue test); a test cluster this small can pass every 2 s
SchedulerParameters=nohold_on_prolog_fail,bf_interval=2
$nodes
PartitionName=debug Nodes=$part_nodes Default=YES MaxTime=INFINITE State=UP
CONF
)
changed=0
if [[ ! -f $conf_dir/slurm.conf ]] || [[ "$(cat $conf_dir/slurm.conf)" != "$conf" ]]; then
    printf '%s\n' "$conf" > "$conf_dir/slurm.conf"
    changed=1
fi

# --- daemons -------------------------------------------------------------------------------
if (( changed )); then
    for pidf in /run/slurmd-"$NODE2".pid /run/slurmd-"$node".pid /run/slurmd.pid /run/slurmctld.pid; do
        stop_pidfile "$pidf"
    done
fi
running /run/slurmctld.pid || slurmctld || die "slurmctld did not start; see $log_dir/slurmctld.log"
running /run/slurmd-"$node".pid || slurmd -N "$node" || die "slurmd did not start; see $log_dir/slurmd-$node.log"
if [[ $mode == two ]] && ! running /run/slurmd-"$NODE2".pid; then
    # its own network namespace (the veth end $SUBNET.2) and UTS namespace (hostname $NODE2);
    # nsenter, not `ip netns exec`: that remounts /sys, hiding /sys/fs/cgroup, and slurmd refuses
    # to start ("No filesystem mounted on /sys/fs/cgroup")
    # slurmd daemonizes inside both, and every job step it starts inherits them
    if ! err=$(nsenter --net=/run/netns/"$NETNS" unshare --uts sh -c "hostname $NODE2 && exec slurmd -N $NODE2" 2>&1); then
        two_node_failed="slurmd -N $NODE2 in namespace $NETNS did not start: $err (see $log_dir/slurmd-$NODE2.log)"
    fi
fi
want=("$node")
[[ $mode == two && -z $two_node_failed ]] && want+=("$NODE2")

t0=$SECONDS
for node_name in "${want[@]}"; do
    state=""
    while (( SECONDS - t0 < 60 )); do
        state=$(sinfo -h -n "$node_name" -o %t 2>/dev/null | head -1 || true)
        case "$state" in
            idle|mix|alloc) break ;;
            down*|drain*|inval*) scontrol update nodename="$node_name" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    case "$state" in
        idle|mix|alloc) ;;
        *) msg="node $node_name is '${state:-unknown}' after 60 s, not idle; see $log_dir/slurmctld.log and $log_dir/slurmd-$node_name.log"
           if [[ $node_name == "$NODE2" ]]; then two_node_failed=$msg; else die "$msg"; fi ;;
    esac
done
if [[ -n $two_node_failed ]]; then
    echo "$two_node_failed" > "$TWO_NODE_ERR"
    echo "slurm_setup.sh: no second node: $two_node_failed" >&2
    exit 3
fi
sinfo -N -h -o "slurm_setup.sh: node %N %t (CPUs=%c RealMemory=%m), partition %P" | sed 's/\*$//'
[[ $mode == two ]] && echo "slurm_setup.sh: $NODE2 is $SUBNET.2 in namespace $NETNS ($node is $SUBNET.1, interface $VETH on both)"
exit 0
