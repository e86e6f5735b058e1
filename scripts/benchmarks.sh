#!/usr/bin/env bash
# benchmarks.sh: one command, one run, one report. It runs every
# comparison of BENCHMARKS.md's summary side by side on this machine, in
# alternating rounds, measures the client's and the server's CPU around
# each arm from /proc, keeps the raw results in docs/benchmarks/report.jsonl
# and generates the tables (between the bench-report markers of
# BENCHMARKS.md) and the plots (docs/benchmarks/*.png) from them with
# benchmarks/report (bench-report render). Nothing in the tables is typed
# by hand. A full run's raw file is also kept as
# docs/benchmarks/runs/report-<date>.jsonl. To redraw from the raw files
# (after scripts/relay-shapes.sh, say, for its plot):
#   go -C benchmarks/report run . render -raw ../../docs/benchmarks/report.jsonl \
#     -shapes ../../docs/benchmarks/relay-shapes.txt -into ../../BENCHMARKS.md -plots ../../docs/benchmarks
#
#   scripts/benchmarks.sh            # the full run: about 20 minutes on 2 cores
#   QUICK=1 scripts/benchmarks.sh    # a smoke run of the tooling: ~3 minutes,
#                                    # seconds per arm, 1 round, no verdicts
#
# The suites, each on a private PostgreSQL 15 cluster this script starts
# (initdb in /tmp, fsync and synchronous_commit on, stopped at the end), so
# the server's CPU is the benchmark's alone, and the machine's NATS:
#
#   ceiling   16 workers on 16 connections, CEILING_ROUNDS rounds of four arms in
#             rotating order, DURATION seconds each after a warm-up of 2
#             transactions per worker: bento bench (shop.Service.Place in a
#             unit of work, OUTBOX_PUBLISHER=none); bento bench --floor (the
#             same rows in the same round trip by hand on a bare pgx pool:
#             the floor of a Go client); pgbench running
#             scripts/pgbench/place_order.sql (the unit of work's statements
#             in its one round trip); pgbench running place_order_1rt.sql
#             (the same rows in one statement). Both scripts are generated
#             from what a unit of work sends (shop's TestPgbenchScripts).
#   workers   the same four arms at 1, 4, 16 and 64 workers (= connections),
#             one round of SWEEP_DURATION seconds each
#   latency   relaybench (benchmarks/watermill): orders committed at RATE/s
#             for LAT_DURATION after LAT_WARMUP, commit→published at a
#             JetStream consumer; Bento's relay woken in process, Watermill's
#             forwarder at its defaults (1 s poll, batch 100) and tuned
#             (10 ms poll, batch 100 and WM_BATCH); ROUNDS rounds, rotating
#   burndown  BURN_N events pending, then Bento's relay or Watermill's
#             forwarder (batch 100) until the stream holds them all; ROUNDS
#             rounds, alternating
#   micro     the go test benchmarks that compare with a baseline inside
#             the benchmark, -count ROUNDS: the driver wrapper against plain
#             ent, metrics against none, the unit of work against
#             hand-written ent (PostgreSQL on the private cluster, MariaDB
#             and SQLite as the tests find them), the resilience success
#             path's allocations, SQLite's writers (SQLITE_BUSY)
#
# Environment (defaults for the full run; QUICK=1 shrinks them): ROUNDS (3),
# CEILING_ROUNDS (5: the write targets are judged on these rounds, and on
# this machine one round's ratio can land a fifth either side of the
# median; see docs/benchmarks/runs/settle-ab),
# DURATION (20), SWEEP_DURATION (10), WORKERS_LIST ("1 4 16 64"), RATE
# (1000), LAT_DURATION (20s), LAT_WARMUP (5s), BURN_N (50000), WM_BATCH
# (1000), RELAYBENCH_NATS (nats://127.0.0.1:4222), RAW (the raw file,
# docs/benchmarks/report.jsonl), SUITES ("ceiling workers latency burndown
# micro"), MICRO_N (3000: iterations of the database micro-benchmarks),
# SETTLE ("arm": a CHECKPOINT before every measured arm; "none": none
# before the write arms, to compare the two; the relay suites always start
# from a VACUUM ANALYZE and a CHECKPOINT).
# Run it on a quiet machine: it measures CPU per transaction, and anything
# else running shares the two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  ROUNDS=${ROUNDS:-1}; DURATION=${DURATION:-3}; SWEEP_DURATION=${SWEEP_DURATION:-2}; WORKERS_LIST=${WORKERS_LIST:-"1 16"}
  RATE=${RATE:-200}; LAT_DURATION=${LAT_DURATION:-3s}; LAT_WARMUP=${LAT_WARMUP:-1s}; BURN_N=${BURN_N:-2000}; MICRO_N=${MICRO_N:-100}
