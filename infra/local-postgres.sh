#!/usr/bin/env bash
# A local Postgres for the team stack (Prefect server + MLflow tracking server), from the Debian packages.
#
#   infra/local-postgres.sh [start] [--dir DIR] [--port PORT] [--no-install]
#       Installs Postgres (apt-get, as root) when no server binaries are found, initialises a cluster in
#       DIR (default: <repo>/.adsrec-pg, ignored by git), starts it on 127.0.0.1:PORT (default: the port of
#       an earlier start in DIR, else the first free one from 54320), creates the roles and databases
#       `prefect` and `mlflow` with a generated password, and prints the two URLs as shell exports:
#           eval "$(infra/local-postgres.sh)"
#       A second run reuses the cluster, its port and its password (idempotent).
#   infra/local-postgres.sh stop   [--dir DIR]    stop the cluster (fast shutdown); its data stays
#   infra/local-postgres.sh status [--dir DIR]    exit 0 when it runs, 3 when it does not
#   infra/local-postgres.sh env    [--dir DIR]    print the exports again (the cluster must run)
#   infra/local-postgres.sh install               only make sure the Postgres packages are installed
#
# Nothing system-wide is configured beyond the package install: the cluster, its socket, its log and
# its credentials live in DIR. Postgres refuses to run as root, so as root the server runs as the
# `postgres` user (created by the package) and DIR is handed to it. Exit codes: 0 ok, 2 usage or
# failure, 3 Postgres not installed / not running (what a test skips on).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$REPO/.adsrec-pg"
PORT=""
INSTALL=1
CMD="start"
FIRST_PORT=54320

die() { echo "local-postgres: $1" >&2; exit "${2:-2}"; }
say() { echo "local-postgres: $*" >&2; }

