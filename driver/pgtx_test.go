package driver_test

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	entsql "entgo.io/ent/dialect/sql"
	"github.com/jackc/pgx/v5"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/internal/testdb"
)

// countingConn counts the writes a client makes to the server: one per
// round trip (pgx flushes a message, or a pipeline, in one write).
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// pgDriver opens a Bento driver on a fresh PostgreSQL database with a
// table t(id serial, v int unique), counting the client's writes.
func pgDriver(t *testing.T, pipeline bool) (*driver.Driver, *atomic.Int64) {
	t.Helper()
	cfg := testdb.Config(t, testdb.Postgres)
	writes := &atomic.Int64{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, writes}, nil
	}
	db, err := dialects.Open(cfg.DB, dialects.Options{DialContext: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.DB.Close() })
	pool := driver.NewPool(driver.PoolConfig{Dialect: db.Dialect, DB: db.DB, MaxOpen: 2, PipelineBegin: pipeline})
	drv := driver.New(driver.Config{Dialect: db.Dialect, Primary: pool})
	if _, err := drv.ExecContext(context.Background(), "CREATE TABLE t (id serial PRIMARY KEY, v int UNIQUE)"); err != nil {
		t.Fatal(err)
	}
	return drv, writes
}

func count(t *testing.T, drv *driver.Driver) int {
	t.Helper()
	var n int
	if err := drv.DB().QueryRow("SELECT COUNT(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPipelineBeginRoundTrips: a transaction of one INSERT … RETURNING and
// COMMIT costs two round trips with PipelineBegin (BEGIN goes with the
// INSERT) and three without; one that runs nothing costs none.
func TestPipelineBeginRoundTrips(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		pipeline bool
		want     int64
	}{{true, 2}, {false, 3}} {
		drv, writes := pgDriver(t, c.pipeline)
		run := func() (int64, int) {
			before := writes.Load()
			tx, err := drv.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var rows entsql.Rows
			if err := tx.Query(ctx, "INSERT INTO t (v) VALUES ($1) RETURNING id", []any{int(before)}, &rows); err != nil {
				t.Fatal(err)
			}
			var res []int
			for rows.Next() {
				var id int
				if err := rows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				res = append(res, id)
			}
			rows.Close()
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			return writes.Load() - before, len(res)
		}
		run() // the INSERT's statement is prepared (a round trip) the first time
		if got, ids := run(); got != c.want || ids != 1 {
			t.Errorf("PipelineBegin=%t: %d round trips and %d ids returned, want %d and 1", c.pipeline, got, ids, c.want)
		}
		before := writes.Load()
		tx, err := drv.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if c.pipeline && writes.Load() != before {
			t.Errorf("an empty transaction made %d round trips, want 0", writes.Load()-before)
		}
	}
}

// TestPipelineBeginSemantics: what database/sql's transactions do, the
// pipelined ones do too. Invariant: a row exists if and only if its
// transaction committed.
func TestPipelineBeginSemantics(t *testing.T) {
	ctx := context.Background()
	drv, _ := pgDriver(t, true)

	t.Run("rollback", func(t *testing.T) {
		tx, _ := drv.BeginTx(ctx, nil)
		if err := tx.Exec(ctx, "INSERT INTO t (v) VALUES (1)", []any{}, nil); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if n := count(t, drv); n != 0 {
			t.Fatalf("%d rows after rollback", n)
		}
	})

	t.Run("commit of a failed transaction", func(t *testing.T) {
		if _, err := drv.ExecContext(ctx, "INSERT INTO t (v) VALUES (2)"); err != nil {
			t.Fatal(err)
		}
		tx, _ := drv.BeginTx(ctx, nil)
		if err := tx.Exec(ctx, "INSERT INTO t (v) VALUES (3)", []any{}, nil); err != nil {
			t.Fatal(err)
		}
		err := tx.Exec(ctx, "INSERT INTO t (v) VALUES (2)", []any{}, nil)
		if err == nil {
			t.Fatal("duplicate insert succeeded")
		}
		if err := tx.Commit(); !errors.Is(err, pgx.ErrTxCommitRollback) {
			t.Fatalf("commit after a failed statement = %v, want pgx.ErrTxCommitRollback", err)
		}
		if n := count(t, drv); n != 1 {
			t.Fatalf("%d rows, want 1 (the failed transaction's insert must not be there)", n)
		}
	})

	t.Run("failed first statement", func(t *testing.T) {
		tx, _ := drv.BeginTx(ctx, nil)
		if err := tx.Exec(ctx, "INSERT INTO t (v) VALUES (2)", []any{}, nil); err == nil || !strings.Contains(err.Error(), "23505") {
			t.Fatalf("pipelined duplicate insert = %v, want a unique violation", err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatalf("rollback after a failed first statement: %v", err)
		}
	})

	t.Run("options", func(t *testing.T) {
		tx, err := drv.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		dtx := tx.(*driver.Tx)
		var iso, ro string
		if err := queryRow(ctx, dtx, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')", &iso, &ro); err != nil {
			t.Fatal(err)
		}
		if iso != "serializable" || ro != "on" {
			t.Fatalf("isolation %q read only %q, want serializable and on", iso, ro)
		}
		err = tx.Exec(ctx, "INSERT INTO t (v) VALUES (9)", []any{}, nil)
		if err == nil || !strings.Contains(err.Error(), "25006") {
			t.Fatalf("write in a read-only transaction = %v, want 25006", err)
		}
		_ = tx.Rollback()
		if _, err := drv.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelLinearizable}); err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Fatalf("BeginTx with an unsupported level = %v", err)
		}
	})

	t.Run("connection lost while idle", func(t *testing.T) {
		// Every idle connection of the pool is terminated; the next
		// transaction starts on a fresh one, as database/sql would.
		if _, err := drv.ExecContext(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		var name string
		if err := drv.DB().QueryRow("SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
		admin := testdb.Admin(t, testdb.Postgres)
		if _, err := admin.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name); err != nil {
			t.Fatal(err)
		}
		tx, _ := drv.BeginTx(ctx, nil)
		if err := tx.Exec(ctx, "INSERT INTO t (v) VALUES (10)", []any{}, nil); err != nil {
			t.Fatalf("first statement after the pool's connections died: %v", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	})
}

func queryRow(ctx context.Context, tx *driver.Tx, q string, dest ...any) error {
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		return errors.Join(errors.New("no row"), rows.Err())
	}
	return rows.Scan(dest...)
}