fi
ROUNDS=${ROUNDS:-3}
CEILING_ROUNDS=${CEILING_ROUNDS:-$([ "$QUICK" = 1 ] && echo "$ROUNDS" || echo 5)}
DURATION=${DURATION:-20}
SWEEP_DURATION=${SWEEP_DURATION:-10}
WORKERS_LIST=${WORKERS_LIST:-"1 4 16 64"}
RATE=${RATE:-1000}
LAT_DURATION=${LAT_DURATION:-20s}
LAT_WARMUP=${LAT_WARMUP:-5s}
BURN_N=${BURN_N:-50000}
WM_BATCH=${WM_BATCH:-1000}
MICRO_N=${MICRO_N:-3000}
SUITES=${SUITES:-"ceiling workers latency burndown micro"}
RAW=${RAW:-docs/benchmarks/report.jsonl}
SETTLE=${SETTLE:-arm}
case $SETTLE in arm|none) ;; *) echo "benchmarks.sh: SETTLE=$SETTLE: want arm or none" >&2; exit 2 ;; esac
export RELAYBENCH_NATS=${RELAYBENCH_NATS:-nats://127.0.0.1:4222}
W=16 # the workers of the targets

say() { printf '+ %s\n' "$*" >&2; }
work=$(mktemp -d /tmp/bento-benchmarks-XXXXXX)
. scripts/lib/private-pg.sh
cleanup() {
  private_pg_stop
  rm -rf "$work"
}
trap cleanup EXIT

scripts/services.sh >/dev/null
pgbench=$(command -v pgbench || echo "$pgbin/pgbench")
say "building bento, relaybench and bench-report in $work"
go build -o "$work/bento" ./cmd/bento
(cd benchmarks/watermill && go build -o "$work/relaybench" .)
(cd benchmarks/report && go build -o "$work/bench-report" .)
case " $SUITES " in *" micro "*)
  for p in driver metrics unitofwork resilience dialects; do go test -c -o "$work/$p.test" "./$p"; done ;;
esac

# A private PostgreSQL cluster: its postmaster's process tree is the server
# whose CPU is measured.
private_pg_start bento-benchmarks-pg 200
admin=$pgadmin
export RELAYBENCH_PG_ADMIN=$admin
psql "$admin" -Xqc 'CREATE DATABASE bench'
dburl="postgres://postgres@127.0.0.1:$port/bench?sslmode=disable"
pgurl="postgresql://postgres@127.0.0.1:$port/bench"
say "bento migrate"
DB_URL=$dburl "$work/bento" migrate >/dev/null

