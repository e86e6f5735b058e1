# private-pg.sh: a private PostgreSQL cluster for the benchmark scripts,
# sourced by scripts/benchmarks.sh and scripts/relay-bench.sh. Its
# postmaster's process tree is the benchmark's alone (fsync on, trust
# auth, as the postgres user, in /tmp).
#
#   private_pg_start PREFIX MAX_CONNECTIONS
#       initdb a cluster in a new /tmp/PREFIX-XXXXXX on a random loopback
#       port and start it; sets pgbin, pgdir, port, pgpid and pgadmin (the
#       URL of its postgres database).
#   private_pg_stop
#       stops it and removes its directory (nothing when none was started);
#       call it from the script's EXIT trap.

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
pgdir=""

private_pg_start() {
  local prefix=$1 maxconn=$2
  pgdir=$(mktemp -d "/tmp/$prefix-XXXXXX")
  port=$(( 55000 + RANDOM % 1900 ))
  chown postgres:postgres "$pgdir"
  printf '+ %s\n' "initdb a private cluster in $pgdir on port $port" >&2
  runuser -u postgres -- "$pgbin/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 >/dev/null
  cat >>"$pgdir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pgdir'
shared_buffers = 128MB
max_connections = $maxconn
CONF
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" start -w -t 60 >/dev/null
  pgpid=$(head -1 "$pgdir/data/postmaster.pid")
  pgadmin="postgres://postgres@127.0.0.1:$port/postgres"
}

private_pg_stop() {
  if [ -n "$pgdir" ]; then
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" stop -m fast >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  fi
}
