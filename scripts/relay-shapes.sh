#!/usr/bin/env bash
# relay-shapes.sh measures the relay's burn-down on the shapes of backlog
# users have (BenchmarkRelayShapes in outbox/shape_test.go: one event per
# aggregate, 1,000 and 20 aggregates, one aggregate, Zipf over 10,000; one
# relay and three), then 1,000,000 pending events against 100,000 of the
# same shapes on PostgreSQL (the claim's cost must not grow with the
# backlog), and writes the tables between the relay-shapes markers of
# BENCHMARKS.md, with the raw output in docs/benchmarks/relay-shapes.txt.
#
#   scripts/relay-shapes.sh                # every dialect, 3 rounds
#   ROUNDS=1 DIALECTS=postgres scripts/relay-shapes.sh
#   BIG=0 scripts/relay-shapes.sh          # without the 1,000,000 run
#   APPEND=1 DIALECTS=sqlite3 BIG=0 scripts/relay-shapes.sh
#                                          # add a dialect's rows to the last run's
#   SCALE=0 LATENCY=0 scripts/relay-shapes.sh
#                                          # without the scale-out and latency parts
#
# SCALE=1 (default) adds relay scale-out on PostgreSQL: 1, 2 and 4 relays
# on the uniform, 20-aggregate and Zipf backlogs. LATENCY=1 (default) adds
# commit→published at 1,000 events/s (relaybench in benchmarks/watermill,
# in-process wake-up, the machine's PostgreSQL and NATS) with each event on
# one of 20 hot aggregates against the uniform shape (one of 1,000,000),
# rounds alternating. Stop other load first, a streaming replica too: its
# WAL sender and receiver take CPU from every commit.
#
# Rounds alternate (each round runs every shape once, and the relay
# counts in the opposite order to the round before), so a slow stretch of
# the machine falls on every shape alike; the table gives the median and
# the range. Each run starts from a vacuumed table and an empty stream
# (BenchmarkRelayShapes). Run it on a quiet machine: about 12 minutes a round.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DIALECTS=${DIALECTS:-sqlite3,postgres,mysql}
BIG=${BIG:-1}
SCALE=${SCALE:-1}
LATENCY=${LATENCY:-1}
raw=docs/benchmarks/relay-shapes.txt
mkdir -p docs/benchmarks
scripts/services.sh >/dev/null

# A replication slot that no standby reads (the replica tests' standby,
# stopped) keeps every WAL segment the run writes, gigabytes of them, so
# PostgreSQL creates each new segment instead of recycling one and the
# relays slow down as the run goes on: a run made beside one drained the
# Zipf shape at 15,000 events/s against 25,000 without it. Refuse to run
# beside one.
# The server is the one BenchmarkRelayShapes uses (BENTO_TEST_POSTGRES_URL,
# as the tests do).
pg=${BENTO_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
slots=$(psql "$pg" -XAtc "SELECT string_agg(slot_name, ', ') FROM pg_replication_slots WHERE NOT active")
if [ -n "$slots" ]; then
  echo "relay-shapes: inactive replication slot(s) on ${pg%%\?*}: $slots. They keep all the WAL this run writes and slow it down; drop them first (psql -c \"SELECT pg_drop_replication_slot('<name>')\"; scripts/replica.sh makes the standby's again when it is needed)." >&2
  exit 1
fi
go test -c -o /tmp/outbox.test ./outbox/
{
  echo "# scripts/relay-shapes.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD), $(nproc) cores, $(go version | cut -d' ' -f3)"
  for round in $(seq 1 "$ROUNDS"); do
    # One relay first in odd rounds, three first in even ones: a run
    # that follows another on the same table is a little slower.
    order=1,3
    [ $((round % 2)) = 0 ] && order=3,1
    echo "# round $round, relays $order"
    (cd outbox && BENTO_TEST_DIALECTS=$DIALECTS BENTO_BENCH_RELAYS=$order /tmp/outbox.test -test.run '^$' -test.bench 'RelayShapes' -test.benchtime 1x -test.timeout 60m)
  done
  if [ "$BIG" = 1 ]; then
    for round in $(seq 1 "$ROUNDS"); do
      for n in 100000 1000000; do
        echo "# backlog $n, round $round"
        (cd outbox && BENTO_TEST_DIALECTS=postgres BENTO_BENCH_BACKLOG=$n /tmp/outbox.test -test.run '^$' \
          -test.bench 'RelayShapes/postgres/(uniform|aggregates=20)/relays=1$' -test.benchtime 1x -test.timeout 60m | sed "s/^Benchmark/backlog=$n Benchmark/")
      done
    done
  fi
  if [ "$SCALE" = 1 ]; then
    for round in $(seq 1 "$ROUNDS"); do
      order=1,2,4
      [ $((round % 2)) = 0 ] && order=4,2,1
      echo "# scale-out, round $round, relays $order"
      (cd outbox && BENTO_TEST_DIALECTS=postgres BENTO_BENCH_RELAYS=$order /tmp/outbox.test -test.run '^$' \
        -test.bench 'RelayShapes/postgres/(uniform|aggregates=20|zipf=1.1)/' -test.benchtime 1x -test.timeout 60m | sed "s/^Benchmark/scale Benchmark/")
    done
  fi
  if [ "$LATENCY" = 1 ]; then
    (cd benchmarks/watermill && go build -o /tmp/relaybench .)
    for round in $(seq 1 "$ROUNDS"); do
      for n in 20 1000000; do
        echo "# latency, $n aggregates, round $round"
        echo "latency aggregates=$n $(/tmp/relaybench -system bento -mode latency -rate 1000 -duration 30s -warmup 5s -aggregates $n | tail -1)"
      done
    done
  fi
} 2>&1 | if [ "${APPEND:-0}" = 1 ]; then tee -a "$raw"; else tee "$raw"; fi

go run ./internal/benchtable -shapes "$raw" -into BENCHMARKS.md
echo "relay-shapes: tables written into BENCHMARKS.md; raw output in $raw"
# The burn-down plot of BENCHMARKS.md reads the same raw file.
go -C benchmarks/report run . render -raw ../../docs/benchmarks/report.jsonl -shapes "../../$raw" \
  -into ../../BENCHMARKS.md -plots ../../docs/benchmarks
