package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
)

// benchJSON decodes the last line of a bench run's stdout.
func benchJSON(t *testing.T, r result) benchResult {
	t.Helper()
	out := strings.TrimRight(r.stdout, "\n")
	last := out[strings.LastIndex(out, "\n")+1:]
	var res benchResult
	if err := json.Unmarshal([]byte(last), &res); err != nil {
		t.Fatalf("the last line of stdout is not a JSON object: %v\n%s", err, r)
	}
	// The contract's keys are there, whatever their values.
	var keys map[string]any
	_ = json.Unmarshal([]byte(last), &keys)
	for _, k := range []string{"committed", "failed", "throughput", "p50_ms", "p99_ms", "p95_ms", "max_ms", "failed_by_category", "mismatch", "published"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("the JSON has no %q\n%s", k, last)
		}
	}
	return res
}

func TestBenchOrdersJSON(t *testing.T) {
	t.Parallel()
	for _, d := range allDialects {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			url := dialectURL(t, d)
			r := runCLI(t, []string{"DB_URL=" + url}, "bench", "--orders", "200", "--workers", "4", "--json")
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			res := benchJSON(t, r)
			if res.Committed != 200 || res.Failed != 0 || res.Mismatch {
				t.Fatalf("want 200 committed, 0 failed, no mismatch; got %d, %d, %v\n%s", res.Committed, res.Failed, res.Mismatch, r)
			}
			if res.Dialect != d || res.Workers != 4 || res.Throughput <= 0 {
				t.Errorf("dialect %q workers %d throughput %v\n%s", res.Dialect, res.Workers, res.Throughput, r)
			}
			if !(0 < res.P50 && res.P50 <= res.P95 && res.P95 <= res.P99 && res.P99 <= res.Max) {
				t.Errorf("percentiles out of order: p50 %v p95 %v p99 %v max %v", res.P50, res.P95, res.P99, res.Max)
			}
			if len(res.Counts) != 1 || res.Counts[0].Orders != 200 || res.Counts[0].Events != 200 {
				t.Errorf("counts: %+v", res.Counts)
			}
			if strings.Count(r.stdout, "\n") != 1 {
				t.Errorf("--json prints one line\n%s", r)
			}
			// No progress line (not a terminal): only where it wrote, when
			// the load finished and what it left pending.
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 3 || !strings.Contains(lines[0], "writing to") || !strings.Contains(lines[1], "load finished after") ||
				!strings.Contains(lines[2], "wrote 200 OrderPlaced events") {
				t.Errorf("stderr should be the three notes\n%s", r)
			}
		})
	}
}

