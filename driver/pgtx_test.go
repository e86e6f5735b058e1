package driver_test

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	entsql "entgo.io/ent/dialect/sql"
	"github.com/jackc/pgx/v5"

	"github.com/bento-go/bento/dialects"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/internal/faultconn"
	"github.com/bento-go/bento/internal/testdb"
)

// countingConn counts the writes a client makes to the server: one per
// round trip (pgx flushes a message, or a pipeline, in one write), and
// logs the statements sent in them.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
	log    *wireLog
	bound  faultconn.PGBound // this connection's
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	c.log.mu.Lock()
	before := len(c.bound.Texts)
	c.bound.Record(p)
	c.log.sent = append(c.log.sent, c.bound.Texts[before:]...)
	c.log.mu.Unlock()
	return c.Conn.Write(p)
}

// wireLog is what the clients of a pool sent to run, by text.
type wireLog struct {
	mu   sync.Mutex
	sent []string
}

// counts returns the BEGINs and COMMITs sent so far.
func (l *wireLog) counts() (begins, commits int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return (&faultconn.PGBound{Texts: l.sent}).Count()
}

// pgDriver opens a Bento driver on a fresh PostgreSQL database with a
// table t(id serial, v int unique), counting the client's writes.
func pgDriver(t *testing.T, pipeline bool) (*driver.Driver, *atomic.Int64) {
	t.Helper()
	return pgDriverWith(t, driver.PoolConfig{PipelineBegin: pipeline})
}

// pgDriverWith is pgDriver with the pool configured as pc (its DB,
// Dialect and MaxOpen are set here).
func pgDriverWith(t *testing.T, pc driver.PoolConfig) (*driver.Driver, *atomic.Int64) {
	t.Helper()
	drv, writes, _ := pgDriverLogged(t, pc)
	return drv, writes
}

// pgDriverLogged is pgDriverWith that also logs the BEGINs and COMMITs
// sent.
func pgDriverLogged(t *testing.T, pc driver.PoolConfig) (*driver.Driver, *atomic.Int64, *wireLog) {
	t.Helper()
	cfg := testdb.Config(t, testdb.Postgres)
	writes, log := &atomic.Int64{}, &wireLog{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, writes: writes, log: log}, nil
	}
	db, err := dialects.Open(cfg.DB, dialects.Options{DialContext: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.DB.Close() })
	pc.Dialect, pc.DB, pc.MaxOpen = db.Dialect, db.DB, 2
	pool := driver.NewPool(pc)
	drv := driver.New(driver.Config{Dialect: db.Dialect, Primary: pool})
	if _, err := drv.ExecContext(context.Background(), "CREATE TABLE t (id serial PRIMARY KEY, v int UNIQUE)"); err != nil {
		t.Fatal(err)
	}
	return drv, writes, log
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

