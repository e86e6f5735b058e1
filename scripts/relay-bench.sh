#!/usr/bin/env bash
# relay-bench.sh runs Bento's outbox relay and Watermill's forwarder
# (watermill-sql PostgreSQL subscriber → components/forwarder →
# watermill-nats JetStream) side by side on this machine with the program
# in benchmarks/watermill, and prints a comparison table:
#
#   burn-down   N events pending in the outbox, then the relay (or forwarder)
#               runs until the stream holds all N: events/s at batch 1, 100
#               and 1,000 (Bento OUTBOX_BATCH_SIZE; watermill-sql
#               SubscribeBatchSize)
#   latency     orders committed at RATE/s for DURATION (open loop), each
#               with its event; commit→published p50/p99 at a JetStream
#               consumer: Bento woken in process, by LISTEN/NOTIFY, and by a
#               1 s poll; Watermill at its default 1 s poll and tuned to 10 ms;
#               "stored p99" is commit → stored in the stream (the relay and
#               the broker's store; the rest is delivery to the consumer),
#               "cpu busy" the machine's CPU in use while committing
#
# Every run has a fresh PostgreSQL database (dropped at the end) and its own
# JetStream stream RELAYBENCH_<run> on NATS (deleted at the end). The two
# systems alternate so drift hits both.
#
# Usage:
#   scripts/relay-bench.sh [--private-pg] [--nats-server BIN] [--quick] [--out FILE]
#
#   --private-pg  run a private PostgreSQL 15 cluster (initdb in /tmp, fsync
#                 on, as the postgres user) instead of the server of
#                 RELAYBENCH_PG_ADMIN. Use it when other clients may hold
#                 transactions open: watermill-sql only reads messages older
#                 than the cluster's oldest running transaction
#                 (pg_snapshot_xmin), so one idle-in-transaction session
#                 anywhere on the server stalls the forwarder.
#   --nats-server BIN
#                 run a private NATS server from BIN (JetStream, its store
#                 in /tmp) instead of the one at RELAYBENCH_NATS, to measure
#                 against another NATS version, e.g. the current release:
#                 GOBIN=/tmp/nats go install github.com/nats-io/nats-server/v2@v2.15.2
#   --quick       small sizes to check that everything works (N=5,000,
#                 N1=1,000, DURATION=5s, RATE=500)
#   --out FILE    also keep every run's JSON line in FILE
#
# Environment: RELAYBENCH_PG_ADMIN (postgres://postgres@127.0.0.1:5432/postgres),
# RELAYBENCH_NATS (nats://127.0.0.1:4222), N (100000 events, batch 100 and
# 1000), N1 (10000 events, batch 1), RATE (1000), DURATION (30s), WARMUP (5s:
# each latency run starts on a new database with a cold pool, and PostgreSQL
# starting its backends under the full rate keeps commits behind for the
# first 2-3 s; see docs/benchmarks/history.md).
set -euo pipefail
cd "$(dirname "$0")/.."

private=0
out=""
N=${N:-100000}
N1=${N1:-10000}
RATE=${RATE:-1000}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
natsbin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --private-pg) private=1; shift ;;
    --quick) N=5000; N1=1000; DURATION=5s; RATE=500; WARMUP=1s; shift ;;
    --nats-server) natsbin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,47p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "relay-bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