// TestBenchMismatch makes the database lose what the bench wrote — a
// trigger deletes every outbox row as it is inserted — and expects the
// count check to catch it and the exit status to say so.
func TestBenchMismatch(t *testing.T) {
	t.Parallel()
	url := sqliteURL(t)
	if r := runCLI(t, []string{"DB_URL=" + url}, "migrate"); r.code != exitOK {
		t.Fatalf("migrate\n%s", r)
	}
	cfg := config.Default()
	u, err := config.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DB.URL = u
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Driver().DB().ExecContext(context.Background(),
		`CREATE TRIGGER lose_events AFTER INSERT ON bento_outbox BEGIN DELETE FROM bento_outbox WHERE id = NEW.id; END`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	r := runCLI(t, []string{"DB_URL=" + url}, "bench", "--orders", "20", "--workers", "2", "--json", "--migrate=false")
	if r.code != exitFail {
		t.Fatalf("want exit 1 for a mismatch\n%s", r)
	}
	res := benchJSON(t, r)
	if !res.Mismatch || res.Committed != 20 || len(res.MismatchDetail) == 0 {
		t.Fatalf("want a mismatch after 20 commits\n%s", r)
	}
	if !strings.Contains(r.stderr, "mismatch") || !strings.Contains(r.stderr, "OrderPlaced events") {
		t.Errorf("stderr should name the mismatch\n%s", r)
	}
	// And in the table.
	r = runCLI(t, []string{"DB_URL=" + url}, "bench", "--orders", "5", "--workers", "1", "--migrate=false")
	if r.code != exitFail || !strings.Contains(r.stdout, "MISMATCH") {
		t.Fatalf("want exit 1 and MISMATCH in the table\n%s", r)
	}
}

func TestCheckCounts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		c    armCount
		want int // problems
	}{
		{"consistent", armCount{Arm: "uow", Acked: 10, Orders: 10, Events: 10}, 0},
		{"ambiguous that committed", armCount{Arm: "uow", Acked: 10, Ambiguous: 2, Orders: 11, Events: 11}, 0},
		{"acknowledged order lost", armCount{Arm: "uow", Acked: 10, Orders: 9, Events: 9}, 1},
		{"order never acknowledged", armCount{Arm: "uow", Acked: 10, Ambiguous: 1, Orders: 12, Events: 12}, 1},
		{"event lost", armCount{Arm: "uow", Acked: 10, Orders: 10, Events: 9}, 1},
		{"event twice", armCount{Arm: "uow", Acked: 10, Orders: 10, Events: 11}, 1},
		{"all wrong", armCount{Arm: "uow", Acked: 10, Orders: 8, Events: 3}, 2},
	}
	for _, tc := range tests {
		if got := checkCounts(tc.c); len(got) != tc.want {
			t.Errorf("%s: want %d problems, got %q", tc.name, tc.want, got)
		}
	}
}

func TestPercentiles(t *testing.T) {
	t.Parallel()
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	l := percentiles(d)
	if l.n != 100 || l.p50 != 50*time.Millisecond || l.p95 != 95*time.Millisecond || l.p99 != 99*time.Millisecond || l.max != 100*time.Millisecond {
		t.Fatalf("%+v", l)
	}
	if l := percentiles(nil); l.n != 0 || l.max != 0 {
		t.Fatalf("%+v", l)
	}
	if l := percentiles([]time.Duration{7}); l.p50 != 7 || l.p99 != 7 {
		t.Fatalf("%+v", l)
	}
}

// TestBenchBaselineReadMix runs the three arms, interleaved, and a read
// mix, on SQLite and PostgreSQL.
func TestBenchBaselineReadMix(t *testing.T) {
	t.Parallel()
	for _, d := range []string{testdb.SQLite, testdb.Postgres, testdb.MySQL} {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			url := dialectURL(t, d)
			r := runCLI(t, []string{"DB_URL=" + url}, "bench", "--orders", "60", "--workers", "3", "--baseline", "--rounds", "3", "--json")
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			res := benchJSON(t, r)
			if res.Committed != 60 || res.Mismatch || res.EntThroughput <= 0 || res.SQLThroughput <= 0 || res.RatioEnt <= 0 || res.RatioSQL <= 0 {
				t.Fatalf("baseline result\n%s", r)
			}
			// Three arms and their warm-ups, each counted.
			if len(res.Counts) != 6 {
				t.Fatalf("want 6 counted arms, got %+v", res.Counts)
			}
			for _, c := range res.Counts {
				if c.Orders != c.Acked || c.Events != c.Acked || c.Acked == 0 {
					t.Errorf("count %+v", c)
				}
			}
			r = runCLI(t, []string{"DB_URL=" + url}, "bench", "--duration", "1s", "--workers", "2", "--read-mix", "0.5", "--json")
			if r.code != exitOK {
				t.Fatalf("want exit 0\n%s", r)
			}
			res = benchJSON(t, r)
			if res.Reads == 0 || res.ReadFailed != 0 || res.Committed == 0 || res.Mismatch || res.ReadP99 <= 0 {
				t.Fatalf("read mix result\n%s", r)
			}
		})
	}
}

