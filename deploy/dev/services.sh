#!/usr/bin/env bash
# Make this machine ready for astreg's tests and demo: install from Debian's packages what is
# missing and start private PostgreSQL, MariaDB and Redis instances where none answers.
#
#   deploy/dev/services.sh            # install what is missing, start what is down (idempotent)
#   deploy/dev/services.sh --check    # only say what is missing or down; exit 1 if anything is
#   deploy/dev/services.sh --stop     # stop the private instances this script started
#   deploy/dev/services.sh --stop-postgresql / --start-postgresql
#                                     # stop (fast) and start again whichever PostgreSQL serves
#                                     # 127.0.0.1:5432, private or a Debian cluster (fault tests)
#
# What the tests expect (override with the ASTREG_TEST_* variables the tests read):
#   PostgreSQL 127.0.0.1:5432, user postgres without password (trust), database `test`
#   MariaDB    127.0.0.1:3306, user root without password
#   Redis      127.0.0.1:6379
#   Chromium   /usr/bin/chromium (Debian's), a JDK (java) and Maven (mvn) for Apache Kafka
#
# The private instances live in $ASTREG_SERVICES_DIR (default /var/tmp/astreg-services): data
# kept there across runs, nothing of the system's own configuration touched. A server that
# already answers on a port with the expected access is used as it is. As non-root the script
# installs nothing and says exactly what is missing.
set -euo pipefail

DIR="${ASTREG_SERVICES_DIR:-/var/tmp/astreg-services}"
MODE="${1:-start}"
PG_PORT=5432 MY_PORT=3306 REDIS_PORT=6379
ROOT=0; [ "$(id -u)" = 0 ] && ROOT=1

say() { echo "services: $*"; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# --------------------------------------------------------------------------- packages
# command -> Debian package
declare -A NEED=(
  [pg_ctlcluster]=postgresql
  [mariadbd]=mariadb-server
  [mariadb]=mariadb-client
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [chromium]=chromium
  [java]=default-jdk-headless
  [mvn]=maven
  [ip]=iproute2
  [tc]=iproute2
)
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing_pkgs() {
  local pkgs=() cmd
  for cmd in "${!NEED[@]}"; do have "$cmd" || pkgs+=("${NEED[$cmd]}"); done
  [ -n "$(pg_bin)" ] || pkgs+=(postgresql)
  printf '%s\n' "${pkgs[@]}" | sort -u | sed '/^$/d'
}

install_missing() {
  local pkgs
  mapfile -t pkgs < <(missing_pkgs)
  [ "${#pkgs[@]}" = 0 ] && return 0
  if [ "$ROOT" != 1 ]; then
    say "missing Debian packages: ${pkgs[*]}"
    say "install them as root: apt-get install -y ${pkgs[*]}"
    return 1
  fi
  say "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages must not start the system's own servers on our ports (no init system here anyway).
  local prc=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; created=1; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  [ "$created" = 1 ] && rm -f "$prc"
  return 0
}

# --------------------------------------------------------------------------- checks
pg_ok() { "$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d test -tAc 'select 1' >/dev/null 2>&1; }
pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
my_ok() { mariadb -h 127.0.0.1 -P "$MY_PORT" -uroot -e 'select 1' >/dev/null 2>&1; }
redis_ok() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # what, check function, seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do "$2" && return 0; sleep 0.1; done
  say "$1 did not come up in $3 s (logs in $DIR)"; return 1
}

as_user() {  # user, command...: servers refuse to run as root
  local u=$1; shift
  if [ "$ROOT" = 1 ]; then runuser -u "$u" -- "$@"; else "$@"; fi
}

# --------------------------------------------------------------------------- servers
start_pg() {
  pg_ok && return 0
  if port_busy "$PG_PORT"; then
    say "something listens on 127.0.0.1:$PG_PORT but refuses user postgres/database test without password"
    return 1
  fi
  local bin d="$DIR/postgresql" user=postgres
  bin="$(pg_bin)"
  [ "$ROOT" = 1 ] || user="$(id -un)"
  mkdir -p "$d"; [ "$ROOT" = 1 ] && chown "$user" "$d"
  if [ ! -s "$d/data/PG_VERSION" ]; then
    as_user "$user" "$bin/initdb" -D "$d/data" -U postgres -A trust -E UTF8 --no-sync >"$d/initdb.log" 2>&1
  fi
  as_user "$user" "$bin/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $d -c fsync=off -c max_connections=300" start >/dev/null
  wait_for PostgreSQL pg_ready 30
  "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "select 1 from pg_database where datname='test'" \
    | grep -q 1 || "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres test
  pg_ok && say "PostgreSQL started (127.0.0.1:$PG_PORT, data $d)"
}

start_mariadb() {
  my_ok && return 0
  if port_busy "$MY_PORT"; then
    say "something listens on 127.0.0.1:$MY_PORT but refuses root without password"
    return 1
  fi
  local d="$DIR/mariadb" user=mysql
  [ "$ROOT" = 1 ] || user="$(id -un)"
  mkdir -p "$d"; [ "$ROOT" = 1 ] && chown "$user" "$d"
  if [ ! -d "$d/data/mysql" ]; then
    mariadb-install-db --user="$user" --datadir="$d/data" --auth-root-authentication-method=normal \
      --skip-test-db >"$d/install.log" 2>&1
  fi
  setsid nohup "$(command -v mariadbd || echo /usr/sbin/mariadbd)" --no-defaults --user="$user" \
    --datadir="$d/data" --port="$MY_PORT" --bind-address=127.0.0.1 --socket="$d/mariadb.sock" \
    --pid-file="$d/mariadb.pid" --log-error="$d/server.log" --max-connections=500 \
    --innodb-flush-log-at-trx-commit=2 >/dev/null 2>&1 </dev/null &
  wait_for MariaDB my_ok 60
  say "MariaDB started (127.0.0.1:$MY_PORT, data $d)"
}

start_redis() {
  redis_ok && return 0
  if port_busy "$REDIS_PORT"; then say "something listens on 127.0.0.1:$REDIS_PORT but is not Redis"; return 1; fi
  local d="$DIR/redis"
  mkdir -p "$d"
  redis-server --daemonize yes --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$d" --logfile "$d/server.log" --pidfile "$d/redis.pid" >/dev/null
  wait_for Redis redis_ok 30
  say "Redis started (127.0.0.1:$REDIS_PORT, data $d)"
}

stop_all() {
  local bin
  bin="$(pg_bin)"
  if [ -f "$DIR/postgresql/data/postmaster.pid" ]; then
    as_user "$(stat -c %U "$DIR/postgresql/data")" "$bin/pg_ctl" -D "$DIR/postgresql/data" -m fast stop || true
  fi
  [ -f "$DIR/mariadb/mariadb.pid" ] && kill "$(cat "$DIR/mariadb/mariadb.pid")" 2>/dev/null || true
  [ -f "$DIR/redis/redis.pid" ] && kill "$(cat "$DIR/redis/redis.pid")" 2>/dev/null || true
  say "stopped the private instances in $DIR"
}

# Which PostgreSQL serves the tests' port: "private", or "cluster <version> <name>" (Debian's).
pg_which() {
  local dd
  dd="$("$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc 'show data_directory')" || return 1
  if [ "$dd" = "$DIR/postgresql/data" ]; then echo private; return 0; fi
  pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p && $4 == "online" {print "cluster", $1, $2; exit}'
}

