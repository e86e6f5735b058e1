package dialects_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
)

// BenchmarkSQLiteWriters measures write throughput of 16 concurrent
// writers, each committing a transaction that inserts an order and its
// line, alone or while 4 readers read an order by id in a loop, for several
// connection limits, with writers queued in Go (serialize=true) or left to
// SQLite's busy handler. It reports transactions and reads per second and
// how many SQLITE_BUSY errors reached the callers; the chosen
// SQLiteMaxOpen is recorded in docs/benchmarks/history.md.
//
//	go test ./dialects -run '^$' -bench SQLiteWriters -benchtime 3000x
func BenchmarkSQLiteWriters(b *testing.B) {
	for _, nreaders := range []int{0, 4} {
		for _, serialize := range []bool{true, false} {
			for _, maxOpen := range []int{1, 2, 4, 8, 16} {
				b.Run(fmt.Sprintf("readers=%d/serialize=%t/maxopen=%d", nreaders, serialize, maxOpen), func(b *testing.B) {
					cfg := testdb.Config(b, testdb.SQLite)
					d, err := dialects.Open(cfg.DB, dialects.Options{})
					if err != nil {
						b.Fatal(err)
					}
					defer d.DB.Close()
					d.DB.SetMaxOpenConns(maxOpen)
					d.DB.SetMaxIdleConns(maxOpen)
					pool := driver.NewPool(driver.PoolConfig{Dialect: d.Dialect, DB: d.DB, MaxOpen: maxOpen,
						Timeout: cfg.DB.PoolTimeout, SerializeWrites: serialize})
					client := ent.NewClient(ent.Driver(driver.New(driver.Config{Dialect: d.Dialect, Primary: pool})))
					ctx := context.Background()
					if err := client.Schema.Create(ctx, migrate.WithForeignKeys(true)); err != nil {
						b.Fatal(err)
					}
					const writers = 16
					var busy, failed, reads atomic.Int64
					var next atomic.Int64
					seed, err := client.Order.Create().SetCustomer("seed@example.com").SetTotalCents(1).Save(ctx)
					if err != nil {
						b.Fatal(err)
					}
					stop := make(chan struct{})
					var readers sync.WaitGroup
					for r := 0; r < nreaders; r++ {
						readers.Add(1)
						go func() {
							defer readers.Done()
							for {
								select {
								case <-stop:
									return
								default:
								}
								if _, err := client.Order.Get(ctx, seed.ID); err != nil {
									failed.Add(1)
								}
								reads.Add(1)
							}
						}()
					}
					b.ResetTimer()
					var wg sync.WaitGroup
					for w := 0; w < writers; w++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for next.Add(1) <= int64(b.N) {
								if err := placeTx(ctx, client); err != nil {
									if errors.Is(err, sqlite3.BUSY) {
										busy.Add(1)
									} else {
										failed.Add(1)
									}
								}
							}
						}()
					}
					wg.Wait()
					b.StopTimer()
					close(stop)
					readers.Wait()
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
					b.ReportMetric(float64(reads.Load())/b.Elapsed().Seconds(), "reads/s")
					b.ReportMetric(float64(busy.Load()), "busy")
					if failed.Load() > 0 {
						b.Fatalf("%d transactions failed with errors other than BUSY", failed.Load())
					}
				})
			}
		}
	}
}

func placeTx(ctx context.Context, client *ent.Client) error {
	tx, err := client.Tx(ctx)
	if err != nil {
		return err
	}
	o, err := tx.Order.Create().SetCustomer("bench@example.com").SetTotalCents(2500).Save(ctx)
	if err == nil {
		_, err = tx.OrderLine.Create().SetOrder(o).SetSku("SKU-1").SetQuantity(2).SetUnitPriceCents(1250).Save(ctx)
	}
	if err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}