// TestBenchRelay runs the relay in process publishing to a private NATS
// JetStream server (PostgreSQL: published rows are deleted, so the check
// counts them at the publisher) and with the log publisher (SQLite, rows
// kept by a retention).
func TestBenchRelay(t *testing.T) {
	t.Parallel()
	t.Run("postgres nats", func(t *testing.T) {
		t.Parallel()
		ns := testnats.Start(t)
		url := dialectURL(t, testdb.Postgres)
		r := runCLI(t, []string{"DB_URL=" + url, "OUTBOX_PUBLISHER=nats", "OUTBOX_NATS_URL=" + ns.URL()},
			"bench", "--orders", "150", "--workers", "4", "--relay", "--json")
		if r.code != exitOK {
			t.Fatalf("want exit 0\n%s", r)
		}
		res := benchJSON(t, r)
		if res.Committed != 150 || res.Published != 150 || res.Mismatch || res.PubP50 <= 0 || res.PubP99 < res.PubP50 || res.Publisher != "nats" {
			t.Fatalf("relay result\n%s", r)
		}
		if res.Counts[0].Events != 150 {
			t.Errorf("counts %+v", res.Counts)
		}
	})
	t.Run("sqlite log retention", func(t *testing.T) {
		t.Parallel()
		url := sqliteURL(t)
		r := runCLI(t, []string{"DB_URL=" + url, "OUTBOX_PUBLISHER=log", "OUTBOX_RETENTION=1h"},
			"bench", "--orders", "80", "--workers", "2", "--relay")
		if r.code != exitOK {
			t.Fatalf("want exit 0\n%s", r)
		}
		for _, w := range []string{"events published (log): 80", "database, uow: 80 orders, 80 OrderPlaced events", "check: every acknowledged"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("stdout should contain %q\n%s", w, r)
			}
		}
	})
}

func TestBenchFlagErrors(t *testing.T) {
	t.Parallel()
	url := sqliteURL(t)
	for _, args := range [][]string{
		{"--orders", "10", "--duration", "1s"},
		{"--workers", "0"},
		{"--read-mix", "1.5"},
		{"--baseline", "--relay"},
		{"--baseline", "--read-mix", "0.2"},
		{"--duration", "0s"},
		{"--duration", "0"},
		{"--duration", "ten"},
		{"--baseline=wuow"},
		{"--floor"},                      // SQLite: the floor is PostgreSQL's
		{"--floor", "--relay"},           // the floor's arm runs alone
		{"--floor", "--read-mix", "0.2"}, // writes only
	} {
		r := runCLI(t, []string{"DB_URL=" + url}, append([]string{"bench"}, args...)...)
		if r.code != exitConfig {
			t.Errorf("%v: want exit 2\n%s", args, r)
		}
		assertOneLine(t, "stderr", r.stderr)
	}
	r := runCLI(t, []string{"DB_URL=" + url, "OUTBOX_PUBLISHER=none"}, "bench", "--relay", "--orders", "1")
	if r.code != exitConfig || !strings.Contains(r.stderr, "OUTBOX_PUBLISHER") {
		t.Errorf("--relay without a publisher: want exit 2 naming OUTBOX_PUBLISHER\n%s", r)
	}
}

// TestBenchFloor: --floor runs the bare-pgx arm alone on PostgreSQL, and
// its rows are counted like Bento's: every acknowledged order is in the
// database with its event.
func TestBenchFloor(t *testing.T) {
	t.Parallel()
	url := dialectURL(t, testdb.Postgres)
	r := runCLI(t, []string{"DB_URL=" + url, "OUTBOX_PUBLISHER=none"}, "bench", "--floor", "--orders", "120", "--workers", "4", "--warmup", "8", "--json")
	if r.code != exitOK {
		t.Fatalf("want exit 0\n%s", r)
	}
	res := benchJSON(t, r)
	if !res.Floor || res.Committed != 120 || res.Failed != 0 || res.Mismatch {
		t.Fatalf("want the floor, 120 committed, 0 failed, no mismatch; got %v, %d, %d, %v\n%s", res.Floor, res.Committed, res.Failed, res.Mismatch, r)
	}
	want := []armCount{{Arm: armPgx, Acked: 120, Orders: 120, Events: 120}, {Arm: warmPrefix + armPgx, Acked: 8, Orders: 8, Events: 8}}
	if len(res.Counts) != 2 || res.Counts[0] != want[0] || res.Counts[1] != want[1] {
		t.Fatalf("counts %+v, want %+v\n%s", res.Counts, want, r)
	}
}

