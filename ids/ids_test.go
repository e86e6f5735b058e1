package ids_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/resilience"
)

// TestBlocks: ids taken from blocks never collide, with each other or with
// ids the database assigns at the same time. Invariant, counted in the
// table: every insert succeeds, and the table holds one row per insert.
// Only PostgreSQL hands out ids; elsewhere the database assigns them.
func TestBlocks(t *testing.T) {
	ctx := context.Background()
	for _, d := range testdb.Dialects() {
		t.Run(d, func(t *testing.T) {
			db, err := bento.Open(testdb.Config(t, d))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			if err := db.Migrate(ctx, migrate.Tables...); err != nil {
				t.Fatal(err)
			}
			blocks := ids.New(db.Driver(), db.Dialect(), 7) // small blocks: many refills
			if d != testdb.Postgres {
				if blocks != nil {
					t.Fatalf("New on %s returned a Blocks, want nil", d)
				}
				if got, err := blocks.Take(ctx, order.Table, 2); got != nil || err != nil {
					t.Fatalf("Take on a nil Blocks = %v, %v; want nil, nil", got, err)
				}
				return
			}
			client := ent.NewClient(ent.Driver(db.Driver()))
			const workers, each = 4, 40
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					for i := range each {
						create := client.Order.Create().SetCustomer("ids@example.com").SetTotalCents(1)
						if (w+i)%3 != 0 { // every third by the database
							got, err := blocks.Take(ctx, order.Table, 1)
							if err != nil || len(got) != 1 {
								errs <- err
								return
							}
							create.SetID(got[0])
						}
						if _, err := create.Save(ctx); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("an insert failed: %v", err)
			}
			if n := client.Order.Query().CountX(ctx); n != workers*each {
				t.Fatalf("%d orders, want %d", n, workers*each)
			}
			several, err := blocks.Take(ctx, order.Table, 20) // more than a block
			if err != nil || len(several) != 20 {
				t.Fatalf("Take of 20 with blocks of 7 = %d ids, %v", len(several), err)
			}
			seen := map[int]bool{}
			for _, id := range several {
				if seen[id] || client.Order.Query().Where(order.ID(id)).ExistX(ctx) {
					t.Fatalf("id %d handed out twice", id)
				}
				seen[id] = true
			}

			for _, c := range []struct{ table, want string }{
				{"no_such_table", `"no_such_table"`},
				{db.Names().Outbox, "has no sequence behind its id column"}, // its id is a UUID
			} {
				if _, err := blocks.Take(ctx, c.table, 1); err == nil || !strings.Contains(err.Error(), c.want) {
					t.Errorf("Take(%q) returned %v, want an error with %s", c.table, err, c.want)
				}
			}
		})
	}
}

// TestBlocksWaitOneRead: while the table's block is being read, other
// callers wait for that read, not for reads of their own one after
// another. The pool's two connections are held, so every read times out
// after DB_POOL_TIMEOUT; eight concurrent Takes must all fail within
// about one timeout, where reads queued behind one another would take
// eight. Invariant: every Take fails with the pool timeout, and none
// waits twice the timeout.
func TestBlocksWaitOneRead(t *testing.T) {
	ctx := context.Background()
	cfg := testdb.Config(t, testdb.Postgres)
	cfg.DB.PoolSize, cfg.DB.MaxOverflow, cfg.DB.PoolTimeout = 2, 0, 200*time.Millisecond
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatal(err)
	}
	blocks := ids.New(db.Driver(), db.Dialect(), 10).Retry(resilience.Policy{MaxAttempts: 1})
	var releases []func()
	for range 2 { // every slot
		release, err := db.Pool().Acquire(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, release)
	}
	const takers = 8
	var wg sync.WaitGroup
	errs := make([]error, takers)
	took := make([]time.Duration, takers)
	for i := range takers {
		wg.Go(func() {
			start := time.Now()
			_, errs[i] = blocks.Take(ctx, order.Table, 1)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for _, release := range releases {
		release()
	}
	for i := range takers {
		if !errors.Is(errs[i], driver.ErrPoolTimeout) {
			t.Errorf("taker %d: %v, want the pool timeout", i, errs[i])
		}
		if took[i] >= 2*cfg.DB.PoolTimeout {
			t.Errorf("taker %d waited %s for its error; the pool timeout is %s: it waited for more than one read", i, took[i], cfg.DB.PoolTimeout)
		}
	}
	// The pool is free again: ids come.
	if got, err := blocks.Take(ctx, order.Table, 3); err != nil || len(got) != 3 {
		t.Fatalf("Take after the pool was freed = %v, %v", got, err)
	}
}
