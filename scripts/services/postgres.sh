#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster run by the unprivileged `postgres` user
# (PostgreSQL refuses root), listening only on 127.0.0.1, with the extension
# preloaded. A second call with `start-standby` makes a streaming replica.
#
# Usage: postgres.sh start DIR PORT [SETTING=VALUE ...]
#        postgres.sh start-standby DIR PORT PRIMARY_PORT [SETTING=VALUE ...]
#        postgres.sh stop DIR [fast|immediate]
set -euo pipefail
command=${1:?usage: postgres.sh start|start-standby|stop DIR ...}
dir=${2:?DIR missing}
bin=$(/usr/lib/postgresql/15/bin/pg_config --bindir)
as_postgres() { runuser -u postgres -- "$@"; }

if [ "$command" = stop ]; then
  mode=${3:-fast}
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  as_postgres "$bin/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null 2>&1 || true
  exit 0
fi

port=${3:?PORT missing}
shift 3
primary_port=
if [ "$command" = start-standby ]; then
  primary_port=${1:?PRIMARY_PORT missing}
  shift
elif [ "$command" != start ]; then
  echo "postgres.sh: unknown command $command" >&2; exit 2
fi

mkdir -p "$dir"
chown postgres:postgres "$dir"
chmod 0755 "$dir"

if [ ! -f "$dir/data/PG_VERSION" ]; then
  if [ -n "$primary_port" ]; then
    as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir/data" -R -X stream >"$dir/basebackup.log" 2>&1
  else
    as_postgres "$bin/initdb" -D "$dir/data" --auth=trust -U postgres --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
    cat >> "$dir/data/postgresql.conf" <<CONF
# --- added by scripts/services/postgres.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_preload_libraries = 'email_accounts'
wal_level = replica
max_wal_senders = 4
hot_standby = on
fsync = off
logging_collector = off
log_line_prefix = '%m [%p] %b '
email_accounts.worker_restart_interval = 1
CONF
    echo "host replication postgres 127.0.0.1/32 trust" >> "$dir/data/pg_hba.conf"
  fi
  {
    echo "port = $port"
    echo "unix_socket_directories = '$dir'"
    for setting in "$@"; do echo "$setting"; done
  } >> "$dir/data/postgresql.conf"
fi

as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
  || { echo "postgres did not start; see $dir/server.log" >&2; tail -20 "$dir/server.log" >&2; exit 1; }
