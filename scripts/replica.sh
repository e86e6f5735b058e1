#!/usr/bin/env bash
# replica.sh makes a PostgreSQL streaming replica of the local server
# (127.0.0.1:5432) on 127.0.0.1:5433 with pg_basebackup -R, running as the
# postgres user, for the replica tests. Idempotent: a running standby is
# left alone; a broken one is rebuilt.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/$(ls /etc/postgresql | head -n1)/bin}
PRIMARY_PORT=${PRIMARY_PORT:-5432}
REPLICA_PORT=${BENTO_REPLICA_PORT:-5433}
DIR=${BENTO_REPLICA_DIR:-/var/lib/postgresql/bento-replica}
HBA=$(psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -Atc "SHOW hba_file")
as_pg() { runuser -u postgres -- "$@"; }

SLOT=bento_replica
# Running, in recovery and streaming from the primary: nothing to do. A
# standby that runs but no longer streams (it fell behind the WAL the
# primary kept) is rebuilt.
if [ "$(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -Atc "SELECT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')" 2>/dev/null || true)" = "t" ]; then
  echo "replica: streaming replica already running on $REPLICA_PORT"
  exit 0
fi

# Replication connections from 127.0.0.1, trusted like the rest of this
# machine's local connections.
if ! grep -Eq '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32' "$HBA"; then
  echo "host replication all 127.0.0.1/32 trust" >> "$HBA"
  psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -Atc "SELECT pg_reload_conf()" >/dev/null
fi

if [ -f "$DIR/postmaster.pid" ]; then
  as_pg "$PGBIN/pg_ctl" -D "$DIR" -m immediate stop >/dev/null 2>&1 || true
fi
rm -rf "$DIR"
# A physical replication slot keeps the WAL the standby has not received
# yet, so a standby stopped by a test (or slowed by a burst of writes)
# always catches up instead of finding its WAL removed.
psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -Atc \
  "SELECT pg_drop_replication_slot('$SLOT') FROM pg_replication_slots WHERE slot_name = '$SLOT'" >/dev/null
mkdir -p "$DIR"
chown postgres:postgres "$DIR"
chmod 700 "$DIR"
echo "replica: pg_basebackup into $DIR"
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$DIR" -R -X stream -c fast -C -S "$SLOT"
# The Debian layout keeps postgresql.conf outside the data directory.
cat > "$DIR/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $REPLICA_PORT
unix_socket_directories = '/tmp'
hot_standby = on
max_connections = 100
shared_buffers = 64MB
hot_standby_feedback = on
CONF
cp "$HBA" "$DIR/pg_hba.conf"
chown postgres:postgres "$DIR/postgresql.conf" "$DIR/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$DIR" -l "$DIR/replica.log" -w -t 60 start >/dev/null
for _ in $(seq 1 60); do
  if [ "$(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -Atc 'SELECT pg_is_in_recovery()' 2>/dev/null || true)" = "t" ]; then
    echo "replica: streaming replica running on $REPLICA_PORT"
    exit 0
  fi
  sleep 0.5
done
echo "replica: the standby did not come up; see $DIR/replica.log" >&2
exit 1
