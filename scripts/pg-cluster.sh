#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: no system service, no root-owned
# paths, nothing outside DIR.
#
#   scripts/pg-cluster.sh start DIR     initdb in DIR/data (first time), start, write DIR/env
#   scripts/pg-cluster.sh stop DIR      pg_ctl stop -m fast (idempotent: a stopped or
#                                       missing cluster is fine)
#   scripts/pg-cluster.sh restart DIR   pg_ctl restart -m fast -w (same port)
#
# The cluster listens on 127.0.0.1 only, on a free port, with its unix socket in
# DIR; trust authentication; superuser `postgres`; no locale; fsync ON (the
# tests check durability). Run as root, the server runs as the `postgres` system
# user (PostgreSQL refuses to run as root), and DIR is handed to that user.
#
# DIR/env, for `set -a; . DIR/env; set +a`:
#   POINTLOCK_TEST_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres
#   POINTLOCK_TEST_PG_DATA=DIR/data
#   POINTLOCK_TEST_PG_BIN=/usr/lib/postgresql/NN/bin
#   POINTLOCK_TEST_PG_USER=postgres         (the OS user the server runs as)
#   POINTLOCK_TEST_PG_DIR=DIR
#
# The binaries: $POINTLOCK_PG_BIN if set, else the newest
# /usr/lib/postgresql/*/bin (Debian), else the directory of `initdb` on PATH.
set -euo pipefail
export LC_ALL=C

usage() {
  echo "usage: $0 start|stop|restart DIR" >&2
  exit 2
}
die() {
  echo "pg-cluster: $*" >&2
  exit 1
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$2

find_bin() {
  if [ -n "${POINTLOCK_PG_BIN:-}" ]; then
    echo "$POINTLOCK_PG_BIN"
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$found" ] && [ -x "$found/initdb" ]; then
    echo "$found"
  elif command -v initdb >/dev/null; then
    dirname "$(command -v initdb)"
  else
    die "no PostgreSQL found (apt-get install postgresql, or set POINTLOCK_PG_BIN)"
  fi
}

# The OS user the server runs as.
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' user to run the server as"
  pg_user=postgres
else
  pg_user=$(id -un)
fi

# Run a PostgreSQL program as $pg_user, from a directory that user can read.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$dir" && runuser -u "$pg_user" -- "$@")
  else
    (cd "$dir" && "$@")
  fi
}

# A port nobody listens on at 127.0.0.1 right now (the kernel picks it).
free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
  else
    local port
    for _ in $(seq 100); do
      port=$((20000 + RANDOM % 40000))
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$port"
        return
      fi
    done
    die "no free port found"
  fi
}

write_env() {
  local port=$1
  cat >"$dir/env" <<EOF
POINTLOCK_TEST_PG_URL=postgres://postgres@127.0.0.1:$port/postgres
POINTLOCK_TEST_PG_DATA=$dir/data
POINTLOCK_TEST_PG_BIN=$bin
POINTLOCK_TEST_PG_USER=$pg_user
POINTLOCK_TEST_PG_DIR=$dir
EOF
  chmod 644 "$dir/env"
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # The socket path must fit in sun_path (108 bytes).
  [ ${#dir} -le 80 ] || die "DIR is too long for a unix socket path: $dir"
  if [ "$(id -u)" = 0 ]; then
    chown "$pg_user": "$dir"
    chmod 700 "$dir"
    runuser -u "$pg_user" -- test -w "$dir" ||
      die "$dir is not reachable by the '$pg_user' user (is a parent directory private?)"
  fi
  bin=$(find_bin)
  local data="$dir/data" port=""
  if [ -f "$data/PG_VERSION" ]; then
    # Already initialised: start it again where it was (same port, if free).
    port=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$data/postgresql.conf" | tail -n 1)
    if as_pg "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1; then
      write_env "$port"
      echo "pg-cluster: already running: postgres://postgres@127.0.0.1:$port/postgres"
      return
    fi
  else
    as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust --no-locale -E UTF8 >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    cat >>"$data/postgresql.conf" <<EOF

# scripts/pg-cluster.sh: a throwaway test cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
  fi

  # The port may be taken between choosing and binding it: try a few.
  local attempt
  for attempt in 1 2 3 4 5; do
    if [ -z "$port" ] || [ "$attempt" -gt 1 ]; then
      port=$(free_port)
    fi
    # Appended (the last setting wins), so the file keeps its owner.
    echo "port = $port" >>"$data/postgresql.conf"
    if as_pg "$bin/pg_ctl" start -D "$data" -l "$dir/postgres.log" -w -t 60 >/dev/null; then
      write_env "$port"
      echo "postgres://postgres@127.0.0.1:$port/postgres"
      return
    fi
    if ! grep -q 'could not bind\|Address already in use' "$dir/postgres.log" 2>/dev/null; then
      break
    fi
    echo "pg-cluster: port $port was taken, trying another" >&2
  done
  tail -n 30 "$dir/postgres.log" >&2 2>/dev/null || true
  die "the cluster in $dir did not start (log: $dir/postgres.log)"
}

stop() {
  [ -d "$dir/data" ] || return 0
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/env" ]; then
    bin=$(sed -n 's/^POINTLOCK_TEST_PG_BIN=//p' "$dir/env")
  fi
  [ -n "${bin:-}" ] || bin=$(find_bin)
  # pg_ctl status: 0 running, 3 not running, 4 no data directory.
  if as_pg "$bin/pg_ctl" status -D "$dir/data" >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" stop -D "$dir/data" -m fast -w -t 60 >/dev/null ||
      as_pg "$bin/pg_ctl" stop -D "$dir/data" -m immediate -w -t 60 >/dev/null
    echo "pg-cluster: stopped $dir"
  fi
}

restart() {
  [ -f "$dir/data/PG_VERSION" ] || die "no cluster in $dir (run start first)"
  dir=$(cd "$dir" && pwd)
  bin=$(sed -n 's/^POINTLOCK_TEST_PG_BIN=//p' "$dir/env" 2>/dev/null || true)
  [ -n "${bin:-}" ] || bin=$(find_bin)
  as_pg "$bin/pg_ctl" restart -D "$dir/data" -l "$dir/postgres.log" -m fast -w -t 60 >/dev/null ||
    { tail -n 30 "$dir/postgres.log" >&2; die "restart failed"; }
  echo "pg-cluster: restarted $dir"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  *) usage ;;
esac
