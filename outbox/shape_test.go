package outbox_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/internal/testnats"
	"github.com/bento-go/bento/outbox"
)

// shape is how a backlog's events are spread over aggregates.
type shape struct {
	name string
	// aggregate returns the aggregate of the i-th event.
	aggregate func(rng *rand.Rand, i int) int
	zipf      func(rng *rand.Rand) func() uint64
}

// shapes are the backlogs users have: one event per aggregate (the best
// case), 1,000 and 20 aggregates, a single aggregate, and a Zipf (s = 1.1)
// over 10,000 aggregates (a few hot ones carry most events). Events of the
// same aggregate are interleaved at random with the others', as commits
// of many writers are.
var shapes = []shape{
	{name: "uniform", aggregate: func(_ *rand.Rand, i int) int { return i }},
	{name: "aggregates=1000", aggregate: func(rng *rand.Rand, _ int) int { return rng.IntN(1000) }},
	{name: "aggregates=20", aggregate: func(rng *rand.Rand, _ int) int { return rng.IntN(20) }},
	{name: "aggregates=1", aggregate: func(*rand.Rand, int) int { return 0 }},
	{name: "zipf=1.1", zipf: func(rng *rand.Rand) func() uint64 { return rand.NewZipf(rng, 1.1, 1, 9999).Uint64 }},
}

