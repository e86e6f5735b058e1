package driver_test

import (
	"context"
	"testing"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
)

// BenchmarkWrapperOverhead measures ent create and read through Bento's
// driver against plain entsql.OpenDB over the same *sql.DB, interleaved in
// every iteration (one operation through each, timed apart), so drift of
// the machine hits both equally. It reports both latencies and their ratio
// (bento/plain); the target is <= 1.03 on PostgreSQL. On PostgreSQL,
// tx-pipelined is the transaction with PoolConfig.PipelineBegin, as
// bento.Open runs it: one round trip fewer.
//
//	go test ./driver -run '^$' -bench WrapperOverhead -benchtime 5000x
func BenchmarkWrapperOverhead(b *testing.B) {
	for _, d := range testdb.Dialects() {
		b.Run(d, func(b *testing.B) {
			cfg := testdb.Config(b, d)
			db, err := dialects.Open(cfg.DB, dialects.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.DB.Close()
			plain := ent.NewClient(ent.Driver(entsql.OpenDB(db.Dialect, db.DB)))
			pool := driver.NewPool(driver.PoolConfig{Dialect: db.Dialect, DB: db.DB, MaxOpen: db.MaxOpen,
				Timeout: cfg.DB.PoolTimeout, SerializeWrites: db.Capabilities.SingleWriter})
			wrapped := ent.NewClient(ent.Driver(driver.New(driver.Config{Dialect: db.Dialect, Primary: pool})))
			ctx := context.Background()
			if err := plain.Schema.Create(ctx, migrate.WithForeignKeys(true)); err != nil {
				b.Fatal(err)
			}
			seed := plain.Order.Create().SetCustomer("seed@example.com").SetTotalCents(1).SaveX(ctx)
			ops := map[string]func(c *ent.Client) error{
				"create": func(c *ent.Client) error {
					_, err := c.Order.Create().SetCustomer("bench@example.com").SetTotalCents(2500).Save(ctx)
					return err
				},
				"read": func(c *ent.Client) error {
					_, err := c.Order.Get(ctx, seed.ID)
					return err
				},
				"tx": func(c *ent.Client) error {
					tx, err := c.Tx(ctx)
					if err != nil {
						return err
					}
					if _, err := tx.Order.Create().SetCustomer("tx@example.com").SetTotalCents(1).Save(ctx); err != nil {
						tx.Rollback()
						return err
					}
					return tx.Commit()
				},
			}
			names := []string{"create", "read", "tx"}
			clients := map[string]*ent.Client{"create": wrapped, "read": wrapped, "tx": wrapped}
			if db.Dialect == dialect.Postgres {
				// The same transaction with BEGIN pipelined with the
				// INSERT (PoolConfig.PipelineBegin, as bento.Open sets it).
				pp := driver.NewPool(driver.PoolConfig{Dialect: db.Dialect, DB: db.DB, MaxOpen: db.MaxOpen,
					Timeout: cfg.DB.PoolTimeout, PipelineBegin: true})
				ops["tx-pipelined"] = ops["tx"]
				clients["tx-pipelined"] = ent.NewClient(ent.Driver(driver.New(driver.Config{Dialect: db.Dialect, Primary: pp})))
				names = append(names, "tx-pipelined")
			}
			for _, name := range names {
				op, wrapped := ops[name], clients[name]
				b.Run(name, func(b *testing.B) {
					// Warm both paths' connections.
					for i := 0; i < 20; i++ {
						if op(plain) != nil || op(wrapped) != nil {
							b.Fatal("warm-up failed")
						}
					}
					var tPlain, tBento time.Duration
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						first, second, t1, t2 := plain, wrapped, &tPlain, &tBento
						if i%2 == 1 { // alternate which goes first
							first, second, t1, t2 = wrapped, plain, &tBento, &tPlain
						}
						s := time.Now()
						if err := op(first); err != nil {
							b.Fatal(err)
						}
						m := time.Now()
						if err := op(second); err != nil {
							b.Fatal(err)
						}
						*t1 += m.Sub(s)
						*t2 += time.Since(m)
					}
					b.StopTimer()
					b.ReportMetric(float64(tPlain.Nanoseconds())/float64(b.N), "plain-ns/op")
					b.ReportMetric(float64(tBento.Nanoseconds())/float64(b.N), "bento-ns/op")
					b.ReportMetric(float64(tBento)/float64(tPlain), "ratio")
				})
			}
		})
	}
}
