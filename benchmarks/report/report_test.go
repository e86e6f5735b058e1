package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const pgbenchOut = `pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: scripts/pgbench/place_order.sql
number of transactions actually processed: 32/32
number of failed transactions: 0 (0.000%)
tps = 1200.5 (without initial connection time)
transaction type: scripts/pgbench/place_order.sql
number of transactions actually processed: 60000
number of failed transactions: 0 (0.000%)
latency average = 5.3 ms
tps = 3000.25 (without initial connection time)
`

// TestParseOutput: pgbench's last run is the rate and every run's
// transactions count; bento bench's JSON gives the rate and the warm-up
// and measured orders.
func TestParseOutput(t *testing.T) {
	var r record
	if err := parseOutput("pgbench", []byte(pgbenchOut), &r); err != nil {
		t.Fatal(err)
	}
	if r.Throughput != 3000.25 || r.Transactions != 60032 {
		t.Fatalf("pgbench: %v/s, %d transactions; want 3000.25/s, 60032", r.Throughput, r.Transactions)
	}
	if err := parseOutput("pgbench", []byte(strings.Replace(pgbenchOut, "transactions: 0 (0.000%)\nlatency", "transactions: 3 (0.1%)\nlatency", 1)), &record{}); err == nil {
		t.Fatal("failed pgbench transactions were not an error")
	}
	r = record{}
	bento := "bento bench: writing\n" + `{"throughput":2400.5,"p50_ms":5,"p99_ms":16,"max_ms":30,"mismatch":false,"counts":[{"arm":"uow","acked":48000},{"arm":"wuow","acked":32}]}` + "\n"
	if err := parseOutput("bento", []byte(bento), &r); err != nil {
		t.Fatal(err)
	}
	if r.Throughput != 2400.5 || r.Transactions != 48032 || r.P99MS != 16 {
		t.Fatalf("bento: %+v", r)
	}
	if err := parseOutput("bento", []byte(strings.Replace(bento, `"mismatch":false`, `"mismatch":true`, 1)), &record{}); err == nil {
		t.Fatal("a bento bench mismatch was not an error")
	}
}

