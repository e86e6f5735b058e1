package driver_test

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/internal/testdb"
)

// overflowPool opens a pool of 2 kept + 4 overflow connections on a fresh
// database of the dialect, counting the connections it dials.
func overflowPool(t *testing.T, dialect string, linger time.Duration) (*driver.Driver, *atomic.Int64, string) {
	t.Helper()
	cfg := testdb.Config(t, dialect)
	cfg.DB.PoolSize, cfg.DB.MaxOverflow = 2, 4
	dials := &atomic.Int64{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	d, err := dialects.Open(cfg.DB, dialects.Options{DialContext: dial})
	if err != nil {
		t.Fatal(err)
	}
	if d.MaxOpen != 6 || d.KeepIdle != 2 {
		t.Fatalf("dialects.Open: MaxOpen %d, KeepIdle %d; want 6 and 2 from DB_POOL_SIZE=2, DB_MAX_OVERFLOW=4", d.MaxOpen, d.KeepIdle)
	}
	pool := driver.NewPool(driver.PoolConfig{Dialect: d.Dialect, DB: d.DB, MaxOpen: d.MaxOpen, KeepIdle: d.KeepIdle, OverflowIdle: linger})
	drv := driver.New(driver.Config{Dialect: d.Dialect, Primary: pool})
	t.Cleanup(func() { drv.Close() })
	return drv, dials, strings.TrimPrefix(cfg.DB.URL.Server().Path, "/")
}

// burst runs 6 transactions that each hold a connection until all 6 hold
// one, so the pool has 6 connections in use at once.
func burst(t *testing.T, drv *driver.Driver) {
	t.Helper()
	var started, done sync.WaitGroup
	started.Add(6)
	errs := make(chan error, 6)
	for range 6 {
		done.Add(1)
		go func() {
			defer done.Done()
			ctx := context.Background()
			tx, err := drv.Tx(ctx)
			if err != nil {
				started.Done()
				errs <- err
				return
			}
			var res sql.Result
			err = tx.Exec(ctx, "SELECT 1", []any{}, &res)
			started.Done()
			started.Wait()
			if err == nil {
				err = tx.Commit()
			} else {
				tx.Rollback()
			}
			errs <- err
		}()
	}
	done.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// serverConns counts the server's connections to the database.
func serverConns(t *testing.T, dialect, database string) int {
	t.Helper()
	admin := testdb.Admin(t, dialect)
	q := "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1"
	if dialect == testdb.MySQL {
		q = "SELECT COUNT(*) FROM information_schema.processlist WHERE db = ?"
	}
	var n int
	if err := admin.QueryRow(q, database).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOverflowConnectionsKept: a load that keeps swinging above the pool
// size reuses the overflow connections instead of opening new ones
// (database/sql alone closes each as it is returned); once the load has
// stayed at or under the pool size for OverflowIdle they are closed, on
// the server too, and the kept ones stay. Counted by the connections dialed
// and the server's own count of sessions.
func TestOverflowConnectionsKept(t *testing.T) {
	for _, dialect := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(dialect, func(t *testing.T) {
			const rounds = 5
			var unkept int64
			t.Run("OverflowIdle=0", func(t *testing.T) {
				// The baseline: without a linger, every burst opens the
				// overflow connections again.
				drv, dials, _ := overflowPool(t, dialect, 0)
				burst(t, drv)
				dials.Store(0)
				for range rounds {
					burst(t, drv)
				}
				unkept = dials.Load()
				if unkept < 4*rounds {
					t.Fatalf("without OverflowIdle, %d bursts of 6 over a pool of 2 dialed %d connections; want at least %d (the overflow reopened each burst)", rounds, unkept, 4*rounds)
				}
				if got := drv.Primary().Stats().ClosedIdle; got < 4*(rounds+1) {
					t.Fatalf("PoolStats.ClosedIdle = %d after %d bursts that each closed 4 overflow connections", got, rounds+1)
				}
			})
			t.Run("OverflowIdle=2s", func(t *testing.T) {
				drv, dials, database := overflowPool(t, dialect, 2*time.Second)
				burst(t, drv)
				dials.Store(0)
				for range rounds {
					burst(t, drv)
					time.Sleep(50 * time.Millisecond)
				}
				if got := dials.Load(); got != 0 {
					t.Fatalf("%d bursts of 6 over a pool of 2 dialed %d connections (%d without OverflowIdle); want 0: the 4 overflow ones are kept between bursts",
						rounds, got, unkept)
				}
				if st := drv.Primary().Stats(); st.Open != 6 || st.ClosedIdle != 0 {
					t.Fatalf("just after the bursts the pool holds %d connections and closed %d; want 6 and 0", st.Open, st.ClosedIdle)
				}
				deadline := time.Now().Add(15 * time.Second)
				for drv.Primary().Stats().Open != 2 && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
				if got := drv.Primary().Stats().Open; got != 2 {
					t.Fatalf("long after the load fell the pool holds %d connections; want the 2 of DB_POOL_SIZE", got)
				}
				if got := drv.Primary().Stats().ClosedIdle; got != 4 {
					t.Fatalf("PoolStats.ClosedIdle = %d once the overflow was closed; want 4", got)
				}
				if got := serverConns(t, dialect, database); got != 2 {
					t.Fatalf("the server counts %d connections to %s; want the pool's 2", got, database)
				}
				// The next burst opens the overflow again and keeps it.
				dials.Store(0)
				burst(t, drv)
				burst(t, drv)
				if got := dials.Load(); got != 4 {
					t.Fatalf("two bursts after the overflow was closed dialed %d connections; want 4", got)
				}
			})
		})
	}
}

// TestDeferExecDialects: on every dialect a deferred statement runs at
// Commit and its failure rolls the transaction back. Invariant: rows exist
// if and only if Commit returned nil.
func TestDeferExecDialects(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		d, err := dialects.Open(cfg.DB, dialects.Options{})
		if err != nil {
			t.Fatal(err)
		}
		pool := driver.NewPool(driver.PoolConfig{Dialect: d.Dialect, DB: d.DB, MaxOpen: d.MaxOpen, PipelineBegin: true, BeginTxID: true})
		drv := driver.New(driver.Config{Dialect: d.Dialect, Primary: pool})
		t.Cleanup(func() { drv.Close() })
		ctx := context.Background()
		if _, err := drv.ExecContext(ctx, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		rows := func() int {
			var n int
			if err := drv.DB().QueryRow("SELECT COUNT(*) FROM t").Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		run := func(first, deferred int, commit bool) error {
			tx, err := drv.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			dtx := tx.(*driver.Tx)
			if _, err := dtx.ExecContext(ctx, "INSERT INTO t (id) VALUES ("+strconv.Itoa(first)+")"); err != nil {
				t.Fatal(err)
			}
			if err := dtx.DeferExec("INSERT INTO t (id) VALUES (" + strconv.Itoa(deferred) + ")"); err != nil {
				t.Fatal(err)
			}
			if !commit {
				return dtx.Rollback()
			}
			return dtx.Commit()
		}
		if err := run(1, 2, true); err != nil || rows() != 2 {
			t.Fatalf("commit: %v, %d rows; want nil and 2", err, rows())
		}
		if err := run(3, 4, false); err != nil || rows() != 2 {
			t.Fatalf("rollback: %v, %d rows; want nil and 2", err, rows())
		}
		if err := run(5, 1, true); err == nil || rows() != 2 {
			t.Fatalf("a deferred duplicate key: Commit returned %v, %d rows; want an error and 2", err, rows())
		}
		if err := run(6, 7, true); err != nil || rows() != 4 {
			t.Fatalf("after the failure: %v, %d rows; want nil and 4", err, rows())
		}
	})
}

// TestPoolTimeoutBoundsBothSlots: a write unit of work that waits for
// SQLite's write slot and then for a connection slot gives up after one
// DB_POOL_TIMEOUT in all, not one per slot. With one connection slot held
// by a reader and the write slot held by a writer that is itself waiting
// for that connection, the caller waits for the write slot until the
// writer times out (about one timeout), then for the connection: it must
// time out at its own deadline, which has passed by then, not after a
// second timeout.
func TestPoolTimeoutBoundsBothSlots(t *testing.T) {
	const timeout = time.Second
	cfg := testdb.Config(t, testdb.SQLite)
	d, err := dialects.Open(cfg.DB, dialects.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := driver.NewPool(driver.PoolConfig{Dialect: d.Dialect, DB: d.DB, MaxOpen: 1, Timeout: timeout, SerializeWrites: true})
	t.Cleanup(func() { pool.Close() })
	ctx := context.Background()
	releaseRead, err := pool.Acquire(ctx, false) // holds the one connection slot
	if err != nil {
		t.Fatal(err)
	}
	defer releaseRead()
	writerDone := make(chan error, 1)
	go func() {
		// Takes the write slot at once, then waits for the connection.
		_, err := pool.Acquire(ctx, true)
		writerDone <- err
	}()
	// Let the writer take the write slot first.
	for deadline := time.Now().Add(5 * time.Second); pool.Stats().Waits < 1; {
		if time.Now().After(deadline) {
			t.Fatal("the writer never started waiting")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	_, err = pool.Acquire(ctx, true)
	took := time.Since(start)
	if !errors.Is(err, driver.ErrPoolTimeout) {
		t.Fatalf("Acquire = %v, want a pool timeout", err)
	}
	if werr := <-writerDone; !errors.Is(werr, driver.ErrPoolTimeout) {
		t.Fatalf("the writer's Acquire = %v, want a pool timeout", werr)
	}
	// One timeout plus scheduling slack; two timeouts would be about 2 s.
	if took > timeout+timeout/2 {
		t.Fatalf("Acquire waited %s for two slots with DB_POOL_TIMEOUT %s: want at most one timeout in all", took, timeout)
	}
	var pte *driver.PoolTimeoutError
	if errors.As(err, &pte) && pte.Waited > took {
		t.Fatalf("PoolTimeoutError.Waited %s > the %s measured", pte.Waited, took)
	}
	if st := pool.Stats(); st.Waits != 2 || st.Timeouts != 2 {
		t.Fatalf("Stats: %d waits, %d timeouts; want 2 and 2 (one per unit of work)", st.Waits, st.Timeouts)
	}
}
