#!/usr/bin/env bash
# Configure and start a single-node Slurm (munge + slurmctld + slurmd) on this machine, for
# tests/test_slurm.py.  Idempotent: a second run finds everything up and exits 0.  Needs root
# and Debian's munge, slurmctld and slurmd packages (apt-get install munge slurmctld slurmd).
# Exits non-zero with one line on stderr when Slurm cannot be brought up.
set -euo pipefail

die() { echo "slurm_setup.sh: $*" >&2; exit 1; }
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

# --- slurm.conf ----------------------------------------------------------------------------
mkdir -p "$conf_dir" "$log_dir" /var/spool/slurmctld /var/spool/slurmd
conf=$(cat <<CONF
# written by .ci/slurm_setup.sh: a one-node test cluster
ClusterName=xtrain-ci
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire s (default 120): short for the requeue test
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
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
SchedulerParameters=nohold_on_prolog_fail
NodeName=$node CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
)
changed=0
if [[ ! -f $conf_dir/slurm.conf ]] || [[ "$(cat $conf_dir/slurm.conf)" != "$conf" ]]; then
    printf '%s\n' "$conf" > "$conf_dir/slurm.conf"
    changed=1
fi

# --- daemons -------------------------------------------------------------------------------
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if (( changed )); then
    for pidf in /run/slurmd.pid /run/slurmctld.pid; do
        if running $pidf; then kill "$(cat $pidf)"; sleep 1; fi
    done
fi
running /run/slurmctld.pid || slurmctld || die "slurmctld did not start; see $log_dir/slurmctld.log"
running /run/slurmd.pid || slurmd || die "slurmd did not start; see $log_dir/slurmd.log"

for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mix|alloc) echo "slurm_setup.sh: node $node $state (CPUs=$cpus RealMemory=$mem_mb), partition debug"; exit 0 ;;
        down*|drain*|inval*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
die "node $node is '${state:-unknown}' after 60 s, not idle; see $log_dir/slurmctld.log and $log_dir/slurmd.log"
