#!/usr/bin/env bash
# benchmarks.sh runs every measurement behind BENCHMARKS.md, one after the
# other, on this machine, and keeps each tool's raw output in a directory
# (default /tmp/bento-benchmarks-<date>). Run it on a quiet machine; it
# takes about 30 minutes on 2 cores. Each section of BENCHMARKS.md names
# the command below that produced it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/bento-benchmarks-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
scripts/services.sh
go build -o "$out/bento" ./cmd/bento
run() { # name, command...
  local name=$1; shift
  echo "== $name: $*" | tee "$out/$name.txt"
  "$@" 2>&1 | tee -a "$out/$name.txt"
}
PG=postgres://postgres@127.0.0.1:5432
run wrapper go test ./driver -run '^$' -bench WrapperOverhead -benchtime 5000x -count 3
run sqlite-writers go test ./dialects -run '^$' -bench SQLiteWriters -benchtime 5000x -count 2
run resilience-allocs go test ./resilience -run '^$' -bench . -benchmem -count 3
run metrics go test ./metrics -run '^$' -bench . -benchmem -benchtime 5000x -count 3
run uow go test ./unitofwork -run '^$' -bench UoW -benchtime 6000x -count 3
for d in pg my lite; do
  case $d in
    pg) psql -q -h 127.0.0.1 -U postgres -c 'DROP DATABASE IF EXISTS bench_pg' -c 'CREATE DATABASE bench_pg'; U=$PG/bench_pg?sslmode=disable ;;
    my) mariadb -h 127.0.0.1 -uroot -e 'DROP DATABASE IF EXISTS bench_my; CREATE DATABASE bench_my'; U=mysql://root@127.0.0.1:3306/bench_my ;;
    lite) rm -f /tmp/bench.db*; U=sqlite:///tmp/bench.db ;;
  esac
  for C in 1 16; do
    run "bench-$d-c$C" env DB_URL=$U OUTBOX_PUBLISHER=none "$out/bento" bench --baseline --workers $C --duration 30s --rounds 5
  done
done
run bench-pg-readmix env DB_URL=$PG/bench_pg?sslmode=disable OUTBOX_PUBLISHER=none "$out/bento" bench --workers 16 --duration 30s --read-mix 0.8
for C in 1 16; do
  run "pgbench-c$C" env DB_URL=$PG/bench_pgbench?sslmode=disable scripts/pgbench.sh -c $C -T 30 --compare
done
run relay-1000 scripts/relay-bench.sh --private-pg --out "$out/relay1000.jsonl"
run relay-200 env RATE=200 N=20000 N1=2000 scripts/relay-bench.sh --private-pg --out "$out/relay200.jsonl"
run relay-burndown env BENTO_TEST_DIALECTS=postgres,mysql,sqlite3 go test ./outbox -run '^$' -bench RelayBurnDown -benchtime 1x
echo "raw outputs in $out"