mkdir -p "$(dirname "$RAW")"
settings="ceiling ${CEILING_ROUNDS} rounds of ${DURATION} s per arm; workers sweep ${WORKERS_LIST// /, } at ${SWEEP_DURATION} s; latency ${RATE}/s for ${LAT_DURATION} after ${LAT_WARMUP}; burn-down ${BURN_N} events; $([ "$SETTLE" = arm ] && echo 'a CHECKPOINT before each arm' || echo 'no CHECKPOINT before the write arms (SETTLE=none), one before each relay arm'), VACUUM ANALYZE before the relay suites."
printf '{"suite":"meta","date":"%s","commit":"%s","machine":"%s cores (%s), %s GiB","go":"%s","server":"PostgreSQL %s (private cluster, fsync=%s, synchronous_commit=%s, shared_buffers=%s)","nats":"%s","quick":%s,"rounds":%s,"command":"%s","settings":"%s"}\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs/benchmarks' ':!BENCHMARKS.md' || echo '+changes')" "$(nproc)" \
  "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(awk '/MemTotal/ {printf "%d", $2/1048576}' /proc/meminfo)" \
  "$(go version | cut -d' ' -f3)" "$(psql "$admin" -XAtqc 'SHOW server_version')" "$(psql "$admin" -XAtqc 'SHOW fsync')" \
  "$(psql "$admin" -XAtqc 'SHOW synchronous_commit')" "$(psql "$admin" -XAtqc 'SHOW shared_buffers')" "$RELAYBENCH_NATS" \
  "$([ "$QUICK" = 1 ] && echo true || echo false)" "$ROUNDS" "$([ "$QUICK" = 1 ] && echo 'QUICK=1 ')scripts/benchmarks.sh" "$settings" >"$RAW"

# settle: before every measured arm, a CHECKPOINT, so that no arm pays for
# the dirty pages and the WAL the arms before it left (a checkpoint the
# server starts by itself in the middle of an arm writes them out then;
# the write suites leave gigabytes of WAL, and the latency suite after
# them saw COMMIT stalls of tens of milliseconds). Each arm still pays for
# what it writes itself. SETTLE=none leaves it out before the write arms
# (to measure what it changes there); the relay arms always have it.
# Before the relay suites, a VACUUM ANALYZE of the write suites' database
# too, so that autovacuum does not take it up during them.
checkpoint() { psql "$admin" -Xqc CHECKPOINT; }
vacuum() { psql "$pgurl" -Xqc 'VACUUM (ANALYZE)'; checkpoint; }
relay_suite=0
settle() { if [ "$SETTLE" = arm ] || [ "$relay_suite" = 1 ]; then checkpoint; fi; }

measure() { settle; "$work/bench-report" measure -out "$RAW" -server-pid "$pgpid" "$@"; }

# arm SUITE ARM ROUND WORKERS SECONDS: one run of a write arm.
write_arm() {
  local suite=$1 arm=$2 round=$3 c=$4 secs=$5 j=$(( $4 < 2 ? 1 : 2 ))
  case $arm in
    uow|pgx) # bento bench: the unit of work, or the Go floor under it (--floor)
      local floor=""
      if [ "$arm" = pgx ]; then floor="--floor "; fi
      say "$suite/$arm round $round: bento bench ${floor}--workers $c --duration ${secs}s"
      measure -suite "$suite" -arm "$arm" -round "$round" -workers "$c" -parse bento -until '^bento bench: load finished' \
        -label "DB_POOL_SIZE=$c DB_MAX_OVERFLOW=0 bento bench ${floor}--workers $c --duration ${secs}s --warmup $(( 2 * c ))" -- \
        env DB_URL="$dburl" OUTBOX_PUBLISHER=none DB_POOL_SIZE="$c" DB_MAX_OVERFLOW=0 \
        "$work/bento" bench ${floor:+--floor} --workers "$c" --duration "${secs}s" --warmup $(( 2 * c )) --migrate=false --json ;;
    pgbench-same|pgbench-1rt)
      local f=scripts/pgbench/place_order.sql
      if [ "$arm" = pgbench-1rt ]; then f=scripts/pgbench/place_order_1rt.sql; fi
      say "$suite/$arm round $round: pgbench -c $c -f $f (warm-up -t 2, then -T $secs)"
      measure -suite "$suite" -arm "$arm" -round "$round" -workers "$c" -parse pgbench \
        -label "pgbench -M prepared -c $c -j $j -T $secs -f $f (after -t 2)" -- \
        bash -c "'$pgbench' -n -M prepared -c $c -j $j -t 2 -f $f '$pgurl' && '$pgbench' -n -M prepared -c $c -j $j -T $secs -f $f '$pgurl'" ;;
  esac
}