// TestBenchDefaultDatabase: with no DB_URL the bench writes to its own
// bento-bench.db, never to serve's bento.db, and says so on stderr with
// how many events it left pending. It changes the working directory, so
// it does not run in parallel.
func TestBenchDefaultDatabase(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	r := runCLI(t, nil, "bench", "--orders", "7", "--workers", "1", "--duration", "1") // --duration only to be refused below
	if r.code != exitConfig {
		t.Fatalf("--orders with --duration: want exit 2\n%s", r)
	}
	r = runCLI(t, nil, "bench", "--orders", "7", "--workers", "1")
	if r.code != exitOK {
		t.Fatalf("want exit 0\n%s", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "bento-bench.db")); err != nil {
		t.Fatalf("bento-bench.db should exist: %v\n%s", err, r)
	}
	if _, err := os.Stat(filepath.Join(dir, "bento.db")); err == nil {
		t.Fatalf("the bench wrote serve's bento.db\n%s", r)
	}
	for _, w := range []string{"writing to sqlite://bento-bench.db", "wrote 7 OrderPlaced events", "bento outbox stats"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr should contain %q\n%s", w, r)
		}
	}
	// DB_URL still chooses, even set to serve's default.
	r = runCLI(t, []string{"DB_URL=sqlite://bento.db"}, "bench", "--orders", "3", "--workers", "1")
	if r.code != exitOK || !strings.Contains(r.stderr, "writing to sqlite://bento.db\n") {
		t.Fatalf("DB_URL=sqlite://bento.db: want exit 0 writing there\n%s", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "bento.db")); err != nil {
		t.Fatalf("bento.db should exist when DB_URL names it: %v", err)
	}
}

// TestBenchDurationSeconds: --duration takes plain seconds, as settings do.
func TestBenchDurationSeconds(t *testing.T) {
	t.Parallel()
	url := sqliteURL(t)
	r := runCLI(t, []string{"DB_URL=" + url}, "bench", "--duration", "0.3", "--workers", "1", "--json")
	if r.code != exitOK {
		t.Fatalf("want exit 0\n%s", r)
	}
	res := benchJSON(t, r)
	if res.Committed == 0 || res.DurationS < 0.3 || res.DurationS > 5 {
		t.Fatalf("--duration 0.3: committed %d in %.3f s\n%s", res.Committed, res.DurationS, r)
	}
}

// TestBenchArmsExplained: an arm name given to --baseline is refused with
// every arm's meaning; the help lists them; the table names warm-up arms.
func TestBenchArmsExplained(t *testing.T) {
	t.Parallel()
	url := sqliteURL(t)
	r := runCLI(t, []string{"DB_URL=" + url}, "bench", "--baseline=wuow")
	if r.code != exitConfig {
		t.Fatalf("want exit 2\n%s", r)
	}
	assertOneLine(t, "stderr", r.stderr)
	for _, w := range []string{`"wuow"`, "uow = Bento", "ent = ", "sql = ", "wuow, went, wsql, wpgx = the warm-up orders", "pgx = the same rows"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr should contain %q\n%s", w, r)
		}
	}
	r = runCLI(t, nil, "bench", "--help")
	for _, a := range armNames {
		if !strings.Contains(r.stdout, a.name) || !strings.Contains(r.stdout, a.meaning) {
			t.Errorf("the help should explain %s\n%s", a.name, r)
		}
	}
	r = runCLI(t, []string{"DB_URL=" + url}, "bench", "--orders", "4", "--workers", "1", "--warmup", "2")
	if r.code != exitOK || !strings.Contains(r.stdout, "database, wuow (warm-up of uow, not measured): 2 orders") {
		t.Fatalf("the table should name the warm-up arm\n%s", r)
	}
}
