#!/usr/bin/env bash
# local/services.sh — run OffLog's three servers natively on 127.0.0.1.
#
#   gearmand  (Debian gearman-job-server 1.1.20, persistent sqlite queue)
#   memcached (Debian memcached 1.6)
#   MariaDB   (Debian mariadb-server 10.11, private datadir, user offlog/offlog)
#
# Usage: local/services.sh up|down|status|install
#
#   install  apt-get install the Debian packages if anything is missing
#   up       install if needed, start what is not running, wait until each
#            answers, create database/user `offlog` (idempotent)
#   down     stop the daemons this script started (by PID file only)
#   status   one line per daemon; exit 0 when all three run, 3 otherwise
#
# Environment (defaults):
#   OFFLOG_DATA_DIR        <repo>/.data   pid files, logs, queue db, datadir
#   OFFLOG_GEARMAN_PORT    4730
#   OFFLOG_MEMCACHED_PORT  11211
#   OFFLOG_MEMCACHED_MB    512
#   OFFLOG_MYSQL_PORT      3306
#   OFFLOG_MYSQL_BUFFER_POOL_MB  (MariaDB's default, 128)  InnoDB buffer pool
#   OFFLOG_SERVICES_TIMEOUT 60            seconds to wait for each daemon
#
# Nothing here uses the system services (systemd / init.d): every daemon
# runs from its own directory under the data dir, listens on 127.0.0.1 only,
# and is stopped only through the PID file written when it was started.
# The MySQL credentials offlog/offlog are a documented local default.
set -euo pipefail

