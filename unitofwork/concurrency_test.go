package unitofwork_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// bumped is the event of one committed increment.
type bumped struct {
	OrderID int `json:"order_id"`
	Unit    int `json:"unit"`
}

func (bumped) EventType() string { return "OrderBumped" }

// observer counts how units of work ended.
type observer struct {
	retried, failed atomic.Int64
	mu              sync.Mutex
	byCategory      map[string]int
	firstErr        map[string]error
}

func (o *observer) UnitDone(outcome string, attempts int, _ time.Duration, err error) {
	if attempts > 1 {
		o.retried.Add(1)
	}
	if err == nil {
		return
	}
	o.failed.Add(1)
	c := resilience.Classify(err).String()
	o.mu.Lock()
	o.byCategory[c]++
	if o.firstErr[c] == nil {
		o.firstErr[c] = err
	}
	o.mu.Unlock()
}

// TestConcurrentUnits: 32 goroutines × 200 units of work, each reading one
// of 8 orders, incrementing its total through a version-checked
// UpdateOne and raising an event — SERIALIZABLE on PostgreSQL, the
// default isolation elsewhere. Every unit either commits (Do returns nil)
// or returns its error. Invariants, checked by counting:
//
//   - the sum of the totals grew by the number of units that returned nil;
//   - the outbox holds exactly that many rows;
//   - each order's outbox sequences are exactly 1..n, n its committed units,
//     with no gap and no duplicate, and its sequence row says n;
//   - each order's version is 1 + n.
//
// -short runs 32 × 25 units.
func TestConcurrentUnits(t *testing.T) {
	const workers, orders = 32, 8
	units := 200
	if testing.Short() {
		units = 25
	}
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openEnv(t, cfg)
		ctx := context.Background()
		ids := make([]int, orders)
		for i := range ids {
			o, err := e.client.Order.Create().SetCustomer(fmt.Sprintf("hot-%d@example.com", i)).SetTotalCents(0).Save(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ids[i] = o.ID
		}
		obs := &observer{byCategory: map[string]int{}, firstErr: map[string]error{}}
		opts := []unitofwork.Option{unitofwork.WithObserver(obs)}
		if e.dialect == testdb.Postgres {
			opts = append(opts, unitofwork.Isolation(sql.LevelSerializable))
		}

		committed := make([]atomic.Int64, orders)
		var attempts atomic.Int64
		start := time.Now()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range units {
					unit := w*units + i
					k := unit % orders
					err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
						attempts.Add(1)
						o, err := tx.Order.Get(ctx, ids[k])
						if err != nil {
							return err
						}
						o, err = tx.Order.UpdateOne(o).AddTotalCents(1).Save(ctx)
						if err != nil {
							return err
						}
						return outbox.Raise(ctx, o, bumped{OrderID: o.ID, Unit: unit})
					}, opts...)
					if err == nil {
						committed[k].Add(1)
					}
				}
			}()
		}
		wg.Wait()
		took := time.Since(start)

		var total int64
		for k := range committed {
			total += committed[k].Load()
		}
		t.Logf("%s: %d units by %d workers in %s (%.0f units/s): %d committed, %d retried, %d failed %v; %d closure runs",
			testdb.Name(e.dialect), workers*units, workers, took.Round(time.Millisecond), float64(workers*units)/took.Seconds(),
			total, obs.retried.Load(), obs.failed.Load(), obs.byCategory, attempts.Load())
		for c, err := range obs.firstErr {
			t.Logf("first %s failure: %v", c, err)
		}
		if int64(workers*units) != total+obs.failed.Load() {
			t.Fatalf("%d units, but %d committed and %d failed", workers*units, total, obs.failed.Load())
		}

		if sum := e.count("SELECT COALESCE(SUM(total_cents), 0) FROM orders"); int64(sum) != total {
			t.Errorf("sum(total_cents) = %d, but %d units returned nil", sum, total)
		}
		if n := e.count("SELECT COUNT(*) FROM bento_outbox"); int64(n) != total {
			t.Errorf("%d outbox rows, but %d units returned nil", n, total)
		}
		for k, id := range ids {
			n := committed[k].Load()
			seqs := e.sequences(strconv.Itoa(id))
			want := make([]int64, n)
			for i := range want {
				want[i] = int64(i + 1)
			}
			if !slices.Equal(seqs, want) {
				t.Errorf("order %d: %d committed units but outbox sequences %v (want 1..%d, no gaps or duplicates)", id, n, compact(seqs), n)
			}
			if last := e.count("SELECT last_sequence FROM bento_outbox_sequences WHERE aggregatetype = 'Order' AND aggregateid = ?", strconv.Itoa(id)); int64(last) != n {
				t.Errorf("order %d: last_sequence = %d, want %d", id, last, n)
			}
			if v := e.count("SELECT version FROM orders WHERE id = ?", id); int64(v) != 1+n {
				t.Errorf("order %d: version %d, want 1 + %d committed updates", id, v, n)
			}
		}
	})
}

// sequences returns an Order aggregate's outbox sequences in order.
func (e *env) sequences(aggregateID string) []int64 {
	e.t.Helper()
	rows, err := e.raw.Query(e.sql("SELECT `sequence` FROM bento_outbox WHERE aggregatetype = 'Order' AND aggregateid = ? ORDER BY `sequence`"), aggregateID)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := []int64{}
	for rows.Next() {
		var s int64
		if err := rows.Scan(&s); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// compact shortens a long sequence list for a message.
func compact(s []int64) string {
	if len(s) <= 20 {
		return fmt.Sprint(s)
	}
	return fmt.Sprintf("%v … %v (%d values)", s[:10], s[len(s)-10:], len(s))
}