// TestPostgresCPU: the server's CPU is its postmaster's own and reaped
// children's time plus its live children's, and nobody else's.
func TestPostgresCPU(t *testing.T) {
	proc := t.TempDir()
	stat := func(pid, comm string, ppid, utime, stime, cutime, cstime int) {
		dir := filepath.Join(proc, pid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime …
		line := pid + " (" + comm + ") S " + strconv.Itoa(ppid) + " 1 1 0 -1 0 0 0 0 0 " + strconv.Itoa(utime) + " " + strconv.Itoa(stime) + " " +
			strconv.Itoa(cutime) + " " + strconv.Itoa(cstime) + " 20 0 1 0\n"
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stat("100", "postgres", 1, 10, 5, 200, 100)                // 0.15 s own, 3 s reaped
	stat("101", "postgres: bench (x) idle", 100, 50, 50, 0, 0) // a backend: 1 s
	stat("102", "bento", 1, 500, 500, 0, 0)                    // not the server's
	got, err := postgresCPU(proc, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got < 4.149 || got > 4.151 {
		t.Fatalf("server CPU %v s, want 4.15", got)
	}
}

// TestRenderVerdicts: ratios are paired by round, and the verdicts come
// from the figures.
func TestRenderVerdicts(t *testing.T) {
	rn := run{meta: meta{Suite: "meta", Rounds: 2, Command: "scripts/benchmarks.sh"}}
	add := func(suite, arm string, round int, tp, server float64, p99 float64) {
		rn.records = append(rn.records, record{Suite: suite, Arm: arm, Round: round, Workers: 16, Command: arm, Throughput: tp,
			Transactions: 1000, ServerCPUS: server, ClientCPUS: 0.1, P99MS: p99})
	}
	add("ceiling", "uow", 1, 900, 0.5, 0)
	add("ceiling", "uow", 2, 800, 0.5, 0)
	add("ceiling", "pgbench-same", 1, 1000, 0.45, 0)
	add("ceiling", "pgbench-same", 2, 1000, 0.45, 0)
	add("ceiling", "pgbench-1rt", 1, 2000, 0.3, 0)
	add("ceiling", "pgbench-1rt", 2, 1000, 0.3, 0)
	add("ceiling", "pgx", 1, 950, 0.45, 0)
	add("ceiling", "pgx", 2, 950, 0.45, 0)
	add("latency", "bento-inproc", 1, 1000, 0, 10)
	add("latency", "watermill-1s", 1, 1000, 0, 1000)
	add("latency", "watermill-10ms", 1, 1000, 0, 50)
	rn.records[len(rn.records)-3].Detail = json.RawMessage(`{"commit_p99_ms": 7.3, "cpu_busy": 0.816, "publish_p99_ms": 2.5, "publish_max_ms": 40.25, "relay_db_p99_ms": 3.1}`)
	out := renderTables(rn, nil)
	for _, want := range []string{
		"| Unit of work ≥ 0.85× pgbench with the same statements and round trips, 16 workers | `uow` | `pgbench-same` | **0.850** (0.800–0.900) | met |",
		"| Unit of work ≥ 0.60× the one-round-trip limit, 16 workers | `uow` | `pgbench-1rt` | **0.625** (0.450–0.800) | met |",
		"| Server CPU per order ≤ 1.3× the one-round-trip limit's | `uow` | `pgbench-1rt` | **1.667** (1.667–1.667) | **missed** |",
		"| Client CPU per order ≤ 130 µs, 16 workers (the benchmark process's, warm-up included) | `uow` | — (µs per order) | **100** (100–100) | met |",
		"| p99 commit→published ≤ 1/10 of Watermill's at its defaults (1 s poll) | `bento-inproc` | `watermill-1s` | 0.010 | met |",
		"at its best setting measured (Watermill forwarder, 10 ms poll, batch 100) | `bento-inproc` | `watermill-10ms` | 0.200 | **missed** |",
		"| Relay burn-down ≥ 3× Watermill's forwarder, batch 100 | — | — | not measured | not measured |",
		"Go client on pgx comes | `pgx` | `pgbench-same` | **0.950** (0.950–0.950) | reported |",
		"| Unit of work ÷ the Go floor, 16 workers: what ent, database/sql and Bento cost | `uow` | `pgx` | **0.895** (0.842–0.947) | reported |",
		"| Go floor: bare pgx, the same rows in the same round trip (`bento bench --floor`) | **950** (950–950) |",
		// The producer's COMMIT p99, the machine's CPU and the relay's
		// batch times come from the command's detail; a record without
		// them shows none.
		"| 10.0 | 0.0 | 1,000 | 7.3 | 82% | 2.5 | 40.2 | 3.1 |",
		"| 1,000 | 0.0 | 1,000 | not measured | not measured | not measured | not measured | not measured |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	doc := "a\n" + beginMarker + "\nold\n" + endMarker + "\nb\n"
	got, err := splice(doc, "new\n")
	if err != nil || got != "a\n"+beginMarker+"\nnew\n"+endMarker+"\nb\n" {
		t.Fatalf("splice = %q, %v", got, err)
	}
	if _, err := splice("no markers", "x"); err == nil {
		t.Fatal("splice without markers succeeded")
	}
}

// TestMicro: go test benchmark lines are read per benchmark and unit, and
// the targets of the micro table are judged from them.
func TestMicro(t *testing.T) {
	out := `goos: linux
BenchmarkWrapperOverhead/postgres/create-2         	    5000	    380000 ns/op	    380000 plain-ns/op	    383800 bento-ns/op	         1.010 ratio
BenchmarkWrapperOverhead/postgres/create-2         	    5000	    380000 ns/op	    380000 plain-ns/op	    383800 bento-ns/op	         1.050 ratio
BenchmarkWrapperOverhead/postgres/create-2         	    5000	    380000 ns/op	    380000 plain-ns/op	    383800 bento-ns/op	         1.020 ratio
BenchmarkWrapperOverhead/postgres/tx-pipelined-2   5000   1 ns/op   0.9 ratio
BenchmarkPolicyDoSuccess-2   	300000000	         3.8 ns/op	       0 B/op	       0 allocs/op
BenchmarkSQLiteWriters/readers=0/serialize=true/maxopen=2-2   5000   100 ns/op   9600 tx/s   0 reads/s   0 busy
BenchmarkSQLiteWriters/readers=4/serialize=false/maxopen=2-2   5000   100 ns/op   7600 tx/s   2000 reads/s   0 busy
PASS
`
	m, err := parseGoBench([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if got := m["BenchmarkWrapperOverhead/postgres/create"]["ratio"]; len(got) != 3 || got[1] != 1.05 {
		t.Fatalf("ratios %v", got)
	}
	if _, err := parseGoBench([]byte(out + "--- FAIL: BenchmarkX\n")); err == nil {
		t.Fatal("a failed benchmark was not an error")
	}
	d, _ := json.Marshal(m)
	rn := run{meta: meta{Suite: "meta"}, records: []record{{Suite: "micro", Arm: "driver", Command: "go test ./driver", Detail: d}}}
	var b strings.Builder
	renderMicro(&b, rn)
	for _, want := range []string{
		"| BenchmarkWrapperOverhead/postgres/create | ratio | **1.020** (1.010–1.050) | ≤ 1.03× plain ent | met |",
		"| BenchmarkPolicyDoSuccess | allocs/op | 0 | 0 allocations | met |",
		"| BenchmarkWrapperOverhead/postgres/tx-pipelined | ratio | 0.900 | — | reported |",
		"| BenchmarkSQLiteWriters (every configuration) | busy | 0 | 0 SQLITE_BUSY | met |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in:\n%s", want, b.String())
		}
	}
}

// TestMeasureUntil: a command's stderr line matching -until ends the
// measured stretch, and the record gets the command's result.
func TestMeasureUntil(t *testing.T) {
	out := filepath.Join(t.TempDir(), "raw.jsonl")
	var log strings.Builder
	script := `echo '{"events_per_s": 5, "events": 10}'; echo 'load finished' >&2; sleep 0.1`
	if err := measure([]string{"-out", out, "-suite", "burndown", "-arm", "bento", "-parse", "relaybench", "-until", "^load finished",
		"--", "sh", "-c", script}, &log); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Error != "" || r.Throughput != 5 || r.Transactions != 10 || r.ClientCPUS < 0 || r.Command != "sh -c "+script {
		t.Fatalf("record %+v", r)
	}
	if !strings.Contains(log.String(), "load finished") {
		t.Fatalf("the command's stderr was not passed on:\n%s", log.String())
	}
}
