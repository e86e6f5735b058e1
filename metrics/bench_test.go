package metrics_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/resilience"
)

// BenchmarkMetricsOverhead measures what the metrics middleware costs on
// the hot path: two bento.DB on the same fresh PostgreSQL database, one
// with m.Middleware() and one without, each with Bento's own layers
// (outbox, resilience). Every iteration runs the operation once through
// each, alternating which goes first, timed apart, so drift of the machine
// hits both equally. It reports both latencies and their ratio
// (metrics/plain); the target is <= 1.02.
//
//   - insert: a single-row ent insert outside a transaction (one
//     statement: the Statement handler).
//
//   - tx_insert: the same insert in a transaction (Begin and End handlers
//     too).
//
//     go test ./metrics -run '^$' -bench MetricsOverhead -benchtime 5000x -count 3
func BenchmarkMetricsOverhead(b *testing.B) {
	cfg := testdb.Config(b, testdb.Postgres)
	plainDB, err := bento.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer plainDB.Close()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	metricsDB, err := bento.Open(cfg, bento.WithMiddleware(m.Middleware()))
	if err != nil {
		b.Fatal(err)
	}
	defer metricsDB.Close()
	ctx := context.Background()
	if err := plainDB.Migrate(ctx, migrate.Tables...); err != nil {
		b.Fatal(err)
	}
	plain := ent.NewClient(ent.Driver(plainDB.Driver()))
	withMetrics := ent.NewClient(ent.Driver(metricsDB.Driver()))

	ops := map[string]func(c *ent.Client) error{
		"insert": func(c *ent.Client) error {
			_, err := c.Order.Create().SetCustomer("bench@example.com").SetTotalCents(2500).Save(ctx)
			return err
		},
		"tx_insert": func(c *ent.Client) error {
			tx, err := c.Tx(ctx)
			if err != nil {
				return err
			}
			if _, err := tx.Order.Create().SetCustomer("tx@example.com").SetTotalCents(1).Save(ctx); err != nil {
				return errors.Join(err, tx.Rollback())
			}
			return tx.Commit()
		},
	}
	for _, name := range []string{"insert", "tx_insert"} {
		op := ops[name]
		b.Run(name, func(b *testing.B) {
			for range 50 { // warm both pools' connections
				if err := errors.Join(op(plain), op(withMetrics)); err != nil {
					b.Fatalf("warm-up: %v", err)
				}
			}
			var tPlain, tMetrics time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				first, second, t1, t2 := plain, withMetrics, &tPlain, &tMetrics
				if i%2 == 1 {
					first, second, t1, t2 = withMetrics, plain, &tMetrics, &tPlain
				}
				s := time.Now()
				if err := op(first); err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				if err := op(second); err != nil {
					b.Fatal(err)
				}
				*t1 += mid.Sub(s)
				*t2 += time.Since(mid)
			}
			b.StopTimer()
			b.ReportMetric(float64(tPlain.Nanoseconds())/float64(b.N), "plain-ns/op")
			b.ReportMetric(float64(tMetrics.Nanoseconds())/float64(b.N), "metrics-ns/op")
			b.ReportMetric(float64(tMetrics)/float64(tPlain), "ratio")
		})
	}
	// The metrics side really observed the work.
	fams, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var observed uint64
	for _, f := range fams {
		if f.GetName() == "bento_statement_duration_seconds" {
			for _, s := range f.GetMetric() {
				observed += s.GetHistogram().GetSampleCount()
			}
		}
	}
	if observed == 0 {
		b.Fatal("the metrics middleware observed no statement")
	}
}

// BenchmarkStatementHandler is the metrics Statement handler alone over a
// null driver (a next handler that returns at once): its own cost per
// statement in ns and allocations. "none" is the null handler without
// metrics, for reference.
//
//	go test ./metrics -run '^$' -bench StatementHandler -benchmem
func BenchmarkStatementHandler(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry())
	transient := &resilience.Error{Category: resilience.Transient, Code: "40001", Op: "exec", Err: errors.New("could not serialize access")}
	ok := func(context.Context, driver.Statement) error { return nil }
	failing := func(context.Context, driver.Statement) error { return transient }
	ctx := context.Background()
	insert := driver.Statement{Kind: driver.Query, Query: "INSERT INTO orders (customer) VALUES ($1) RETURNING id", Args: []any{"a@example.com"}}
	update := driver.Statement{Kind: driver.Exec, Query: "UPDATE orders SET status = $1 WHERE id = $2", Args: []any{"paid", 1}}
	cases := []struct {
		name string
		h    driver.StatementHandler
		st   driver.Statement
		want error
	}{
		{"none", ok, insert, nil},
		{"ok_query", m.Middleware().Statement(ok), insert, nil},
		{"ok_exec", m.Middleware().Statement(ok), update, nil},
		{"error_transient", m.Middleware().Statement(failing), update, transient},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.h(ctx, c.st); err != c.want {
					b.Fatal(err)
				}
			}
		})
	}
}