// TestDeferExec: a deferred statement runs at Commit, with COMMIT in the
// same round trip on a pipelined PostgreSQL transaction; Rollback drops
// it; its failure is Commit's and rolls the whole transaction back,
// leaving the connection usable. Invariant: a row exists if and only if
// Commit returned nil. Counted by rows and by the client's writes.
func TestDeferExec(t *testing.T) {
	ctx := context.Background()
	drv, writes := pgDriverWith(t, driver.PoolConfig{PipelineBegin: true, BeginTxID: true})
	tx := func() *driver.Tx {
		t.Helper()
		dtx, err := drv.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		return dtx.(*driver.Tx)
	}
	// Warm the statement cache: each statement is prepared once.
	for i := 1; i <= 2; i++ {
		x := tx()
		if _, err := x.ExecContext(ctx, "INSERT INTO t (v) VALUES ($1)", -i); err != nil {
			t.Fatal(err)
		}
		if err := x.DeferExec("INSERT INTO t (v) VALUES ($1)", -10*i); err != nil {
			t.Fatal(err)
		}
		if err := x.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	base := count(t, drv)

	x := tx()
	before := writes.Load()
	if _, err := x.ExecContext(ctx, "INSERT INTO t (v) VALUES ($1)", 1); err != nil {
		t.Fatal(err)
	}
	if id := x.BeginTxID(); !strings.Contains(id, "@") {
		t.Errorf("BeginTxID() = %q after the first write, want xid@start", id)
	}
	if err := x.DeferExec("INSERT INTO t (v) VALUES ($1)", 2); err != nil {
		t.Fatal(err)
	}
	if err := x.DeferExec("INSERT INTO t (v) VALUES ($1)", 3); err == nil {
		t.Error("a second DeferExec was accepted")
	}
	if err := x.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := writes.Load() - before; got != 2 {
		t.Errorf("a transaction of one statement and one deferred one made %d round trips, want 2", got)
	}
	if got := count(t, drv); got != base+2 {
		t.Fatalf("%d rows after the commit, want %d", got, base+2)
	}

	// Rollback drops the deferred statement.
	x = tx()
	if _, err := x.ExecContext(ctx, "INSERT INTO t (v) VALUES ($1)", 4); err != nil {
		t.Fatal(err)
	}
	if err := x.DeferExec("INSERT INTO t (v) VALUES ($1)", 5); err != nil {
		t.Fatal(err)
	}
	if err := x.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := count(t, drv); got != base+2 {
		t.Fatalf("%d rows after a rollback, want %d", got, base+2)
	}

	// A deferred statement that fails: Commit returns its error and
	// nothing of the transaction stays.
	x = tx()
	if _, err := x.ExecContext(ctx, "INSERT INTO t (v) VALUES ($1)", 6); err != nil {
		t.Fatal(err)
	}
	if err := x.DeferExec("INSERT INTO t (v) VALUES ($1)", 1); err != nil { // v=1 exists
		t.Fatal(err)
	}
	err := x.Commit()
	if err == nil || !strings.Contains(err.Error(), "23505") {
		t.Fatalf("Commit with a failing deferred statement returned %v, want the unique violation (23505)", err)
	}
	if got := count(t, drv); got != base+2 {
		t.Fatalf("%d rows after the failed commit, want %d (v=6 rolled back)", got, base+2)
	}
	if err := x.Rollback(); !errors.Is(err, sql.ErrTxDone) {
		t.Errorf("Rollback after Commit returned %v, want sql.ErrTxDone", err)
	}

	// Only the deferred statement: it alone, an implicit transaction, in
	// one round trip (not measured the first time: a connection whose
	// statements were all deferred may not have prepared it yet). The
	// connections still work.
	for i := range 3 {
		x = tx()
		if err := x.DeferExec("INSERT INTO t (v) VALUES ($1)", 7+count(t, drv)); err != nil {
			t.Fatal(err)
		}
		before = writes.Load()
		if err := x.Commit(); err != nil {
			t.Fatal(err)
		}
		if got := writes.Load() - before; got != 1 && i > 0 {
			t.Errorf("a transaction of a deferred statement alone made %d round trips, want 1", got)
		}
	}
	if got := count(t, drv); got != base+5 {
		t.Fatalf("%d rows at the end, want %d", got, base+5)
	}
}

// TestDeferredWrites: in a transaction begun on a context made by
// WithDeferredWrites, an Exec whose result nobody reads is sent with the
// next statement that needs an answer, or with COMMIT: a transaction of
// such writes is one round trip, and reads in it see them. Its failure is
// returned by the statement or the Commit that sent it, and nothing of
// the transaction stays. Invariant: a row exists if and only if its
// transaction's Commit returned nil. Counted by rows and by the client's
// writes to the server.
func TestDeferredWrites(t *testing.T) {
	ctx := context.Background()
	dctx := driver.WithDeferredWrites(ctx)
	drv, writes, log := pgDriverLogged(t, driver.PoolConfig{PipelineBegin: true, BeginTxID: true})
	begin := func(ctx context.Context) *driver.Tx {
		t.Helper()
		tx, err := drv.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tx.(*driver.Tx)
	}
	insert := "INSERT INTO t (v) VALUES ($1)"
	exec := func(tx *driver.Tx, v int) {
		t.Helper()
		if err := tx.Exec(ctx, insert, []any{v}, nil); err != nil {
			t.Fatalf("deferred Exec returned %v", err)
		}
	}
	countIn := func(tx *driver.Tx) int {
		t.Helper()
		var rows entsql.Rows
		if err := tx.Query(ctx, "SELECT count(*) FROM t", []any{}, &rows); err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var n int
		if !rows.Next() {
			t.Fatal("count(*) returned no row")
		}
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Warm the statement cache of both connections, for both ways a
	// transaction ends (pgx prepares a statement, COMMIT too, the first
	// time a connection sends it in a pipeline).
	for i := 1; i <= 4; i++ {
		x, y := begin(dctx), begin(dctx)
		exec(x, -2*i)
		exec(y, -2*i-1)
		if i%2 == 0 {
			countIn(x)
			countIn(y)
		}
		if err := errors.Join(x.Commit(), y.Commit()); err != nil {
			t.Fatal(err)
		}
	}
	base := count(t, drv)

	t.Run("one round trip", func(t *testing.T) {
		x := begin(dctx)
		before := writes.Load()
		for v := 1; v <= 3; v++ {
			exec(x, v)
		}
		if got := writes.Load() - before; got != 0 {
			t.Fatalf("three deferred inserts made %d round trips before Commit, want 0", got)
		}
		if !x.WholeWithCommit() {
			t.Error("WholeWithCommit() = false with nothing sent yet")
		}
		begins, commits := log.counts()
		if err := x.Commit(); err != nil {
			t.Fatal(err)
		}
		if got := writes.Load() - before; got != 1 {
			t.Errorf("a transaction of three deferred inserts made %d round trips, want 1", got)
		}
		// PostgreSQL's implicit transaction: the pipeline's Sync commits.
		if b, c := log.counts(); b != begins || c != commits {
			t.Errorf("a transaction of three deferred inserts sent %d BEGIN and %d COMMIT, want none (an implicit transaction)", b-begins, c-commits)
		}
		// Its id would have come back with the COMMIT's answer or not at
		// all: of no use for resolving a lost COMMIT, it is not read.
		if id := x.BeginTxID(); id != "" {
			t.Errorf("BeginTxID() = %q after a commit sent whole, want \"\" (the id is not read in the COMMIT's pipeline)", id)
		}
		if got := count(t, drv); got != base+3 {
			t.Fatalf("%d rows after the commit, want %d", got, base+3)
		}
		base += 3
	})

	t.Run("reads see the writes before them", func(t *testing.T) {
		x := begin(dctx)
		exec(x, 10)
		before := writes.Load()
		if got := countIn(x); got != base+1 {
			t.Errorf("a query after a deferred insert counted %d rows, want %d", got, base+1)
		}
		if got := writes.Load() - before; got != 1 {
			t.Errorf("the query and the insert before it made %d round trips, want 1", got)
		}
		// The first pipeline was not COMMIT's: it read the id, which can
		// resolve the COMMIT to come.
		if id := x.BeginTxID(); !strings.Contains(id, "@") {
			t.Errorf("BeginTxID() = %q after a query began the transaction, want xid@start", id)
		}
		if x.WholeWithCommit() {
			t.Error("WholeWithCommit() = true after the transaction sent a pipeline")
		}
		exec(x, 11)
		var n int
		if err := queryRow(ctx, x, "SELECT count(*) FROM t", &n); err != nil || n != base+2 {
			t.Errorf("QueryContext after a deferred insert counted %d rows (%v), want %d", n, err, base+2)
		}
		if err := x.Commit(); err != nil {
			t.Fatal(err)
		}
		if got := count(t, drv); got != base+2 {
			t.Fatalf("%d rows after the commit, want %d", got, base+2)
		}
		base += 2
	})

	t.Run("rollback sends nothing", func(t *testing.T) {
		x := begin(dctx)
		before := writes.Load()
		exec(x, 20)
		if err := x.Rollback(); err != nil {
			t.Fatal(err)
		}
		if got := writes.Load() - before; got != 0 {
			t.Errorf("a rolled back transaction of deferred inserts made %d round trips, want 0", got)
		}
		if got := count(t, drv); got != base {
			t.Fatalf("%d rows after the rollback, want %d", got, base)
		}
	})

	t.Run("a failure comes back with the statement that sent it", func(t *testing.T) {
		x := begin(dctx)
		exec(x, 30)
		exec(x, 1) // v=1 exists: unique violation
		var rows entsql.Rows
		err := x.Query(ctx, "SELECT count(*) FROM t", []any{}, &rows)
		var de *driver.DeferredError
		if !errors.As(err, &de) || de.Query != insert || !strings.Contains(err.Error(), "23505") {
			t.Fatalf("the query after a failing deferred insert returned %v, want a DeferredError naming the insert, with 23505", err)
		}
		if err := x.Rollback(); err != nil {
			t.Fatal(err)
		}
		if got := count(t, drv); got != base {
			t.Fatalf("%d rows after the failed transaction, want %d (v=30 rolled back)", got, base)
		}
	})

	t.Run("a failure comes back from Commit", func(t *testing.T) {
		// The server processes of the pool's two connections, both open.
		pids := func() map[uint32]bool {
			t.Helper()
			x, y := begin(dctx), begin(dctx)
			exec(x, 100+count(t, drv))
			exec(y, 101+count(t, drv))
			if err := errors.Join(x.Commit(), y.Commit()); err != nil {
				t.Fatal(err)
			}
			return map[uint32]bool{x.BackendPID(): true, y.BackendPID(): true}
		}
		before := pids()
		x := begin(dctx)
		exec(x, 40)
		exec(x, 2) // exists
		exec(x, 41)
		err := x.Commit()
		var de *driver.DeferredError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), "23505") {
			t.Fatalf("Commit with a failing deferred insert returned %v, want a DeferredError with 23505", err)
		}
		if got := count(t, drv); got != base+2 {
			t.Fatalf("%d rows after the failed commit, want %d", got, base+2)
		}
		// The failed transaction (an implicit one, rolled back at its
		// Sync) left its connection usable, so the pool kept it: the
		// next two transactions at once run on the same two server
		// processes, none on a new connection.
		after := pids()
		for pid := range after {
			if !before[pid] {
				t.Errorf("a transaction ran on a new connection (server process %d; before the failure: %v): the failed commit's connection was discarded", pid, before)
			}
		}
		if got := count(t, drv); got != base+4 {
			t.Fatalf("%d rows after two more commits, want %d", got, base+4)
		}
		base += 4
	})

	t.Run("only what needs no answer waits", func(t *testing.T) {
		// A connection that has sent only whole transactions has yet to
		// prepare the SELECT of the id that a first pipeline wanting an
		// answer sends. Prepare it on both connections, unmeasured.
		x, y := begin(dctx), begin(dctx)
		for i, tx := range []*driver.Tx{x, y} {
			if _, err := tx.ExecContext(ctx, insert, 60+i); err != nil {
				t.Fatal(err)
			}
		}
		if err := errors.Join(x.Rollback(), y.Rollback()); err != nil {
			t.Fatal(err)
		}
		x = begin(dctx)
		before := writes.Load()
		if _, err := x.ExecContext(ctx, insert, 50); err != nil { // wants a sql.Result
			t.Fatal(err)
		}
		if got := writes.Load() - before; got != 1 {
			t.Errorf("an Exec with a result made %d round trips, want 1 (sent at once)", got)
		}
		if err := x.Commit(); err != nil {
			t.Fatal(err)
		}
		y = begin(ctx) // not deferring
		before = writes.Load()
		exec(y, 51)
		if got := writes.Load() - before; got != 1 {
			t.Errorf("an Exec without WithDeferredWrites made %d round trips, want 1 (sent at once)", got)
		}
		if err := y.Commit(); err != nil {
			t.Fatal(err)
		}
		if got := count(t, drv); got != base+2 {
			t.Fatalf("%d rows, want %d", got, base+2)
		}
		base += 2
	})

	t.Run("an error in committing comes back from Commit", func(t *testing.T) {
		// A deferred constraint is checked as the transaction commits:
		// in an implicit transaction, at the Sync.
		if _, err := drv.ExecContext(ctx, "CREATE TABLE d (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)"); err != nil {
			t.Fatal(err)
		}
		x := begin(dctx)
		for _, v := range []int{1, 2, 1} {
			if err := x.Exec(ctx, "INSERT INTO d (v) VALUES ($1)", []any{v}, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := x.Commit(); err == nil || !strings.Contains(err.Error(), "23505") {
			t.Fatalf("Commit of a transaction that breaks a deferred unique constraint returned %v, want the unique violation (23505)", err)
		}
		var n int
		if err := drv.DB().QueryRow("SELECT count(*) FROM d").Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d rows in d after the failed commit (%v), want 0", n, err)
		}
		y := begin(dctx)
		exec(y, 200+count(t, drv))
		if err := y.Commit(); err != nil {
			t.Fatalf("a commit after the failed one: %v", err)
		}
		base++
	})

	// Statements that need a transaction block, and options, keep BEGIN
	// and COMMIT: outside a block, LOCK TABLE fails.
	t.Run("a block when a statement needs one", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			opts  *sql.TxOptions
			first string
		}{
			{"LOCK TABLE", nil, "LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE"},
			{"serializable", &sql.TxOptions{Isolation: sql.LevelSerializable}, insert},
		} {
			tx, err := drv.BeginTx(dctx, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			x := tx.(*driver.Tx)
			args := []any{}
			if c.first == insert {
				args = []any{300 + count(t, drv)}
			}
			if err := x.Exec(ctx, c.first, args, nil); err != nil {
				t.Fatal(err)
			}
			exec(x, 400+count(t, drv))
			begins, commits := log.counts()
			if err := x.Commit(); err != nil {
				t.Fatalf("%s: Commit: %v", c.name, err)
			}
			if b, cm := log.counts(); b != begins+1 || cm != commits+1 {
				t.Errorf("%s: the transaction sent %d BEGIN and %d COMMIT, want 1 and 1", c.name, b-begins, cm-commits)
			}
		}
		want := base + 3 // the LOCK's insert, and the serializable's two
		if got := count(t, drv); got != want {
			t.Fatalf("%d rows, want %d", got, want)
		}
	})
}
