#!/usr/bin/env bash
# Stop the single-node CI Slurm cluster started by .ci/start-slurm.sh.
# Only the daemons recorded in their pid files are stopped.
set -euo pipefail

if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
    exec sudo -E bash "$0" "$@"
fi

log() { echo "[stop-slurm] $*"; }

stop() { # name pidfile
    local name=$1 pidfile=$2 pid
    if [ ! -s "$pidfile" ]; then
        log "$name: no pid file ($pidfile), not running"
        return 0
    fi
    pid=$(cat "$pidfile")
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null \
        || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        log "$name: not running (stale pid file)"
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.5
    done
    log "$name did not exit after 15s, sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd /run/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
log "done"
