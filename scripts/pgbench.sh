#!/usr/bin/env bash
# pgbench.sh measures the PostgreSQL ceiling for Bento's write transaction:
# pgbench runs scripts/pgbench/place_order.sql — the order, its line, the
# sequence upsert and the outbox row in one transaction, the rows a unit of
# work writes for shop.Service.Place — at the same concurrency as
# `bento bench`, and prints transactions/s. BENCHMARKS.md divides the unit
# of work's commits/s by this number.
#
# Usage:
#   DB_URL=postgres://postgres@127.0.0.1:5432/bench scripts/pgbench.sh [-c CLIENTS] [-T SECONDS]
#       [-j THREADS] [-M simple|extended|prepared] [--compare] [--no-migrate]
#
#   -c CLIENTS   concurrent clients (default 16, or $CLIENTS)
#   -T SECONDS   duration (default 30, or $DURATION)
#   -j THREADS   pgbench threads (default 2)
#   -M MODE      query protocol (default prepared: pgx, under Bento, caches
#                prepared statements too)
#   --compare    then run `bento bench --workers CLIENTS --duration SECONDS`
#                on the same database and print commits/s ÷ pgbench tps
#   --no-migrate skip `go run ./cmd/bento migrate`
#
# It creates the database if it does not exist (with psql, on the server's
# postgres database), migrates it with `go run ./cmd/bento migrate`, prints
# the server's durability settings and every command it runs. Rows it
# writes have customers pgbench-<client>@example.com; they stay.
# PGBENCH names the pgbench binary (default: pgbench on PATH, else
# /usr/lib/postgresql/*/bin/pgbench).
set -euo pipefail
cd "$(dirname "$0")/.."

clients=${CLIENTS:-16}
duration=${DURATION:-30}
threads=2
mode=prepared
compare=0
migrate=1
while [ $# -gt 0 ]; do
  case "$1" in
    -c) clients=$2; shift 2 ;;
    -T) duration=${2%s}; shift 2 ;;
    -j) threads=$2; shift 2 ;;
    -M) mode=$2; shift 2 ;;
    --compare) compare=1; shift ;;
    --no-migrate) migrate=0; shift ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pgbench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in clients duration threads; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then
    echo "pgbench.sh: $v=${!v}: want a positive whole number" >&2; exit 2
  fi
done
if [ "$threads" -gt "$clients" ]; then threads=$clients; fi

if [ -z "${DB_URL:-}" ]; then
  echo "pgbench.sh: DB_URL is not set; accepted: a PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/bench" >&2
  exit 2
fi
# libpq takes postgres:// and postgresql:// URIs; drop a SQLAlchemy-style
# +driver suffix.
scheme=${DB_URL%%://*}
case "${scheme%%+*}" in
  postgres|postgresql) ;;
  *) echo "pgbench.sh: DB_URL=$scheme://…: pgbench needs a PostgreSQL database (postgres:// or postgresql://)" >&2; exit 2 ;;
esac
url="postgresql://${DB_URL#*://}"
redacted=$(printf '%s' "$url" | sed -E 's#(://[^:/@]+):[^@]*@#\1:xxxxx@#')

pgbench=${PGBENCH:-}
if [ -z "$pgbench" ]; then
  pgbench=$(command -v pgbench || true)
fi
if [ -z "$pgbench" ]; then
  pgbench=$(ls -1 /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -z "$pgbench" ] || [ ! -x "$pgbench" ]; then
  echo "pgbench.sh: no pgbench found (apt-get install postgresql-contrib, or set PGBENCH)" >&2
  exit 1
fi

run() {
  printf '+ %s\n' "$*" | sed -E 's#(://[^:/@ ]+):[^@ ]*@#\1:xxxxx@#g' >&2
  "$@"
}

# The database: create it when it does not exist.
if command -v psql >/dev/null; then
  if ! psql "$url" -XAtqc 'SELECT 1' >/dev/null 2>&1; then
    dbname=$(printf '%s' "$url" | sed -E 's#^[^/]*//[^/]*/([^?]*).*#\1#')
    admin=$(printf '%s' "$url" | sed -E 's#^([^/]*//[^/]*/)[^?]*#\1postgres#')
    if [ -n "$dbname" ] && [ "$dbname" != "$url" ]; then
      echo "pgbench.sh: creating database $dbname"
      run psql "$admin" -Xqc "CREATE DATABASE \"$dbname\""
    fi
  fi
fi
if [ "$migrate" = 1 ]; then
  run env DB_URL="$DB_URL" go run ./cmd/bento migrate
fi
if command -v psql >/dev/null; then
  echo "pgbench.sh: server: $(psql "$url" -XAtqc 'SHOW server_version') at $redacted"
  echo "pgbench.sh: synchronous_commit=$(psql "$url" -XAtqc 'SHOW synchronous_commit') fsync=$(psql "$url" -XAtqc 'SHOW fsync')" \
    "wal_sync_method=$(psql "$url" -XAtqc 'SHOW wal_sync_method') max_connections=$(psql "$url" -XAtqc 'SHOW max_connections')"
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
run "$pgbench" -n -M "$mode" -c "$clients" -j "$threads" -T "$duration" -f scripts/pgbench/place_order.sql "$url" | tee "$out"
tps=$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' "$out")
if [ -z "$tps" ]; then
  tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$out" | tail -1)
fi
failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$out")
if [ -z "$tps" ]; then
  echo "pgbench.sh: pgbench printed no tps line" >&2
  exit 1
fi
echo
echo "pgbench: ${tps} transactions/s (place_order.sql, -c $clients -j $threads -T ${duration}s -M $mode, failed ${failed:-0})"

if [ "$compare" = 1 ]; then
  bin=$(mktemp -d)/bento
  run go build -o "$bin" ./cmd/bento
  json=$(run env DB_URL="$DB_URL" "$bin" bench --workers "$clients" --duration "${duration}s" --json | tail -1)
  echo "$json"
  uow=$(printf '%s' "$json" | sed -nE 's/.*"throughput":([0-9.eE+-]+).*/\1/p')
  echo "bento bench: ${uow} commits/s with ${clients} workers"
  awk -v u="$uow" -v p="$tps" 'BEGIN { if (p > 0) printf "ratio: unit of work commits/s ÷ pgbench tps = %.3f\n", u / p }'
  rm -rf "$(dirname "$bin")"
fi