export RELAYBENCH_NATS=${RELAYBENCH_NATS:-nats://127.0.0.1:4222}
export RELAYBENCH_PG_ADMIN=${RELAYBENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}

work=$(mktemp -d /tmp/relay-bench-XXXXXX)
. scripts/lib/private-pg.sh
natspid=""
cleanup() {
  if [ -n "$natspid" ]; then
    kill "$natspid" 2>/dev/null || true
    wait "$natspid" 2>/dev/null || true
  fi
  private_pg_stop
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '+ %s\n' "$*" >&2; }

say "(cd benchmarks/watermill && go build -o $work/relaybench .)"
(cd benchmarks/watermill && go build -o "$work/relaybench" .)

if [ "$private" = 1 ]; then
  private_pg_start relay-bench-pg 100
  export RELAYBENCH_PG_ADMIN=$pgadmin
fi

if [ -n "$natsbin" ]; then
  nport=$(( 54000 + RANDOM % 900 ))
  say "start $natsbin on port $nport (JetStream store in $work/nats)"
  "$natsbin" -a 127.0.0.1 -p "$nport" -js -sd "$work/nats" -l "$work/nats.log" &
  natspid=$!
  export RELAYBENCH_NATS="nats://127.0.0.1:$nport"
  for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$nport") 2>/dev/null; then break; fi
    sleep 0.1
  done
fi

if command -v psql >/dev/null; then
  echo "relay-bench: PostgreSQL $(psql "$RELAYBENCH_PG_ADMIN" -XAtqc 'SHOW server_version') at ${RELAYBENCH_PG_ADMIN}," \
    "fsync=$(psql "$RELAYBENCH_PG_ADMIN" -XAtqc 'SHOW fsync') synchronous_commit=$(psql "$RELAYBENCH_PG_ADMIN" -XAtqc 'SHOW synchronous_commit')"
  old=$(psql "$RELAYBENCH_PG_ADMIN" -XAtqc "SELECT count(*) FROM pg_stat_activity WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND xact_start < now() - interval '10 seconds'")
  if [ "${old:-0}" != 0 ]; then
    echo "relay-bench: WARNING: $old session(s) on this server hold a transaction open for more than 10 s;" \
      "watermill-sql reads nothing newer than the oldest one, so its runs will stall: use --private-pg" >&2
  fi
fi
echo "relay-bench: NATS ${RELAYBENCH_NATS}; N=$N (batch 1: N1=$N1); latency at ${RATE}/s for ${DURATION} (warm-up ${WARMUP}); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo

results="$work/results.jsonl"
: >"$results"
# run KEY ARGS...: one relaybench run; its JSON line is kept under KEY.
run() {
  local key=$1; shift
  say "$work/relaybench $*"
  local line
  if ! line=$("$work/relaybench" "$@" | tail -1); then
    echo "relay-bench: run $key failed: $line" >&2
  fi
  printf '%s\t%s\n' "$key" "$line" >>"$results"
  if [ -n "$out" ]; then printf '%s\n' "$line" >>"$out"; fi
  printf '  %s: %s\n' "$key" "$line" >&2
}
# get KEY FIELD: a number or a string from a kept JSON line ("" when missing).
get() {
  awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$results" |
    sed -nE -e "s/.*\"$2\":([0-9.eE+-]+).*/\1/p" -e "s/.*\"$2\":\"([^\"]*)\".*/\1/p" | head -1
}

for b in 1 100 1000; do
  n=$N
  if [ "$b" = 1 ]; then n=$N1; fi
  if [ "$b" = 100 ]; then order="watermill bento"; else order="bento watermill"; fi
  for s in $order; do
    run "burn-$s-$b" -system "$s" -mode burndown -n "$n" -batch "$b"
  done
done
lat="-mode latency -rate $RATE -duration $DURATION -warmup $WARMUP"
run lat-bento-inproc -system bento $lat -wake inproc
run lat-watermill-1s -system watermill $lat -poll 1s
run lat-bento-notify -system bento $lat -wake notify
run lat-watermill-10ms -system watermill $lat -poll 10ms
run lat-bento-poll -system bento $lat -wake poll -poll 1s

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else printf "-" }'; }
check() { # check VALUE OP LIMIT → "met" / "missed"
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { if (v == "" || v == "-") { print "n/a"; exit }
    ok = (op == ">=") ? (v >= l) : (v <= l); print ok ? "met" : "MISSED" }'
}

echo
echo "Relay burn-down: events/s until the stream holds every pending event"
printf '  %-7s %10s %12s %16s\n' batch bento watermill "bento/watermill"
for b in 1 100 1000; do
  bb=$(get "burn-bento-$b" events_per_s); ww=$(get "burn-watermill-$b" events_per_s)
  printf '  %-7s %10s %12s %16s\n' "$b" "${bb:--}" "${ww:--}" "$(ratio "$bb" "$ww")"
done
echo
echo "Commit→published at a JetStream consumer, ${RATE} events/s for ${DURATION} (ms)"
printf '  %-34s %9s %9s %9s %12s %9s %10s %9s\n' arm p50 p99 max "stored p99" "cpu busy" committed missing
for k in lat-bento-inproc:"bento, in-process wake-up" lat-bento-notify:"bento, LISTEN/NOTIFY" lat-bento-poll:"bento, 1 s poll only" \
         lat-watermill-1s:"watermill, 1 s poll (default)" lat-watermill-10ms:"watermill, 10 ms poll"; do
  key=${k%%:*}; title=${k#*:}
  printf '  %-34s %9s %9s %9s %12s %9s %10s %9s\n' "$title" "$(get "$key" p50_ms)" "$(get "$key" p99_ms)" "$(get "$key" max_ms)" \
    "$(get "$key" stored_p99_ms)" "$(get "$key" cpu_busy)" "$(get "$key" committed)" "$(get "$key" missing)"
done
echo
b100=$(ratio "$(get burn-bento-100 events_per_s)" "$(get burn-watermill-100 events_per_s)")
b1000=$(ratio "$(get burn-bento-1000 events_per_s)" "$(get burn-watermill-1000 events_per_s)")
p99r=$(ratio "$(get lat-bento-inproc p99_ms)" "$(get lat-watermill-1s p99_ms)")
p99=$(get lat-bento-inproc p99_ms)
burn=$(get burn-bento-1000 events_per_s)
natsv=$(get lat-bento-inproc nats_server)
echo "NATS server ${natsv:-?} at ${RELAYBENCH_NATS}"
echo
echo "Targets"
echo "  relay throughput bento ≥ 3× watermill (batch 100):   ${b100}×  $(check "$b100" '>=' 3)"
echo "  relay throughput bento ≥ 3× watermill (batch 1000):  ${b1000}×  $(check "$b1000" '>=' 3)"
echo "  p99 bento wake-up ≤ 1/10 of watermill's default:     $(ratio "$p99" "$(get lat-watermill-1s p99_ms)")  $(check "$p99r" '<=' 0.1)"
echo "  p99 bento wake-up ≤ 20 ms at ${RATE}/s:               ${p99:--} ms  $(check "$p99" '<=' 20)"
echo "  burn-down ≥ 10,000 events/s (bento, batch 1000):     ${burn:--}/s  $(check "$burn" '>=' 10000)"
echo "  burn-down ≥ 10,000 events/s (bento, batch 100):      $(get burn-bento-100 events_per_s)/s  $(check "$(get burn-bento-100 events_per_s)" '>=' 10000)"
