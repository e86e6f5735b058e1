package unitofwork_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	entsql "entgo.io/ent/dialect/sql"
	"github.com/google/uuid"

	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/shop"
)

// baseline places an order the way a team would write it by hand with
// ent and no framework: a plain ent client over entsql.OpenDB on the same
// *sql.DB, client.Tx, the order, its line, and the outbox row with its
// per-aggregate sequence, written with the statements outbox/write.go
// sends (outbox.WriteStatements: on PostgreSQL the upsert and the insert
// in one statement, as there).
type baseline struct {
	dialect string
	client  *ent.Client
	sql     outbox.Statements
}

func newBaseline(e *env) *baseline {
	return &baseline{dialect: e.dialect, client: ent.NewClient(ent.Driver(entsql.OpenDB(e.dialect, e.raw))),
		sql: outbox.WriteStatements(e.dialect, outbox.NamesFor(""))}
}

// place writes the same rows as the unit of work's place.
func (b *baseline) place(ctx context.Context, customer string) (err error) {
	tx, err := b.client.Tx(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	o, err := tx.Order.Create().SetCustomer(customer).SetTotalCents(2500).Save(ctx)
	if err != nil {
		return err
	}
	if _, err := tx.OrderLine.Create().SetOrder(o).SetSku("SKU-1").SetQuantity(2).SetUnitPriceCents(1250).Save(ctx); err != nil {
		return err
	}
	ev := shop.OrderPlaced{OrderID: o.ID, Customer: customer, TotalCents: 2500,
		Lines: []shop.Line{{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}}}
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	aggID, now := o.AggregateID(), time.Now().UTC()
	switch b.dialect {
	case testdb.Postgres:
		if _, err := tx.ExecContext(ctx, b.sql.Insert, "Order", aggID, id.String(), ev.EventType(), string(payload), nil, now, now.UnixMicro()); err != nil {
			return err
		}
	case testdb.MySQL:
		res, err := tx.ExecContext(ctx, b.sql.Sequence, "Order", aggID, 1)
		if err != nil {
			return err
		}
		seq, err := res.LastInsertId()
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, b.sql.Insert, id.String(), "Order", aggID, ev.EventType(), string(payload), seq, nil, now, now.UnixMicro()); err != nil {
			return err
		}
	default:
		rows, err := tx.QueryContext(ctx, b.sql.Sequence, "Order", aggID, 1)
		if err != nil {
			return err
		}
		var seq int64
		if rows.Next() {
			err = rows.Scan(&seq)
		}
		if cerr := rows.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, b.sql.Insert, id.String(), "Order", aggID, ev.EventType(), string(payload), seq, nil, now, now.UnixMicro()); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// batch runs n operations on workers goroutines and returns how long
// they took.
func batch(workers, n int, op func() error) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := op(); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), first
}

// BenchmarkUoWPlaceOrder compares placing an order with one event through
// the unit of work (Bento's driver, outbox write path, resilience layer)
// against the hand-written ent transaction that inserts the same rows
// (order, line, outbox row, sequence upsert) on a plain ent client over
// the same *sql.DB, at the same (default) isolation. The arms run
// interleaved in batches of 200 operations, alternating which goes first,
// so machine drift hits both; b.N is the operations per arm. It reports
// each arm's throughput and ratio = uow-ops/s ÷ base-ops/s (target ≥ 0.95
// on PostgreSQL).
//
//	go test ./unitofwork -run '^$' -bench UoW -benchtime 4000x
func BenchmarkUoWPlaceOrder(b *testing.B) {
	const per = 200
	for _, d := range testdb.Dialects() {
		b.Run(d, func(b *testing.B) {
			e := openEnv(b, testdb.Config(b, d))
			base := newBaseline(e)
			ctx := context.Background()
			uowOp := func() error {
				return e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
					_, err := place(ctx, tx, "bench@example.com")
					return err
				})
			}
			baseOp := func() error { return base.place(ctx, "bench@example.com") }
			for _, workers := range []int{1, 16} {
				b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
					for _, op := range []func() error{uowOp, baseOp} { // warm both pools' paths
						if _, err := batch(workers, 2*workers, op); err != nil {
							b.Fatal(err)
						}
					}
					var tUoW, tBase time.Duration
					done := 0
					b.ResetTimer()
					for round := 0; done < b.N; round++ {
						n := min(per, b.N-done)
						arms := []struct {
							op func() error
							t  *time.Duration
						}{{uowOp, &tUoW}, {baseOp, &tBase}}
						if round%2 == 1 {
							arms[0], arms[1] = arms[1], arms[0]
						}
						for _, a := range arms {
							took, err := batch(workers, n, a.op)
							if err != nil {
								b.Fatal(err)
							}
							*a.t += took
						}
						done += n
					}
					b.StopTimer()
					uowRate := float64(b.N) / tUoW.Seconds()
					baseRate := float64(b.N) / tBase.Seconds()
					b.ReportMetric(uowRate, "uow-ops/s")
					b.ReportMetric(baseRate, "base-ops/s")
					b.ReportMetric(uowRate/baseRate, "ratio")
				})
			}
			// Both arms wrote an event per operation.
			if o, ev := e.totals(); o != ev {
				b.Fatalf("%d orders but %d outbox rows", o, ev)
			}
		})
	}
}