stop_pg_only() {
  local which
  which="$(pg_which)" || { say "PostgreSQL does not answer on 127.0.0.1:$PG_PORT"; return 1; }
  [ -n "$which" ] || { say "PostgreSQL on 127.0.0.1:$PG_PORT is neither private nor a Debian cluster"; return 1; }
  mkdir -p "$DIR"; echo "$which" >"$DIR/postgresql.stopped"
  if [ "$which" = private ]; then
    as_user "$(stat -c %U "$DIR/postgresql/data")" "$(pg_bin)/pg_ctl" -D "$DIR/postgresql/data" -m fast -w stop >/dev/null
  else
    set -- $which
    pg_ctlcluster --skip-systemctl-redirect "$2" "$3" stop -m fast
  fi
  say "PostgreSQL ($which) stopped"
}

start_pg_again() {
  local which
  which="$(cat "$DIR/postgresql.stopped" 2>/dev/null || echo private)"
  if [ "$which" = private ]; then start_pg; else set -- $which; pg_ctlcluster --skip-systemctl-redirect "$2" "$3" start; fi
  wait_for PostgreSQL pg_ok 60
  rm -f "$DIR/postgresql.stopped"
  say "PostgreSQL ($which) started"
}

check_only() {
  local bad=0 p
  for p in $(missing_pkgs); do say "missing package: $p"; bad=1; done
  have psql && { pg_ok || { say "PostgreSQL: not answering on 127.0.0.1:$PG_PORT as postgres/test"; bad=1; }; }
  have mariadb && { my_ok || { say "MariaDB: not answering on 127.0.0.1:$MY_PORT as root"; bad=1; }; }
  have redis-cli && { redis_ok || { say "Redis: not answering on 127.0.0.1:$REDIS_PORT"; bad=1; }; }
  [ "$bad" = 0 ] && say "everything is there"
  return "$bad"
}

case "$MODE" in
  --check) check_only ;;
  --stop) stop_all ;;
  --stop-postgresql) stop_pg_only ;;
  --start-postgresql) start_pg_again ;;
  start|--start)
    mkdir -p "$DIR"
    install_missing || exit 1
    start_pg
    start_mariadb
    start_redis
    ;;
  *) echo "usage: $0 [--check|--stop|--stop-postgresql|--start-postgresql]" >&2; exit 2 ;;
esac