// preloadShape inserts n pending events spread over aggregates as s says,
// with gapless sequences per aggregate and due times in commit order,
// straight into the outbox table (multi-row inserts of 1,000). seqs holds
// each aggregate's last sequence and is kept across preloads of a
// database: an aggregate's sequence only grows, as the writer's does
// (a preload starting again at 1 would put pending events before what
// <outbox>_relayed says was published, which the writer never does).
func preloadShape(tb testing.TB, db *bento.DB, s shape, n int, seqs map[int]int64) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	next := func(i int) int { return s.aggregate(rng, i) }
	if s.zipf != nil {
		z := s.zipf(rng)
		next = func(int) int { return int(z()) }
	}
	d := db.Dialect()
	base := time.Now().Add(-time.Minute)
	cols := "(id, aggregatetype, aggregateid, " + dialects.QuoteIdent(d, "type") + ", payload, " + dialects.QuoteIdent(d, "sequence") +
		", occurred_at, status, attempts, next_attempt_at)"
	raw := db.Driver().DB()
	// Every run starts from the same table: the last run's deleted rows,
	// which PostgreSQL keeps (and their index entries) until VACUUM, would
	// otherwise make a run that follows another slower than the first,
	// and the new rows go where theirs were. What a run deletes itself
	// stays in its way, as in production.
	if d == testdb.Postgres {
		if _, err := raw.Exec("VACUUM bento_outbox"); err != nil {
			tb.Fatal(err)
		}
	}
	for first := 0; first < n; first += 1000 {
		rows := min(1000, n-first)
		var b strings.Builder
		args := make([]any, 0, rows*4)
		b.WriteString("INSERT INTO bento_outbox " + cols + " VALUES ")
		for i := range rows {
			agg := next(first + i)
			seqs[agg]++
			id, _ := uuid.NewV7()
			if i > 0 {
				b.WriteString(", ")
			}
			p := func() string { return dialects.Placeholder(d, len(args)+1) }
			b.WriteString("(" + p())
			args = append(args, id.String())
			b.WriteString(", 'Load', " + p())
			args = append(args, strconv.Itoa(agg))
			b.WriteString(", 'Loaded', '{}', " + p())
			args = append(args, seqs[agg])
			b.WriteString(", " + p())
			args = append(args, base.UTC())
			b.WriteString(", 'pending', 0, " + p() + ")")
			args = append(args, base.UnixMicro()+int64(first+i))
		}
		if _, err := raw.Exec(b.String(), args...); err != nil {
			tb.Fatalf("preloading %s: %v", s.name, err)
		}
	}
	// A checkpoint now rather than in the middle of a run: the preload's
	// dirty pages would otherwise be written out during whichever run
	// comes next.
	if d == testdb.Postgres {
		for _, q := range []string{"ANALYZE bento_outbox", "CHECKPOINT"} {
			if _, err := raw.Exec(q); err != nil {
				tb.Fatalf("%s: %v", q, err)
			}
		}
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRelayShapes measures how fast relays drain a backlog of
// pending events into a private JetStream, for each shape of backlog
// (shapes), with one relay and with three (each on its own connection;
// SQLite runs one relay per database), batches of 100. It reports
// events/s and the benchmark process's CPU per event (relays, publisher
// and NATS client; the servers' CPU is not in it). BENTO_BENCH_BACKLOG sets
// the backlog (100,000), BENTO_BENCH_RELAYS the relay counts (1,3):
//
//	go test -run '^$' -bench RelayShapes -benchtime 1x ./outbox/
//	BENTO_BENCH_BACKLOG=1000000 go test -run '^$' -bench 'RelayShapes/postgres/uniform/relays=1' -benchtime 1x -timeout 30m ./outbox/
//
// Invariant checked on every run: the stream holds exactly the backlog
// (each event once, read back), each aggregate's events in sequence
// order, and the outbox is empty.
func BenchmarkRelayShapes(b *testing.B) {
	backlog := 100_000
	if v := os.Getenv("BENTO_BENCH_BACKLOG"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("BENTO_BENCH_BACKLOG=%q: accepted: a positive integer", v)
		}
		backlog = n
	}
	relayCounts := []int{1, 3}
	if v := os.Getenv("BENTO_BENCH_RELAYS"); v != "" {
		relayCounts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("BENTO_BENCH_RELAYS=%q: accepted: relay counts separated by commas, such as 1,2,4", v)
			}
			relayCounts = append(relayCounts, n)
		}
	}
	for _, d := range testdb.Dialects() {
		b.Run(d, func(b *testing.B) {
			db := openDB(b, testdb.Config(b, d))
			ctx := context.Background()
			if err := db.Migrate(ctx); err != nil {
				b.Fatal(err)
			}
			pub := connectJS(b, testnats.Start(b).URL())
			seqs := map[int]int64{}
			for _, s := range shapes {
				for _, relays := range relayCounts {
					if relays > 1 && d == testdb.SQLite {
						continue
					}
					b.Run(fmt.Sprintf("%s/relays=%d", s.name, relays), func(b *testing.B) {
						counter := &publishedCounter{}
						rs := make([]*outbox.Relay, relays)
						for i := range rs {
							rs[i] = newRelay(b, db, pub, func(c *outbox.RelayConfig) { c.BatchSize, c.Observer = 100, counter })
						}
						var took, cpu time.Duration
						published := 0
						for b.Loop() {
							b.StopTimer()
							resetStream(b, pub.JetStream(), testStream)
							preloadShape(b, db, s, backlog, seqs)
							b.StartTimer()
							start, cpu0 := time.Now(), cpuTime(b)
							drain(b, rs, counter, backlog)
							took += time.Since(start)
							cpu += cpuTime(b) - cpu0
							published += backlog
							b.StopTimer()
							got := readStream(b, pub.JetStream(), testStream)
							ids := make(map[uuid.UUID]bool, len(got))
							for _, m := range got {
								ids[m.ID] = true
							}
							if len(got) != backlog || len(ids) != backlog {
								b.Fatalf("the stream got %d messages (%d distinct) for a backlog of %d", len(got), len(ids), backlog)
							}
							inOrder(b, got)
							b.StartTimer()
							var left int
							if err := db.Driver().DB().QueryRow("SELECT COUNT(*) FROM bento_outbox").Scan(&left); err != nil || left != 0 {
								b.Fatalf("%d rows left in the outbox (%v)", left, err)
							}
						}
						b.ReportMetric(float64(published)/took.Seconds(), "events/s")
						b.ReportMetric(float64(cpu.Microseconds())/float64(published), "cpu-µs/event")
					})
				}
			}
		})
	}
}

// resetStream empties the stream, so that a run reads back only its own
// messages, and forgets the message ids it deduplicates against: it is
// deleted and created again with the same configuration. A purge keeps
// the ids of the duplicate window, so each run would store against the
// ids of every run of the last two minutes, a later run against more.
func resetStream(tb testing.TB, js jetstream.JetStream, stream string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err == nil {
		cfg := st.CachedInfo().Config
		if err = js.DeleteStream(ctx, stream); err == nil {
			_, err = js.CreateStream(ctx, cfg)
		}
	}
	if err != nil {
		tb.Fatalf("emptying stream %s: %v", stream, err)
	}
}

// drain runs the relays side by side, as bento relay does (Run, woken by
// its poll only: nothing commits during a burn-down), until they have
// published n events between them.
func drain(b *testing.B, rs []*outbox.Relay, counter *publishedCounter, n int) {
	b.Helper()
	goal := counter.n.Load() + int64(n)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Run(ctx); err != nil {
				b.Error(err)
			}
		}()
	}
	deadline := time.Now().Add(10 * time.Minute)
	for counter.n.Load() < goal && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	wg.Wait()
	if got := counter.n.Load() - (goal - int64(n)); got < int64(n) {
		b.Fatalf("%d of %d published in 10 minutes", got, n)
	}
}