if [[ $# -gt 0 && "$1" != -* ]]; then CMD="$1"; shift; fi
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a folder}"; shift 2 ;;
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "$CMD" in start|stop|status|env|install) ;; *) die "unknown command '$CMD': start, stop, status, env or install" ;; esac
[[ -z "$PORT" || "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, not '$PORT'"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
DATA="$DIR/data"; RUN="$DIR/run"; LOG="$DIR/postgres.log"; SECRET="$DIR/password"; PORT_FILE="$DIR/port"

# The newest installed server (Debian: /usr/lib/postgresql/<major>/bin), else one on PATH.
find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
  done
  d="$(command -v pg_ctl 2>/dev/null || true)"
  [[ -n "$d" && -x "$(dirname "$d")/initdb" ]] && { dirname "$d"; return 0; }
  return 1
}

install_postgres() {
  if BIN="$(find_bindir)"; then return 0; fi
  [[ $INSTALL -eq 1 ]] || die "Postgres is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH); run infra/local-postgres.sh install as root" 3
  if [[ $(id -u) -ne 0 ]]; then
    die "Postgres is not installed and installing it needs root: run 'sudo apt-get update && sudo apt-get install -y postgresql' (or this script as root), then run it again" 3
  fi
  command -v apt-get >/dev/null || die "Postgres is not installed and there is no apt-get here: install PostgreSQL 13 or newer yourself" 3
  say "installing Postgres from the Debian packages (apt-get install postgresql) ..."
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Only the server binaries are used: the package's own cluster (if it creates one) is not started here.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  BIN="$(find_bindir)" || die "apt-get installed postgresql but no initdb/pg_ctl was found under /usr/lib/postgresql"
}

# Run a Postgres program as the cluster's owner: this user, or `postgres` when this is root.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' user to run the server as (Postgres refuses root): create one or run as a normal user"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { [[ -n "${BIN:-}" && -f "$DATA/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

psql_admin() {
  as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$RUN" -p "$(cat "$PORT_FILE")" -U postgres -d postgres "$@"
}

print_env() {
  local pw port
  pw="$(cat "$SECRET")"; port="$(cat "$PORT_FILE")"
  # Prefect's server is async (asyncpg); MLflow's stores are sync SQLAlchemy (psycopg 3, as infra/Dockerfile).
  cat <<EOF
export ADSREC_PG_DIR='$DIR'
export ADSREC_PG_PORT='$port'
export PREFECT_API_DATABASE_CONNECTION_URL='postgresql+asyncpg://prefect:$pw@127.0.0.1:$port/prefect'
export ADSREC_MLFLOW_BACKEND_STORE_URI='postgresql+psycopg://mlflow:$pw@127.0.0.1:$port/mlflow'
EOF
}

start() {
  install_postgres
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' user to run the server as"
    chown postgres: "$DIR"
    chmod 700 "$DIR"
    runuser -u postgres -- test -w "$DIR" || die "the 'postgres' user cannot reach $DIR (a parent folder is closed to it): choose --dir under /tmp or /var/tmp"
  fi
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    say "initialising a cluster in $DATA ($("$BIN/postgres" --version))"
    # Local socket connections (the socket is in DIR, mode 0700) trust the owner; TCP needs a password.
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; die "initdb failed (log above, also in $DIR/initdb.log)"; }
  fi
  as_owner mkdir -p "$RUN"
  if [[ ! -s "$SECRET" ]]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SECRET")
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$SECRET"; fi
  fi
  if running; then
    [[ -z "$PORT" || "$PORT" == "$(cat "$PORT_FILE")" ]] || die "the cluster in $DIR already runs on port $(cat "$PORT_FILE"): stop it first to move it to $PORT"
    say "the cluster in $DIR already runs on 127.0.0.1:$(cat "$PORT_FILE")"
  else
    if [[ -z "$PORT" && -s "$PORT_FILE" ]] && ! port_busy "$(cat "$PORT_FILE")"; then PORT="$(cat "$PORT_FILE")"; fi
    if [[ -z "$PORT" ]]; then
      PORT=$FIRST_PORT
      while port_busy "$PORT"; do PORT=$((PORT + 1)); [[ $PORT -lt 65000 ]] || die "no free port from $FIRST_PORT"; done
    elif port_busy "$PORT"; then
      die "port $PORT on 127.0.0.1 is already in use: choose another with --port"
    fi
    echo "$PORT" >"$PORT_FILE"
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$PORT_FILE"; fi
    say "starting Postgres on 127.0.0.1:$PORT (log $LOG)"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $RUN -c unix_socket_permissions=0700" >/dev/null \
      || { tail -n 20 "$LOG" >&2 || true; die "Postgres did not start (log above, $LOG)"; }
  fi
  local pw db
  pw="$(cat "$SECRET")"
  for db in prefect mlflow; do
    # The password goes through stdin, not the command line (other users can read command lines).
    psql_admin <<SQL
\set name '$db'
\set pw '$pw'
SELECT format('CREATE ROLE %I LOGIN', :'name') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'name') \gexec
ALTER ROLE :"name" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name') \gexec
SQL
  done
  say "ready: databases prefect and mlflow on 127.0.0.1:$(cat "$PORT_FILE") (stop: $0 stop --dir $DIR)"
  print_env
}

case "$CMD" in
  install)
    install_postgres
    say "Postgres binaries in $BIN ($("$BIN/postgres" --version))" ;;
  start) start ;;
  stop)
    BIN="$(find_bindir)" || die "Postgres is not installed: nothing to stop" 3
    if running; then
      as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
      say "stopped the cluster in $DIR"
    else
      say "no cluster runs in $DIR: nothing to stop"
    fi ;;
  status|env)
    BIN="$(find_bindir)" || die "Postgres is not installed" 3
    running || die "no cluster runs in $DIR (start it with: $0 start --dir $DIR)" 3
    if [[ "$CMD" == "env" ]]; then print_env; else say "running on 127.0.0.1:$(cat "$PORT_FILE") ($DIR)"; fi ;;
esac