# rotate N WORDS…: the words rotated left by N.
rotate() { local n=$1; shift; local a=("$@"); local k=$(( n % ${#a[@]} )); echo "${a[@]:k}" "${a[@]:0:k}"; }

for suite in $SUITES; do
  relay_suite=0
  case $suite in latency|burndown) relay_suite=1 ;; esac
  case $suite in
    ceiling)
      for r in $(seq 1 "$CEILING_ROUNDS"); do
        for a in $(rotate $(( r - 1 )) uow pgx pgbench-same pgbench-1rt); do write_arm ceiling "$a" "$r" $W "$DURATION"; done
      done ;;
    workers)
      i=0
      for c in $WORKERS_LIST; do
        for a in $(rotate $i uow pgx pgbench-same pgbench-1rt); do write_arm workers "$a" 1 "$c" "$SWEEP_DURATION"; done
        i=$(( i + 1 ))
      done ;;
    latency)
      vacuum
      lat="-mode latency -rate $RATE -duration $LAT_DURATION -warmup $LAT_WARMUP"
      for r in $(seq 1 "$ROUNDS"); do
        for a in $(rotate $(( r - 1 )) bento-inproc watermill-1s watermill-10ms watermill-10ms-1k); do
          case $a in
            bento-inproc) args="-system bento -wake inproc" ;;
            watermill-1s) args="-system watermill -poll 1s -batch 100" ;;
            watermill-10ms) args="-system watermill -poll 10ms -batch 100" ;;
            watermill-10ms-1k) args="-system watermill -poll 10ms -batch $WM_BATCH" ;;
          esac
          say "latency/$a round $r: relaybench $args $lat"
          # shellcheck disable=SC2086
          measure -suite latency -arm "$a" -round "$r" -parse relaybench -series "$work/series.csv" -label "relaybench $args $lat" -- \
            "$work/relaybench" $args $lat -series "$work/series.csv"
        done
      done ;;
    burndown)
      vacuum
      for r in $(seq 1 "$ROUNDS"); do
        for s in $(rotate $(( r - 1 )) bento watermill); do
          say "burndown/$s round $r: relaybench -system $s -mode burndown -n $BURN_N -batch 100"
          measure -suite burndown -arm "$s" -round "$r" -parse relaybench -label "relaybench -system $s -mode burndown -n $BURN_N -batch 100" -- \
            "$work/relaybench" -system "$s" -mode burndown -n "$BURN_N" -batch 100
        done
      done ;;
    micro)
      uown=$(( MICRO_N * 2 / 3 ))
      for m in "driver WrapperOverhead ${MICRO_N}x" "metrics MetricsOverhead ${MICRO_N}x" "unitofwork UoW ${uown}x" \
               "resilience . $([ "$QUICK" = 1 ] && echo 100000x || echo 1s)" "dialects SQLiteWriters $(( MICRO_N / 3 ))x"; do
        read -r p bench n <<<"$m"
        say "micro/$p: go test ./$p -bench $bench -benchtime $n -count $ROUNDS"
        measure -suite micro -arm "$p" -parse gotest -label "go test ./$p -run '^\$' -bench $bench -benchmem -benchtime $n -count $ROUNDS" -- \
          bash -c "cd $p && BENTO_TEST_POSTGRES_URL='postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable' \
            '$work/$p.test' -test.run '^\$' -test.bench '$bench' -test.benchmem -test.benchtime $n -test.count $ROUNDS -test.timeout 30m"
      done ;;
    *) echo "benchmarks.sh: unknown suite $suite (SUITES: ceiling workers latency burndown micro)" >&2; exit 2 ;;
  esac
done

say "bench-report render"
"$work/bench-report" render -raw "$RAW" -shapes docs/benchmarks/relay-shapes.txt -into BENCHMARKS.md -plots docs/benchmarks
if [ "$QUICK" != 1 ]; then # a full run's raw file is kept for the record
  mkdir -p docs/benchmarks/runs
  cp "$RAW" "docs/benchmarks/runs/report-$(date -u +%Y%m%dT%H%MZ).jsonl"
fi
echo "benchmarks: tables written into BENCHMARKS.md, plots into docs/benchmarks/, raw results in $RAW"
