#!/usr/bin/env bash
# Start (or verify) a single-node Slurm cluster for CI on Debian 12 (bookworm).
#
# - installs Debian's slurmctld/slurmd/slurm-client/munge packages if missing
#   (+ slurmdbd/mariadb-server for job accounting, see SLURM_CI_ACCOUNTING)
# - creates the munge key if missing and starts munged
# - starts MariaDB + slurmdbd so that `sacct` works: submitit reads job states
#   with sacct; without it every job state is UNKNOWN and a job killed before
#   writing its result (timeout, OOM, scancel) would never count as done
# - writes /etc/slurm/slurm.conf for this host (CPUs/memory from this machine)
# - starts slurmctld and slurmd directly as background daemons (no systemd)
# - waits until the node is idle and runs an srun and an `sbatch --wait` job
#
# Environment:
#   SLURM_CI_ACCOUNTING=0   skip MariaDB/slurmdbd (accounting_storage/none; sacct
#                           then fails and submitit reports states as UNKNOWN)
#   SLURM_WAIT_S=60         bound for each wait (daemons up, node idle)
#
# Idempotent: when everything is already installed and running it only checks.
# Works without systemd and without cgroups (proctrack/linuxproc, task/none).
set -euo pipefail

log() { echo "[start-slurm] $*"; }
die() {
    echo "[start-slurm] ERROR: $*" >&2
    for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/slurm/slurmdbd.log \
             /var/log/munge/munged.log /var/log/mysql/error.log; do
        if [ -s "$f" ]; then
            echo "----- last lines of $f -----" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E bash "$0" "$@"
    fi
    die "must be run as root (or with sudo available)"
fi

START_TS=$(date +%s)
WAIT_S=${SLURM_WAIT_S:-60}
ACCOUNTING=${SLURM_CI_ACCOUNTING:-1}
CONF_DIR=/etc/slurm            # sysconfdir of Debian's slurm-wlm 22.05 packages
CONF=$CONF_DIR/slurm.conf
HOST=$(hostname -s)
[ -n "$HOST" ] || die "could not determine the short hostname"

# --------------------------------------------------------------------------
# 1. packages
# --------------------------------------------------------------------------
PKGS=(slurmctld slurmd slurm-client munge)
if [ "$ACCOUNTING" = 1 ]; then
    PKGS+=(slurmdbd mariadb-server)
fi
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing packages: ${missing[*]}"
    apt-get update -qq
    # policy-rc.d in containers (exit 101) stops postinst from starting services;
    # we start the daemons ourselves below either way.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed"
else
    log "packages already installed: ${PKGS[*]}"
fi
for b in slurmctld slurmd munged sinfo srun sbatch scontrol; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || die "$b not found after install"
done
export PATH="$PATH:/usr/sbin:/sbin"

# --------------------------------------------------------------------------
# 2. hostname must resolve (slurmd looks itself up by NodeName)
# --------------------------------------------------------------------------
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    log "adding $HOST to /etc/hosts"
    echo "127.0.0.1 $HOST" >> /etc/hosts
fi

# --------------------------------------------------------------------------
# 3. munge
# --------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
KEY=/etc/munge/munge.key
if [ ! -s "$KEY" ]; then
    log "creating munge key $KEY"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$KEY" --force
    else
        dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none
    fi
fi
chown munge:munge "$KEY"
chmod 0400 "$KEY"

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
else
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
    ok=0
    for _ in $(seq 1 20); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.5
    done
    [ "$ok" = 1 ] || die "munge credential round-trip fails (munged not working)"
fi

# --------------------------------------------------------------------------
# 4. slurm.conf
# --------------------------------------------------------------------------
CPUS=$(nproc)
MEM_TOTAL=$(free -m | awk '/^Mem:/ {print $2}')
# margin: 5% of RAM, at least 512 MiB, so RealMemory never exceeds what slurmd
# detects (which would put the node in INVAL/drain state)
MARGIN=$(( MEM_TOTAL / 20 ))
[ "$MARGIN" -ge 512 ] || MARGIN=512
REAL_MEM=$(( MEM_TOTAL - MARGIN ))
[ "$REAL_MEM" -ge 1024 ] || REAL_MEM=1024

install -d -m 0755 "$CONF_DIR" /var/log/slurm
install -d -m 0755 /var/spool/slurmctld /var/spool/slurmd

DBD_PORT=6819
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm-ci   # local-only CI database (MariaDB listens on localhost only)
if [ "$ACCOUNTING" = 1 ]; then
    ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
AccountingStoragePort=$DBD_PORT"
else
    ACCT_CONF="AccountingStorageType=accounting_storage/none"
fi

NEW_CONF=$(cat <<EOF
# Generated by .ci/start-slurm.sh -- single-node CI cluster (no systemd, no cgroups)
ClusterName=ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups / systemd in CI containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT_CONF
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
MinJobAge=300
Waittime=0
NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)

write_if_changed() { # path mode content -> returns 0 if written
    if [ -f "$1" ] && [ "$(cat "$1")" = "$3" ]; then
        log "$1 unchanged"
        return 1
    fi
    log "writing $1"
    ( umask 077; printf '%s\n' "$3" > "$1" )
    chmod "$2" "$1"
    return 0
}

CONF_CHANGED=0
DBD_CONF_CHANGED=0
log "node: NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MEM (MemTotal ${MEM_TOTAL} MiB - ${MARGIN} margin)"
if write_if_changed "$CONF" 0644 "$NEW_CONF"; then CONF_CHANGED=1; fi

if [ "$ACCOUNTING" = 1 ]; then
    NEW_DBD_CONF=$(cat <<EOF
# Generated by .ci/start-slurm.sh -- slurmdbd for the single-node CI cluster
AuthType=auth/munge
DbdHost=$HOST
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
)
    # slurmdbd refuses a slurmdbd.conf readable by others
    if write_if_changed "$CONF_DIR/slurmdbd.conf" 0600 "$NEW_DBD_CONF"; then DBD_CONF_CHANGED=1; fi
    chown root:root "$CONF_DIR/slurmdbd.conf"
fi

# --------------------------------------------------------------------------
# 5. daemons
# --------------------------------------------------------------------------
pid_alive() { # pidfile comm
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
stop_pid() { # pidfile
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

if [ "$CONF_CHANGED" = 1 ]; then
    # configuration changed under running daemons: restart them
    for d in slurmd slurmctld; do
        if pid_alive "/run/$d.pid" "$d"; then
            log "restarting $d (config changed)"
            stop_pid "/run/$d.pid"
        fi
    done
fi

if [ "$ACCOUNTING" = 1 ]; then
    # ---- MariaDB (storage for slurmdbd) ----
    install -d -o mysql -g root -m 0755 /run/mysqld
    install -d -o mysql -g adm -m 2750 /var/log/mysql
    if mariadb-admin --silent ping >/dev/null 2>&1; then
        log "MariaDB already running"
    else
        if [ ! -d /var/lib/mysql/mysql ]; then
            log "initialising MariaDB data directory"
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null \
                || die "mariadb-install-db failed"
        fi
        log "starting MariaDB"
        setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
            --pid-file=/run/mysqld/mysqld.pid --log-error=/var/log/mysql/error.log \
            </dev/null >/dev/null 2>&1 &
        ok=0
        for _ in $(seq 1 "$WAIT_S"); do
            if mariadb-admin --silent ping >/dev/null 2>&1; then ok=1; break; fi
            sleep 1
        done
        [ "$ok" = 1 ] || die "MariaDB did not come up within ${WAIT_S}s"
    fi
    mariadb <<SQL || die "could not create the accounting database/user"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL

    # ---- slurmdbd ----
    if [ "$DBD_CONF_CHANGED" = 1 ] && pid_alive /run/slurmdbd.pid slurmdbd; then
        log "restarting slurmdbd (config changed)"
        stop_pid /run/slurmdbd.pid
    fi
    if pid_alive /run/slurmdbd.pid slurmdbd; then
        log "slurmdbd already running (pid $(cat /run/slurmdbd.pid))"
    else
        log "starting slurmdbd"
        slurmdbd || die "slurmdbd failed to start"
    fi
    ok=0
    for _ in $(seq 1 "$WAIT_S"); do
        if sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; then ok=1; break; fi
        sleep 1
    done
    [ "$ok" = 1 ] || die "slurmdbd did not answer 'sacctmgr list cluster' within ${WAIT_S}s"
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx ci; then
        log "registering cluster 'ci' in the accounting database"
        sacctmgr -i add cluster ci >/dev/null || die "sacctmgr add cluster ci failed"
    fi
fi

if pid_alive /run/slurmctld.pid slurmctld; then
    log "slurmctld already running (pid $(cat /run/slurmctld.pid))"
else
    log "starting slurmctld"
    slurmctld || die "slurmctld failed to start"
fi
ok=0
for _ in $(seq 1 "$WAIT_S"); do
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then ok=1; break; fi
    sleep 1
done
[ "$ok" = 1 ] || die "slurmctld did not answer 'scontrol ping' within ${WAIT_S}s"

if pid_alive /run/slurmd.pid slurmd; then
    log "slurmd already running (pid $(cat /run/slurmd.pid))"
else
    log "starting slurmd"
    slurmd || die "slurmd failed to start"
fi

# --------------------------------------------------------------------------
# 6. wait for the node to be idle
# --------------------------------------------------------------------------
log "waiting (max ${WAIT_S}s) for node $HOST to become idle"
state=""
resumed=0
deadline=$(( $(date +%s) + WAIT_S ))
while :; do
    state=$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            if [ "$resumed" -lt 3 ] && pid_alive /run/slurmd.pid slurmd; then
                reason=$(sinfo -h -N -n "$HOST" -o '%E' 2>/dev/null || true)
                log "node state '$state' (reason: ${reason:-none}); resuming it"
                scontrol update nodename="$HOST" state=resume 2>/dev/null \
                    || scontrol update nodename="$HOST" state=idle 2>/dev/null || true
                resumed=$((resumed + 1))
            fi
            ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        sinfo -N -l >&2 || true
        scontrol show node "$HOST" >&2 || true
        die "node $HOST not idle after ${WAIT_S}s (state: '${state:-unknown}')"
    fi
    sleep 1
done
log "node $HOST is $state"

# --------------------------------------------------------------------------
# 7. verify: srun + sbatch --wait
# --------------------------------------------------------------------------
out=$(timeout 60 srun -N1 -n1 -t 1 hostname 2>&1) || die "srun -N1 -n1 hostname failed: $out"
[ "$out" = "$(hostname)" ] || [ "$out" = "$HOST" ] || die "srun printed '$out', expected '$HOST'"
log "srun ok: $out"

tmpd=$(mktemp -d /tmp/slurm-ci-check.XXXXXX)
chmod 0755 "$tmpd"
jobid=$(timeout 90 sbatch --parsable --wait -t 1 -o "$tmpd/out.txt" -J ci-check \
    --wrap 'echo "sbatch ok on $(hostname) job $SLURM_JOB_ID"') \
    || die "sbatch --wait test job failed"
jobid=${jobid%%;*}
grep -q 'sbatch ok' "$tmpd/out.txt" 2>/dev/null || die "sbatch job output missing: $(cat "$tmpd/out.txt" 2>&1)"
log "$(cat "$tmpd/out.txt")"
rm -rf "$tmpd"

if [ "$ACCOUNTING" = 1 ]; then
    # submitit polls `sacct` for job states: check the job shows up there
    acct_state=""
    for _ in $(seq 1 30); do
        acct_state=$(sacct -n -X -P -j "$jobid" -o State 2>/dev/null | head -n1 || true)
        [ "$acct_state" = COMPLETED ] && break
        sleep 1
    done
    [ "$acct_state" = COMPLETED ] || die "sacct reports state '${acct_state}' for job $jobid, expected COMPLETED"
    log "sacct ok: job $jobid $acct_state"
fi

sinfo
log "Slurm is up (took $(( $(date +%s) - START_TS ))s)"
