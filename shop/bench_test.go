package shop_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/internal/pgxfloor"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/metrics"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
	"github.com/bento-go/bento/unitofwork"
)

// BenchmarkPlaceOrder places one-line orders with shop.Service.Place on a
// fresh PostgreSQL database, through the stack bento serve and bento bench
// build (drain and metrics middleware, the outbox writer, resilience, the
// unit of work with its metrics observer, ids taken beforehand so that an
// order is one round trip), from 1 and 16 goroutines. Next
// to the time per order it reports the client's CPU per order
// (cpu-µs/order: the process's user and system CPU from getrusage,
// divided by the orders; sys-µs/order is the system part; the server's CPU
// is not in it) and, with -benchmem, the allocations per order. At the
// end it checks that every order has its OrderPlaced outbox row.
//
//	go test ./shop -run '^$' -bench PlaceOrder -benchmem -benchtime 3000x
//	go test ./shop -run '^$' -bench 'PlaceOrder/workers=16' -benchtime 5000x -cpuprofile cpu.out -memprofile mem.out
func BenchmarkPlaceOrder(b *testing.B) {
	svc, _, count := benchStack(b, testdb.Config(b, testdb.Postgres))
	ctx := context.Background()
	var run atomic.Int64
	for _, workers := range []int{1, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			prefix := "bench-" + strconv.FormatInt(run.Add(1), 10) + "-"
			measureOrders(b, workers, func(n int64) error {
				cmd := shop.PlaceOrder{Customer: prefix + strconv.FormatInt(n, 10) + "@example.com",
					Lines: []shop.Line{{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}}}
				_, err := svc.Place(ctx, cmd, "")
				return err
			})
		})
	}
	if orders, events := count(); orders != events {
		b.Fatalf("%d orders but %d OrderPlaced outbox rows", orders, events)
	}
}

// BenchmarkPlaceOrderPgx is the floor under BenchmarkPlaceOrder
// (internal/pgxfloor, which bento bench --floor runs too): the same rows
// in the same round trip (the order, its line and the outbox statement
// in one pipeline, an implicit transaction), with ids from the same
// ids.Blocks, written directly on a pgx pool of the same size, without
// ent, database/sql or Bento. The difference in
// cpu-µs/order is what the layers above pgx cost.
//
//	go test ./shop -run '^$' -bench 'PlaceOrder(Pgx)?/workers=16' -benchmem -benchtime 3000x
func BenchmarkPlaceOrderPgx(b *testing.B) {
	cfg := testdb.Config(b, testdb.Postgres)
	_, blocks, count := benchStack(b, cfg) // migrates
	ctx := context.Background()
	pool, err := pgxfloor.NewPool(ctx, cfg.DB)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	floor, err := pgxfloor.New(pool, blocks, outbox.NamesFor(""))
	if err != nil {
		b.Fatal(err)
	}
	line := shop.Line{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}
	place := func(n int64) error {
		_, err := floor.Place(ctx, "pgx-"+strconv.FormatInt(n, 10)+"@example.com", line)
		return err
	}
	b.Run("workers=16", func(b *testing.B) { measureOrders(b, 16, place) })
	if orders, events := count(); orders != events {
		b.Fatalf("%d orders but %d outbox rows", orders, events)
	}
}

// measureOrders warms up, then runs place b.N times on workers goroutines
// and reports the client's CPU per order.
func measureOrders(b *testing.B, workers int, place func(n int64) error) {
	// Warm the pool's connections and their statement caches.
	if err := parallel(workers, int64(2*workers), func(n int64) error { return place(-n) }); err != nil {
		b.Fatal(err)
	}
	user0, sys0 := cpuTime()
	b.ResetTimer()
	err := parallel(workers, int64(b.N), place)
	b.StopTimer()
	user1, sys1 := cpuTime()
	if err != nil {
		b.Fatal(err)
	}
	perOrder := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(b.N) }
	b.ReportMetric(perOrder(user1-user0+sys1-sys0), "cpu-µs/order")
	b.ReportMetric(perOrder(sys1-sys0), "sys-µs/order")
}

// benchStack opens the migrated database of cfg with the layers
// bento serve uses and returns the shop service over it (with its ids
// taken from blocks, as bento serve sets it up), the blocks, and a
// function that counts the orders and the outbox rows.
func benchStack(b *testing.B, cfg config.Config) (*shop.Service, *ids.Blocks, func() (orders, events int)) {
	b.Helper()
	m := metrics.New(prometheus.NewRegistry())
	d := drain.New(drain.Config{Observer: m})
	policy := bento.RetryPolicy(cfg.Retry)
	db, err := bento.Open(cfg, bento.WithMiddleware(d.Middleware(), m.Middleware()), bento.WithReplicaObserver(m),
		bento.WithResilience(resilience.Options{Policy: policy, OnRetry: m.Retry, OnAmbiguous: m.Ambiguous}))
	if err != nil {
		b.Fatalf("bento.Open: %v", err)
	}
	b.Cleanup(func() { db.Close() })
	d.SetPool(db.Pool(), db.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		b.Fatalf("Migrate: %v", err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	unitPolicy := policy
	unitPolicy.OnRetry = m.UnitRetry
	uow := ent.NewUnitOfWork(client, unitofwork.Retry(unitPolicy), unitofwork.WithObserver(m), unitofwork.Tables(db.Names()))
	raw := db.Driver().DB()
	count := func() (orders, events int) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := raw.QueryRowContext(ctx, "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM "+db.Names().Outbox+")").Scan(&orders, &events); err != nil {
			b.Fatalf("counting orders and events: %v", err)
		}
		return orders, events
	}
	blocks := ids.New(db.Driver(), db.Dialect(), ids.DefaultBlock)
	return shop.NewService(uow, client, shop.WithIDs(blocks)), blocks, count
}

// parallel runs op(1) … op(n) on workers goroutines and returns the first
// error.
func parallel(workers int, n int64, op func(int64) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= n; i = next.Add(1) {
				if err := op(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// cpuTime is the CPU time the process used so far, in user space and in
// the kernel.
func cpuTime() (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
