#!/usr/bin/env bash
# Single-node SLURM cluster (this host is the only node) for the cluster tests.
#
#   tests/services/slurm.sh start    install (root, if missing), configure and start munged,
#                                    slurmctld and slurmd; wait until the node accepts jobs
#   tests/services/slurm.sh stop     stop slurmctld, slurmd and munged
#   tests/services/slurm.sh status   exit 0 if the cluster accepts jobs, else 1
#
# No systemd: the daemons are started directly. `start` is idempotent and returns
# quickly when the cluster is already up with the current configuration.
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export LC_ALL=C

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
PARTITION=debug
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
WAIT_S=60
HOST="$(hostname -s)"

say() { echo "slurm: $*"; }
die() { echo "slurm: error: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------- checks

packages_present() {
    local b
    for b in slurmctld slurmd sbatch srun sinfo scontrol munged munge; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

node_state() {
    # Prints the node state as sinfo reports it (e.g. idle, mixed, down*, drained), or nothing.
    timeout 10 sinfo -h -p "$PARTITION" -n "$HOST" -o %T 2>/dev/null | head -n1 || true
}

accepts_jobs() {
    case "$(node_state)" in
        idle | mixed | allocated | completing | planned) return 0 ;;
        *) return 1 ;;
    esac
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

pid_alive() {
    # pid_alive PIDFILE NAME: the process recorded in PIDFILE is running and is NAME.
    local pid
    [ -r "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ "$(ps -p "$pid" -o comm= 2>/dev/null)" = "$2" ] &&
        [[ "$(ps -p "$pid" -o stat= 2>/dev/null)" != Z* ]]
}

running() {
    # A process named NAME is running (zombies do not count).
    local st
    for st in $(ps -C "$1" -o stat= 2>/dev/null); do
        [[ "$st" == Z* ]] || return 0
    done
    return 1
}

# ---------------------------------------------------------------- install / configure

install_packages() {
    packages_present && return 0
    is_root || die "slurm or munge is not installed; as root run: apt-get install slurmctld slurmd slurm-client munge (or run this script as root)"
    local log
    log="$(mktemp /tmp/slurm-apt.XXXXXX)"
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(slurmctld slurmd slurm-client munge)
    if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >"$log" 2>&1; then
        if ! { apt-get update && apt-get install -y --no-install-recommends "${pkgs[@]}"; } >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            die "apt-get install ${pkgs[*]} failed (full log: $log)"
        fi
    fi
    rm -f "$log"
    packages_present || die "packages installed but slurm/munge binaries are still missing"
}

render_conf() {
    local cpus mem_kb mem_mb margin real_mem hw topo def_mem
    cpus="$(nproc)"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    mem_mb=$((mem_kb / 1024))
    # Leave a margin so slurmd never reports less memory than configured (which drains the node).
    margin=$((mem_mb / 10))
    if [ "$margin" -gt 1024 ]; then margin=1024; fi
    real_mem=$((mem_mb - margin))
    if [ "$real_mem" -lt 1 ]; then real_mem=1; fi
    def_mem=$((real_mem / cpus))
    # Use slurmd's view of the socket/core/thread layout when it agrees with nproc.
    topo="CPUs=$cpus"
    hw="$(slurmd -C 2>/dev/null | head -n1 || true)"
    if [[ "$hw" =~ CPUs=([0-9]+)\ Boards=([0-9]+)\ SocketsPerBoard=([0-9]+)\ CoresPerSocket=([0-9]+)\ ThreadsPerCore=([0-9]+) ]] &&
        [ "${BASH_REMATCH[1]}" = "$cpus" ]; then
        topo="CPUs=$cpus Boards=${BASH_REMATCH[2]} SocketsPerBoard=${BASH_REMATCH[3]} CoresPerSocket=${BASH_REMATCH[4]} ThreadsPerCore=${BASH_REMATCH[5]}"
    fi
    cat <<EOF
# Written by tests/services/slurm.sh: single-node cluster for the effscale cluster tests.
ClusterName=effscale
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
# Credential lifetime; also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=15
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem

AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none

StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818

ReturnToService=2
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
MinJobAge=60
KillWait=5
OverTimeLimit=0
InactiveLimit=0
Waittime=0

NodeName=$HOST NodeAddr=127.0.0.1 $topo RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

# Writes slurm.conf when it differs; returns 0 if it changed.
write_conf() {
    local new
    new="$(render_conf)"
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then
        return 1
    fi
    mkdir -p "$CONF_DIR"
    printf '%s\n' "$new" >"$CONF.tmp"
    chmod 644 "$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
    return 0
}

prepare_dirs() {
    mkdir -p "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"
    chown slurm:slurm "$STATE_DIR" "$LOG_DIR" "$RUN_DIR"
    chmod 755 "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"
}

# ---------------------------------------------------------------- daemons

start_munge() {
    munge_ok && return 0
    if [ ! -s "$MUNGE_KEY" ]; then
        mkdir -p "$(dirname "$MUNGE_KEY")"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$(dirname "$MUNGE_KEY")" "$MUNGE_KEY"
    chmod 700 "$(dirname "$MUNGE_KEY")"
    chmod 400 "$MUNGE_KEY"
    mkdir -p "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chmod 755 "$MUNGE_RUN"
    # A stale daemon (socket gone or key changed) is replaced.
    if pid_alive "$MUNGE_RUN/munged.pid" munged; then
        kill "$(cat "$MUNGE_RUN/munged.pid")" 2>/dev/null || true
        sleep 1
    fi
    runuser -u munge -- munged --force >/dev/null 2>&1 ||
        die "munged failed to start; see /var/log/munge/munged.log"
    for _ in $(seq 1 20); do
        munge_ok && return 0
        sleep 0.25
    done
    die "munged started but munge/unmunge does not work; see /var/log/munge/munged.log"
}

stop_slurm_daemons() {
    if running slurmctld; then
        timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    fi
    local name
    for _ in $(seq 1 30); do
        running slurmctld || running slurmd || return 0
        sleep 0.5
    done
    for name in slurmctld slurmd; do
        if pid_alive "$RUN_DIR/$name.pid" "$name"; then
            kill "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 20); do
        running slurmctld || running slurmd || return 0
        sleep 0.5
    done
    die "slurmctld/slurmd did not stop"
}

SLURMD_STARTED_AT=0

start_slurm_daemons() {
    if ! running slurmctld; then
        slurmctld >/dev/null 2>&1 || { tail -n 20 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true; die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"; }
    fi
    if ! running slurmd; then
        SLURMD_STARTED_AT="$(date +%s)"
        slurmd >/dev/null 2>&1 || { tail -n 20 "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true; die "slurmd failed to start; see $LOG_DIR/slurmd.log"; }
    fi
}

slurmd_registered() {
    # The slurmd started by this run has registered with slurmctld (the controller
    # may report the node idle from its saved state before that).
    [ "$SLURMD_STARTED_AT" -eq 0 ] && return 0
    local t
    t="$(timeout 10 scontrol -o show node "$HOST" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2 || true)"
    [ -n "$t" ] && [ "$t" != None ] || return 1
    t="$(date -d "$t" +%s 2>/dev/null)" || return 1
    [ "$t" -ge $((SLURMD_STARTED_AT - 1)) ]
}

wait_for_node() {
    local deadline state last_resume=-10 now
    deadline=$((SECONDS + WAIT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        state="$(node_state)"
        case "$state" in
            idle | mixed | allocated | completing | planned)
                slurmd_registered && return 0
                ;;
            down* | drain* | fail*)
                now=$SECONDS
                if [ $((now - last_resume)) -ge 3 ]; then
                    timeout 10 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
                    last_resume=$now
                fi
                ;;
        esac
        running slurmctld || die "slurmctld exited; see $LOG_DIR/slurmctld.log"
        running slurmd || die "slurmd exited; see $LOG_DIR/slurmd.log"
        sleep 1
    done
    {
        echo "slurm: node $HOST state after ${WAIT_S}s: '${state:-unknown}'"
        timeout 10 sinfo -R 2>/dev/null || true
        tail -n 10 "$LOG_DIR/slurmctld.log" 2>/dev/null || true
        tail -n 10 "$LOG_DIR/slurmd.log" 2>/dev/null || true
    } >&2
    die "node $HOST did not become idle within ${WAIT_S}s"
}

ready_line() {
    local cpus mem
    cpus="$(timeout 10 sinfo -h -n "$HOST" -o %c 2>/dev/null | head -n1 || true)"
    mem="$(timeout 10 sinfo -h -n "$HOST" -o %m 2>/dev/null | head -n1 || true)"
    say "up: node $HOST $(node_state), partition $PARTITION, ${cpus:-?} CPUs, ${mem:-?} MB"
}

# ---------------------------------------------------------------- commands

cmd_start() {
    install_packages
    if ! is_root; then
        accepts_jobs && { ready_line; return 0; }
        die "the cluster is not running and starting it needs root (sudo $0 start)"
    fi
    local changed=0
    write_conf && changed=1
    # Fast path: nothing changed and everything is up.
    if [ "$changed" -eq 0 ] && running slurmctld && running slurmd && munge_ok && accepts_jobs; then
        ready_line
        return 0
    fi
    prepare_dirs
    start_munge
    if [ "$changed" -eq 1 ] && { running slurmctld || running slurmd; }; then
        stop_slurm_daemons
    fi
    start_slurm_daemons
    wait_for_node
    ready_line
}

cmd_stop() {
    if running slurmctld || running slurmd; then
        is_root || die "stopping the cluster needs root"
        stop_slurm_daemons
    fi
    if pid_alive "$MUNGE_RUN/munged.pid" munged; then
        is_root || die "stopping munged needs root"
        kill "$(cat "$MUNGE_RUN/munged.pid")" 2>/dev/null || true
        for _ in $(seq 1 20); do
            pid_alive "$MUNGE_RUN/munged.pid" munged || break
            sleep 0.25
        done
    fi
    say "stopped"
}

cmd_status() {
    if command -v sinfo >/dev/null 2>&1 && accepts_jobs; then
        ready_line
        return 0
    fi
    say "not accepting jobs (node ${HOST}: '$(command -v sinfo >/dev/null 2>&1 && node_state)')"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
