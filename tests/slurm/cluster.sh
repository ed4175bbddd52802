#!/usr/bin/env bash
# A single-node SLURM cluster for the integration tests: munged, MariaDB, slurmdbd, slurmctld
# and slurmd from Debian's packages (.ci/system-deps installs them; this script installs
# nothing), with every file in DIR, no systemd, no cgroups. Each daemon runs in the foreground
# in the background; its PID goes to DIR/pids, and `stop` ends exactly those PIDs.
#
#   tests/slurm/cluster.sh start DIR   # ~5 s; then: export SLURM_CONF=DIR/slurm.conf
#   tests/slurm/cluster.sh stop DIR
#
# Accounting (slurmdbd + MariaDB) is there for submitit: without sacct it cannot tell a
# cancelled job's state and waits for ever. The scheduler and requeue settings below make a
# job start in about a second and a requeued job come back in about 12 s (instead of minutes).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(realpath -m "$2")

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: $what did not come up within ${seconds}s; logs in $dir/log" >&2
  tail -n 20 "$dir"/log/* >&2 || true
  return 1
}

start_daemon() {  # start_daemon NAME COMMAND...: run COMMAND in the background, record its PID
  local name=$1; shift
  "$@" >"$dir/log/$name.out" 2>&1 &
  echo "$name $!" >>"$dir/pids"
}

stop() {
  [ -f "$dir/pids" ] || return 0
  # the reverse order of start: slurmd, slurmctld, slurmdbd, mariadbd, munged
  tac "$dir/pids" | while read -r name pid; do
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$dir/pids"
}

start() {
  for tool in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$tool" >/dev/null || {
      echo "cluster.sh: $tool not found; install Debian's slurm-wlm slurmdbd mariadb-server" \
           "munge (bash .ci/system-deps)" >&2; exit 1; }
  done
  if [ -f "$dir/pids" ]; then echo "cluster.sh: $dir already holds a cluster; stop it first" >&2
    exit 1; fi
  mkdir -p "$dir"/{log,munge,munge-socket,mysql,spool,state}
  chmod 755 "$dir" "$dir/log"
  setpriv --reuid=munge --regid=munge --clear-groups test -x "$dir" || {
    echo "cluster.sh: the munge user cannot reach $dir; use a dir whose parents are open to" \
         "all (mktemp -d, chmod 755)" >&2; exit 1; }
  trap 'stop' ERR
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

  # munge: its own key and socket, run as the munge user (munged refuses root)
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
  chown -R munge:munge "$dir/munge" "$dir/munge-socket"
  chmod 755 "$dir/munge-socket"  # munged wants its socket's dir open to all
  local socket=$dir/munge-socket/munge.socket
  start_daemon munged setpriv --reuid=munge --regid=munge --init-groups \
    munged --foreground --socket="$socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
    --log-file="$dir/munge/munged.log"
  wait_for 10 munged test -S "$socket"

  # MariaDB: a fresh data dir, a socket in DIR (slurmdbd's client finds it through
  # MYSQL_UNIX_PORT), no TCP, root by unix_socket authentication
  mariadb-install-db --no-defaults --user=root --datadir="$dir/mysql" \
    --auth-root-authentication-method=socket --skip-test-db >"$dir/log/mariadb-install.out" 2>&1
  export MYSQL_UNIX_PORT=$dir/mysql.sock
  start_daemon mariadbd mariadbd --no-defaults --user=root --datadir="$dir/mysql" \
    --socket="$MYSQL_UNIX_PORT" --skip-networking --pid-file="$dir/mysql.pid"
  wait_for 30 MariaDB test -S "$MYSQL_UNIX_PORT"

  cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$socket
DbdHost=localhost
DbdPort=${SLURM_TEST_DBD_PORT:-6819}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
EOF
  chmod 600 "$dir/slurmdbd.conf"
  cat >"$dir/slurm.conf" <<EOF
ClusterName=harness-test
SlurmctldHost=$host
SlurmctldPort=${SLURM_TEST_CTLD_PORT:-6817}
SlurmdPort=${SLURM_TEST_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket,cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=${SLURM_TEST_DBD_PORT:-6819}
AccountingStoragePass=$socket
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
KillWait=5
MpiDefault=none
MailProg=/bin/true
MinJobAge=300
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf  # slurmdbd reads the slurmdbd.conf next to it
  start_daemon slurmdbd slurmdbd -D
  wait_for 30 slurmdbd bash -c "grep -q 'slurmdbd version .* started' '$dir/log/slurmdbd.log'"
  start_daemon slurmctld slurmctld -D -i -f "$SLURM_CONF"
  wait_for 30 slurmctld scontrol ping
  start_daemon slurmd slurmd -D -f "$SLURM_CONF"
  wait_for 30 "node $host" bash -c "sinfo -h -n '$host' -o %t | grep -q idle"
  trap - ERR
  echo "export SLURM_CONF=$SLURM_CONF"
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