# Debian keeps gearmand and mariadbd in /usr/sbin, which a non-login shell
# may not have on PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname -- "$SCRIPT_DIR")
DATA_DIR=${OFFLOG_DATA_DIR:-$REPO_ROOT/.data}
[[ $DATA_DIR == /* ]] || DATA_DIR="$PWD/$DATA_DIR"   # daemons need absolute paths

GEARMAN_PORT=${OFFLOG_GEARMAN_PORT:-4730}
MEMCACHED_PORT=${OFFLOG_MEMCACHED_PORT:-11211}
MEMCACHED_MB=${OFFLOG_MEMCACHED_MB:-512}
MYSQL_PORT=${OFFLOG_MYSQL_PORT:-3306}
MYSQL_BUFFER_POOL_MB=${OFFLOG_MYSQL_BUFFER_POOL_MB:-}
TIMEOUT=${OFFLOG_SERVICES_TIMEOUT:-60}

GEARMAN_DIR="$DATA_DIR/gearmand"
MEMCACHED_DIR="$DATA_DIR/memcached"
MYSQL_DIR="$DATA_DIR/mysql"
MYSQL_DATADIR="$MYSQL_DIR/data"
MYSQL_SOCKET="$MYSQL_DIR/mysqld.sock"

SUDO=
APT_PACKAGES=(gearman-job-server gearman-tools memcached mariadb-server mariadb-client php-cli php-gearman php-fpm phpunit composer)

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

check_int() { # name value min max
  [[ $2 =~ ^[0-9]+$ ]] && (( 10#$2 >= $3 && 10#$2 <= $4 )) ||
    die "$1 must be an integer between $3 and $4 (got '$2')"
}
check_int OFFLOG_GEARMAN_PORT "$GEARMAN_PORT" 1 65535
check_int OFFLOG_MEMCACHED_PORT "$MEMCACHED_PORT" 1 65535
check_int OFFLOG_MYSQL_PORT "$MYSQL_PORT" 1 65535
check_int OFFLOG_MEMCACHED_MB "$MEMCACHED_MB" 8 1048576
check_int OFFLOG_SERVICES_TIMEOUT "$TIMEOUT" 1 3600
[[ -z $MYSQL_BUFFER_POOL_MB ]] || check_int OFFLOG_MYSQL_BUFFER_POOL_MB "$MYSQL_BUFFER_POOL_MB" 8 1048576

# First command found among the candidates (MariaDB ships mysql* aliases).
pick() { local c; for c in "$@"; do command -v "$c" 2>/dev/null && return 0; done; return 1; }

# ---------------------------------------------------------------- install --

missing_tools() {
  local c
  for c in gearmand gearman gearadmin memcached setsid; do
    command -v "$c" >/dev/null 2>&1 || echo "$c"
  done
  pick mariadbd mysqld >/dev/null || echo mariadbd
  pick mariadb-install-db mysql_install_db >/dev/null || echo mariadb-install-db
  pick mariadb-admin mysqladmin >/dev/null || echo mariadb-admin
  pick mariadb mysql >/dev/null || echo mariadb
  # No `grep -q` here: with pipefail, grep quitting early can SIGPIPE php.
  if ! command -v php >/dev/null 2>&1; then
    echo php
  elif ! php -m 2>/dev/null | grep -i '^gearman$' >/dev/null; then
    echo php-gearman
  fi
  # The PHP client's tests: PHPUnit, and php-fpm for fastcgi_finish_request.
  command -v phpunit >/dev/null 2>&1 || echo phpunit
  command -v composer >/dev/null 2>&1 || echo composer
  pick php-fpm php-fpm8.2 >/dev/null || echo php-fpm
}

POLICY_RC_D=/usr/sbin/policy-rc.d
POLICY_MARK='# offlog local/services.sh: temporary, removed after apt-get install'
remove_policy_rc_d() {
  if [[ -f $POLICY_RC_D ]] && grep -qF "$POLICY_MARK" "$POLICY_RC_D" 2>/dev/null; then
    $SUDO rm -f "$POLICY_RC_D"
  fi
}

cmd_install() {
  local missing
  missing=$(missing_tools | tr '\n' ' ')
  if [[ -z ${missing// /} ]]; then
    return 0
  fi
  log "missing: ${missing% } — installing Debian packages: ${APT_PACKAGES[*]}"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${APT_PACKAGES[*]} by hand (Debian 12 package names)"
  if (( EUID != 0 )); then
    command -v sudo >/dev/null 2>&1 || die "installing packages needs root (or sudo)"
    SUDO=sudo
  fi
  # Keep apt from starting the system services: on a machine with an init
  # system they would take ports 4730/11211/3306 before we can. Only when no
  # policy is in place already (Docker images ship one that exits 101).
  if [[ ! -e $POLICY_RC_D ]]; then
    trap remove_policy_rc_d EXIT
    printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" | $SUDO tee "$POLICY_RC_D" >/dev/null
    $SUDO chmod 755 "$POLICY_RC_D"
  fi
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${APT_PACKAGES[@]}"
  remove_policy_rc_d
  trap - EXIT
  missing=$(missing_tools | tr '\n' ' ')
  [[ -z ${missing// /} ]] || die "still missing after apt-get install: $missing"
  log "packages installed"
}

# ------------------------------------------------------------ process utils --

# Succeed if process $1 exists, is not a zombie and (when $2 is given) runs
# the program named $2.
proc_alive() {
  local pid=$1 comm=${2:-} name state rest
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  name=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ -z $comm || $name == "$comm" ]] || return 1
  read -r _ _ state rest 2>/dev/null <"/proc/$pid/stat" || return 1
  [[ $state != Z && $state != X ]]
}

# Print the PID recorded in pid file $1 if that process is alive and is the
# program $2; otherwise fail.
live_pid() {
  local pid
  [[ -r $1 ]] || return 1
  read -r pid 2>/dev/null <"$1" || return 1
  proc_alive "$pid" "$2" || return 1
  echo "$pid"
}

# Wait up to $3 tenths of a second for process $1 ($2) to be gone.
wait_gone() {
  local i
  for ((i = 0; i < $3; i++)); do
    proc_alive "$1" "$2" || return 0
    sleep 0.1
  done
  ! proc_alive "$1" "$2"
}

# Send $2 to 127.0.0.1:$1 and succeed if the first reply line starts with $3.
tcp_probe() {
  timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "%b" "$2" >&3
    IFS= read -r line <&3 || exit 1
    [[ $line == "$3"* ]]' _ "$1" "$2" "$3" 2>/dev/null
}

# Succeed if anything accepts a connection on 127.0.0.1:$1.
port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

show_log_tail() {
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    printf -- '----- last lines of %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}

# wait_ready NAME PIDFILE COMM READY_FN LOG... — poll READY_FN until it
# succeeds; fail fast with the log tail if the process dies, or on timeout.
wait_ready() {
  local name=$1 pidfile=$2 comm=$3 ready=$4; shift 4
  local deadline=$((SECONDS + TIMEOUT)) pid
  read -r pid 2>/dev/null <"$pidfile" || pid=
  # Right after launch the PID may still show as setsid/nohup (exec pending),
  # so only require it to be alive here; the program name is checked below.
  while ! "$ready"; do
    if ! proc_alive "$pid"; then
      show_log_tail "$@"
      die "$name exited during startup (log: $*)"
    fi
    if (( SECONDS >= deadline )); then
      show_log_tail "$@"
      die "$name did not answer on its port within ${TIMEOUT}s (pid $pid, log: $*)"
    fi
    sleep 0.1
  done
  proc_alive "$pid" "$comm" || die "$name answers, but pid $pid is not $comm (port taken by someone else?)"
}

# Start "$@" detached (own session, no terminal, HUP ignored) with output
# appended to $LOGFILE, record its PID in $PIDFILE.
launch() {
  local pidfile=$1 logfile=$2; shift 2
  # No job control here, so the background child is not a process-group
  # leader and setsid execs in place: $! is the daemon's own PID.
  setsid nohup "$@" </dev/null >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
}

# already_up NAME PIDFILE COMM READY_FN PORT LOG — succeed (after waiting
# for it if it is still starting) when our daemon is running; fail when it
# must be started; die when something else holds the port.
already_up() {
  local name=$1 pidfile=$2 comm=$3 ready=$4 port=$5 logfile=$6 pid
  if pid=$(live_pid "$pidfile" "$comm"); then
    if ! "$ready"; then
      log "$name (pid $pid) is running but not answering yet; waiting"
      wait_ready "$name" "$pidfile" "$comm" "$ready" "$logfile"
    fi
    log "$name already running (pid $pid) on 127.0.0.1:$port"
    return 0
  fi
  rm -f -- "$pidfile"
  if port_open "$port"; then
    die "127.0.0.1:$port is in use by a process this script did not start (a system $name service?). Stop it, or pick another port with OFFLOG_*_PORT."
  fi
  return 1
}

# --------------------------------------------------------------- gearmand --

gearmand_ready() { tcp_probe "$GEARMAN_PORT" 'version\n' 'OK '; }

start_gearmand() {
  local pidfile="$GEARMAN_DIR/gearmand.pid" logfile="$GEARMAN_DIR/gearmand.log"
  already_up gearmand "$pidfile" gearmand gearmand_ready "$GEARMAN_PORT" "$logfile" && return 0
  mkdir -p "$GEARMAN_DIR"
  log "starting gearmand on 127.0.0.1:$GEARMAN_PORT (queue $GEARMAN_DIR/queue.sqlite)"
  # Foreground (no -d) so the PID we record is the server's; --log-file=stderr
  # sends gearmand's own log into the file launch() appends to.
  # --config-file points at an empty file so /etc/gearmand.conf is never read.
  : >"$GEARMAN_DIR/gearmand.conf"
  launch "$pidfile" "$logfile" "$(command -v gearmand)" \
    --config-file="$GEARMAN_DIR/gearmand.conf" \
    --listen=127.0.0.1 \
    --port="$GEARMAN_PORT" \
    --queue-type=libsqlite3 \
    --libsqlite3-db="$GEARMAN_DIR/queue.sqlite" \
    --hashtable-buckets=100003 \
    --pid-file="$pidfile" \
    --log-file=stderr \
    --verbose=WARNING
  wait_ready gearmand "$pidfile" gearmand gearmand_ready "$logfile"
  log "gearmand up (pid $(cat "$pidfile"))"
}

# -------------------------------------------------------------- memcached --

memcached_ready() { tcp_probe "$MEMCACHED_PORT" 'version\r\n' 'VERSION '; }

start_memcached() {
  local pidfile="$MEMCACHED_DIR/memcached.pid" logfile="$MEMCACHED_DIR/memcached.log"
  already_up memcached "$pidfile" memcached memcached_ready "$MEMCACHED_PORT" "$logfile" && return 0
  mkdir -p "$MEMCACHED_DIR"
  log "starting memcached on 127.0.0.1:$MEMCACHED_PORT (${MEMCACHED_MB} MB)"
  # Foreground with -v (errors/warnings only) instead of -d: memcached -d
  # exits 0 and writes no pid file when the port is taken, and drops stderr.
  local user=()
  (( EUID == 0 )) && user=(-u root)   # memcached refuses root without -u
  launch "$pidfile" "$logfile" "$(command -v memcached)" \
    "${user[@]}" -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m "$MEMCACHED_MB" -v
  wait_ready memcached "$pidfile" memcached memcached_ready "$logfile"
  log "memcached up (pid $(cat "$pidfile"))"
}

# ---------------------------------------------------------------- mariadb --

MYSQL_ADMIN=
MYSQL_CLIENT=
mysql_tools() {
  MYSQL_ADMIN=$(pick mariadb-admin mysqladmin) || die "mariadb-admin not found (run: $0 install)"
  MYSQL_CLIENT=$(pick mariadb mysql) || die "mariadb client not found (run: $0 install)"
}

mysql_ready() {
  # Through our socket as root (unix_socket auth), then check the TCP port.
  "$MYSQL_ADMIN" --no-defaults --socket="$MYSQL_SOCKET" --user=root \
    --connect-timeout=2 ping >/dev/null 2>&1 && port_open "$MYSQL_PORT"
}

mysql_root() {
  "$MYSQL_CLIENT" --no-defaults --socket="$MYSQL_SOCKET" --user=root --batch "$@"
}

# Options shared by mariadb-install-db and the server. --no-defaults keeps
# /etc/mysql/*.cnf (system socket, datadir, log paths) out of the picture.
mysql_server_opts() {
  local user=()
  (( EUID == 0 )) && user=(--user=root)   # mariadbd refuses root without it
  MYSQL_OPTS=(
    --no-defaults
    "${user[@]}"
    --datadir="$MYSQL_DATADIR"
    --character-set-server=utf8mb4
    --collation-server=utf8mb4_unicode_ci
    --skip-name-resolve
    # Its own temporary directory: big GROUP BYs spill to disk, and a shared /tmp may be cleaned under them.
    --tmpdir="$MYSQL_DIR/tmp"
  )
  [[ -z $MYSQL_BUFFER_POOL_MB ]] || MYSQL_OPTS+=(--innodb-buffer-pool-size="${MYSQL_BUFFER_POOL_MB}M")
}

mysql_init_datadir() {
  local marker="$MYSQL_DIR/.initialised" installer aside
  [[ -f $marker && -d $MYSQL_DATADIR/mysql ]] && return 0
  installer=$(pick mariadb-install-db mysql_install_db) || die "mariadb-install-db not found (run: $0 install)"
  # A datadir without the marker is left over from an interrupted
  # initialisation: keep it aside rather than deleting anything.
  if [[ -e $MYSQL_DATADIR ]]; then
    aside="$MYSQL_DATADIR.incomplete.$(date +%Y%m%d%H%M%S)"
    mv -- "$MYSQL_DATADIR" "$aside"
    log "moved incompletely initialised datadir to $aside"
  fi
  mkdir -p "$MYSQL_DATADIR"
  log "initialising MariaDB datadir $MYSQL_DATADIR"
  if ! "$installer" "${MYSQL_OPTS[@]}" \
        --auth-root-authentication-method=socket \
        --skip-test-db \
        >"$MYSQL_DIR/install-db.log" 2>&1; then
    show_log_tail "$MYSQL_DIR/install-db.log"
    die "mariadb-install-db failed (log: $MYSQL_DIR/install-db.log)"
  fi
  touch "$marker"
}

mysql_provision() {
  mysql_root <<'SQL' || die "could not create database/user offlog (see $MYSQL_DIR/mysqld.log)"
CREATE DATABASE IF NOT EXISTS offlog CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'offlog'@'127.0.0.1' IDENTIFIED BY 'offlog';
CREATE USER IF NOT EXISTS 'offlog'@'localhost' IDENTIFIED BY 'offlog';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP, CREATE TEMPORARY TABLES ON offlog.* TO 'offlog'@'127.0.0.1';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP, CREATE TEMPORARY TABLES ON offlog.* TO 'offlog'@'localhost';
SQL
}

start_mysql() {
  local pidfile="$MYSQL_DIR/mysqld.pid" logfile="$MYSQL_DIR/mysqld.log" server
  mysql_tools
  if ! already_up mariadb "$pidfile" mariadbd mysql_ready "$MYSQL_PORT" "$logfile"; then
    server=$(pick mariadbd mysqld) || die "mariadbd not found (run: $0 install)"
    (( ${#MYSQL_SOCKET} < 108 )) ||
      die "socket path $MYSQL_SOCKET is too long for a unix socket; use a shorter OFFLOG_DATA_DIR"
    mkdir -p "$MYSQL_DIR" "$MYSQL_DIR/tmp"
    mysql_server_opts
    mysql_init_datadir
    log "starting mariadbd on 127.0.0.1:$MYSQL_PORT (datadir $MYSQL_DATADIR)"
    rm -f -- "$MYSQL_SOCKET"
    launch "$pidfile" "$logfile" "$server" "${MYSQL_OPTS[@]}" \
      --port="$MYSQL_PORT" \
      --bind-address=127.0.0.1 \
      --socket="$MYSQL_SOCKET" \
      --pid-file="$pidfile" \
      --log-error="$logfile" \
      --default-time-zone=+00:00 \
      --local-infile=1
    # /proc/PID/comm is "mariadbd" even when started through the mysqld alias.
    wait_ready mariadb "$pidfile" mariadbd mysql_ready "$logfile"
    log "mariadb up (pid $(cat "$pidfile"))"
  fi
  mysql_provision
}

# ------------------------------------------------------------------- stop --

stop_one() { # NAME PIDFILE COMM
  local name=$1 pidfile=$2 comm=$3 pid
  if ! pid=$(live_pid "$pidfile" "$comm"); then
    if [[ -e $pidfile ]]; then
      rm -f -- "$pidfile"
      log "$name not running (removed stale pid file)"
    else
      log "$name not running"
    fi
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$comm" 200; then          # 20 s
    log "$name (pid $pid) still running 20s after TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" "$comm" 50 || die "$name (pid $pid) survived KILL"
  fi
  rm -f -- "$pidfile"
  log "$name stopped"
}

cmd_down() {
  stop_one mariadb "$MYSQL_DIR/mysqld.pid" mariadbd
  stop_one memcached "$MEMCACHED_DIR/memcached.pid" memcached
  stop_one gearmand "$GEARMAN_DIR/gearmand.pid" gearmand
}

# ----------------------------------------------------------------- status --

cmd_status() {
  local rc=0 name pidfile comm port pid
  while read -r name pidfile comm port; do
    if pid=$(live_pid "$pidfile" "$comm"); then
      printf '%-10s running  pid %-8s 127.0.0.1:%s\n' "$name" "$pid" "$port"
    else
      printf '%-10s stopped  pid %-8s 127.0.0.1:%s\n' "$name" "-" "$port"
      rc=3
    fi
  done <<EOF
gearmand $GEARMAN_DIR/gearmand.pid gearmand $GEARMAN_PORT
memcached $MEMCACHED_DIR/memcached.pid memcached $MEMCACHED_PORT
mariadb $MYSQL_DIR/mysqld.pid mariadbd $MYSQL_PORT
EOF
  return "$rc"
}

# ------------------------------------------------------------------- main --

cmd_up() {
  local t0=$SECONDS
  cmd_install
  mkdir -p "$DATA_DIR"
  start_gearmand
  start_memcached
  start_mysql
  log "all up in $((SECONDS - t0))s (data: $DATA_DIR)"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  install) cmd_install ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
