package drain_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"

	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/drain"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
)

// dialects are the databases the drain tests run on: SQLite (a file) and
// PostgreSQL (the local server; unreachable fails the test).
var dialects = []string{testdb.SQLite, testdb.Postgres}

// rig is a database opened the way cmd/bento/serve.go opens it: the
// Drainer's middleware first, then SetPool with the DB's Close.
type rig struct {
	t       *testing.T
	dialect string
	appName string
	cfg     config.Config
	d       *drain.Drainer
	db      *bento.DB
	drv     *driver.Driver

	checkOnce sync.Once
	check     *sql.DB // a pool of its own, past the drained one, for counting
	rawURL    string
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newRig opens a fresh database of the dialect behind a Drainer.
func newRig(t *testing.T, dialect string, dc drain.Config) *rig {
	t.Helper()
	raw := testdb.URL(t, dialect)
	u, err := config.ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.DB.URL = u
	cfg.DB.ApplicationName = "bt_drain_" + randomHex(t, 4)
	d := drain.New(dc)
	db, err := bento.Open(cfg, bento.WithMiddleware(d.Middleware()))
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	d.SetPool(db.Pool(), db.Close)
	t.Cleanup(func() { db.Close() })
	return &rig{t: t, dialect: dialect, appName: cfg.DB.ApplicationName, cfg: cfg, d: d, db: db, drv: db.Driver(), rawURL: raw}
}

// table creates drain_rows with one row (id 1) through the drained driver.
func (r *rig) table() {
	r.t.Helper()
	r.exec(r.drv, "CREATE TABLE drain_rows (id INTEGER PRIMARY KEY, v VARCHAR(40) NOT NULL)")
	r.exec(r.drv, "INSERT INTO drain_rows (id, v) VALUES (1, 'one')")
}

// schema migrates the reference schema and returns the shop service over
// the drained driver, as bento serve builds it.
func (r *rig) schema() (*shop.Service, *ent.Client) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.db.Migrate(ctx, migrate.Tables...); err != nil {
		r.t.Fatalf("Migrate: %v", err)
	}
	client := ent.NewClient(ent.Driver(r.drv))
	uow := ent.NewUnitOfWork(client)
	return shop.NewService(uow, client), client
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (r *rig) exec(db execer, q string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, q); err != nil {
		r.t.Fatalf("%s: %v", q, err)
	}
}

// checkDB returns a pool that does not go through the drained one: a raw
// database/sql pool on PostgreSQL, a second bento.DB on the SQLite file.
func (r *rig) checkDB() *sql.DB {
	r.t.Helper()
	r.checkOnce.Do(func() {
		if r.dialect == testdb.Postgres {
			r.check = testdb.OpenRaw(r.t, r.rawURL)
			return
		}
		cfg := r.cfg
		cfg.DB.ApplicationName = "bt_drain_check"
		db, err := bento.Open(cfg)
		if err != nil {
			r.t.Fatalf("bento.Open (check): %v", err)
		}
		r.t.Cleanup(func() { db.Close() })
		r.check = db.Driver().DB()
	})
	return r.check
}

// count runs a SELECT COUNT(*) on the check pool.
func (r *rig) count(q string, args ...any) int {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	if err := r.checkDB().QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		r.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// begin starts a transaction through the drained driver.
func (r *rig) begin() *driver.Tx {
	r.t.Helper()
	tx, err := r.drv.BeginTx(context.Background(), nil)
	if err != nil {
		r.t.Fatalf("BeginTx: %v", err)
	}
	return tx.(*driver.Tx)
}

// blockingQuery runs until it is cancelled.
func blockingQuery(dialect string) string {
	if dialect == testdb.Postgres {
		return "SELECT pg_sleep(3600)"
	}
	return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"
}

// startBlocked starts, in a goroutine, what a unit of work does: a
// transaction that runs a statement that does not end by itself, and on
// the statement's error rolls back. The returned channel gets the
// statement's error once the transaction ended.
func (r *rig) startBlocked(insert bool) <-chan error {
	r.t.Helper()
	tx := r.begin()
	if insert {
		r.exec(tx, "INSERT INTO drain_rows (id, v) VALUES (2, 'blocked')")
	}
	done := make(chan error, 1)
	go func() {
		_, err := tx.ExecContext(context.Background(), blockingQuery(r.dialect))
		_ = tx.Rollback()
		done <- err
	}()
	// Let the statement reach the database.
	time.Sleep(200 * time.Millisecond)
	return done
}

// waitDraining waits until a drain started.
func waitDraining(t *testing.T, d *drain.Drainer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !d.Draining() {
		if time.Now().After(deadline) {
			t.Fatal("the drain did not start within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// startDrain runs Drain in a goroutine.
func startDrain(ctx context.Context, d *drain.Drainer) <-chan drain.Stats {
	ch := make(chan drain.Stats, 1)
	go func() { ch <- d.Drain(ctx) }()
	return ch
}

func waitStats(t *testing.T, ch <-chan drain.Stats, within time.Duration) drain.Stats {
	t.Helper()
	select {
	case st := <-ch:
		return st
	case <-time.After(within):
		t.Fatalf("Drain did not return within %s", within)
		return drain.Stats{}
	}
}

// assertClosed checks that the pool under the drained driver is closed.
func (r *rig) assertClosed() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.drv.DB().PingContext(ctx); err == nil || !strings.Contains(err.Error(), "closed") {
		r.t.Errorf("the pool should be closed after Drain; Ping: %v", err)
	}
}

// assertRefused checks that new work outside a transaction and a new
// transaction are refused with ErrDraining, never retryable.
func (r *rig) assertRefused() {
	r.t.Helper()
	ctx := context.Background()
	_, err := r.drv.ExecContext(ctx, "SELECT 1")
	if !errors.Is(err, drain.ErrDraining) {
		r.t.Errorf("a statement while draining: got %v, want ErrDraining", err)
	}
	if resilience.IsRetryable(err) {
		r.t.Errorf("ErrDraining must not be retryable: %v", err)
	}
	rows, err := r.drv.QueryContext(ctx, "SELECT 1")
	if rows != nil {
		rows.Close()
	}
	if !errors.Is(err, drain.ErrDraining) {
		r.t.Errorf("a query while draining: got %v, want ErrDraining", err)
	}
	tx, err := r.drv.BeginTx(ctx, nil)
	if tx != nil {
		tx.Rollback()
	}
	if !errors.Is(err, drain.ErrDraining) || resilience.IsRetryable(err) {
		r.t.Errorf("BEGIN while draining: got %v (retryable %v), want ErrDraining, not retryable", err, resilience.IsRetryable(err))
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]drain.Mode{"graceful": drain.Graceful, " Force ": drain.Force, "IMMEDIATE": drain.Immediate} {
		got, err := drain.ParseMode(in)
		if err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "now", "gracefull"} {
		if _, err := drain.ParseMode(in); err == nil || !strings.Contains(err.Error(), "graceful, immediate, force") {
			t.Errorf("ParseMode(%q): want an error naming the accepted modes, got %v", in, err)
		}
	}
}

// TestDrainWithoutPool: a Drainer whose pool was never set drains nothing,
// closes nothing, and succeeds at once.
func TestDrainWithoutPool(t *testing.T) {
	d := drain.New(drain.Config{})
	st := waitStats(t, startDrain(context.Background(), d), 2*time.Second)
	if !st.Success || st.Escalated || st.Mode != drain.Graceful || st.InFlightStart != 0 || st.InFlightEnd != 0 || st.ConnectionsStart != 0 {
		t.Errorf("stats = %+v; want a successful graceful drain of nothing", st)
	}
	if !d.Draining() {
		t.Error("Draining() should be true after Drain")
	}
	select {
	case <-d.Done():
	default:
		t.Error("Done() should be closed after Drain")
	}
}

// TestDrainBeforeAnythingStarted: a drain of a database nothing used yet
// returns at once, closes the pool and succeeds.
func TestDrainBeforeAnythingStarted(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Timeout: 5 * time.Second})
			st := waitStats(t, startDrain(context.Background(), r.d), 2*time.Second)
			t.Logf("stats: %+v", st)
			if !st.Success || st.Escalated || st.Mode != drain.Graceful {
				t.Errorf("want Success, not Escalated, graceful; got %+v", st)
			}
			if st.InFlightStart != 0 || st.InFlightEnd != 0 || st.Rejected != 0 || st.CloseError != "" {
				t.Errorf("want nothing in flight, nothing rejected, no close error; got %+v", st)
			}
			if st.ConnectionsEnd != 0 {
				t.Errorf("ConnectionsEnd = %d, want 0", st.ConnectionsEnd)
			}
			if st.Took <= 0 || st.Took > time.Second {
				t.Errorf("Took = %s, want > 0 and well under a second", st.Took)
			}
			r.assertClosed()
			r.assertRefused()
		})
	}
}

// recorder is an Observer that records what it is told.
type recorder struct {
	mu      sync.Mutex
	states  []string
	drained []drain.Stats
}

func (o *recorder) State(s string) { o.mu.Lock(); o.states = append(o.states, s); o.mu.Unlock() }
func (o *recorder) Drained(st drain.Stats) {
	o.mu.Lock()
	o.drained = append(o.drained, st)
	o.mu.Unlock()
}

// TestDrainIdempotent: Drain called again, sequentially or concurrently,
// returns the first drain's statistics; the observer hears of one drain.
func TestDrainIdempotent(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			obs := &recorder{}
			r := newRig(t, dialect, drain.Config{Timeout: 5 * time.Second, Observer: obs})
			r.table()
			tx := r.begin() // keeps the first drain busy while the others call
			first := startDrain(context.Background(), r.d)
			waitDraining(t, r.d)
			var wg sync.WaitGroup
			others := make([]drain.Stats, 8)
			for i := range others {
				wg.Add(1)
				go func() { defer wg.Done(); others[i] = r.d.Drain(context.Background()) }()
			}
			time.Sleep(100 * time.Millisecond)
			if err := tx.Commit(); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			st := waitStats(t, first, 5*time.Second)
			wg.Wait()
			for i, o := range others {
				if !reflect.DeepEqual(o, st) {
					t.Errorf("concurrent call %d returned %+v, want the first's %+v", i, o, st)
				}
			}
			again := r.d.Drain(context.Background())
			if !reflect.DeepEqual(again, st) {
				t.Errorf("a later call returned %+v, want %+v", again, st)
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			if !reflect.DeepEqual(obs.states, []string{"draining", "closed"}) {
				t.Errorf("observer states = %q, want [draining closed]", obs.states)
			}
			if len(obs.drained) != 1 || !reflect.DeepEqual(obs.drained[0], st) {
				t.Errorf("observer Drained calls = %+v, want exactly one with %+v", obs.drained, st)
			}
		})
	}
}

// TestDrainInFlight: a transaction counts as one unit from BEGIN to its
// end; its statements are not refused while draining; new work is refused
// with ErrDraining, counted, never retryable; the graceful drain waits for
// the transaction, which commits.
func TestDrainInFlight(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Timeout: 20 * time.Second, CheckInterval: 10 * time.Millisecond})
			r.table()
			if n := r.d.InFlight(); n != 0 {
				t.Fatalf("InFlight() = %d before anything, want 0", n)
			}
			tx := r.begin()
			if n := r.d.InFlight(); n != 1 {
				t.Fatalf("InFlight() = %d with a transaction open, want 1", n)
			}
			r.exec(tx, "INSERT INTO drain_rows (id, v) VALUES (2, 'before')")
			if n := r.d.InFlight(); n != 1 {
				t.Fatalf("InFlight() = %d after a statement in the transaction, want 1 (a transaction is one unit)", n)
			}

			drained := startDrain(context.Background(), r.d)
			waitDraining(t, r.d)
			// Statements of the transaction in flight are not refused.
			r.exec(tx, "INSERT INTO drain_rows (id, v) VALUES (3, 'during')")
			rows, err := tx.QueryContext(context.Background(), "SELECT count(*) FROM drain_rows")
			if err != nil {
				t.Fatalf("a query in the transaction while draining: %v", err)
			}
			rows.Close()
			// New work is refused: two statements and one BEGIN.
			r.assertRefused()
			if got := r.d.Rejected(); got != 3 {
				t.Errorf("Rejected() = %d, want 3", got)
			}
			if n := r.d.InFlight(); n != 1 {
				t.Errorf("InFlight() = %d while draining, want 1 (refused work does not count)", n)
			}
			select {
			case st := <-drained:
				t.Fatalf("a graceful drain returned while a transaction was open: %+v", st)
			case <-time.After(300 * time.Millisecond):
			}
			committed := time.Now()
			if err := tx.Commit(); err != nil {
				t.Fatalf("Commit while draining: %v", err)
			}
			st := waitStats(t, drained, 5*time.Second)
			t.Logf("stats: %+v (returned %s after the commit)", st, time.Since(committed).Round(time.Millisecond))
			if !st.Success || st.Escalated || st.InFlightStart != 1 || st.InFlightEnd != 0 || st.Rejected != 3 {
				t.Errorf("want Success, not Escalated, InFlightStart 1, InFlightEnd 0, Rejected 3; got %+v", st)
			}
			if st.ConnectionsStart < 1 || st.ConnectionsEnd != 0 {
				t.Errorf("ConnectionsStart = %d (want >= 1: the transaction's), ConnectionsEnd = %d (want 0)", st.ConnectionsStart, st.ConnectionsEnd)
			}
			if st.Took < 300*time.Millisecond {
				t.Errorf("Took = %s, want at least the 300ms the transaction stayed open", st.Took)
			}
			if n := r.d.InFlight(); n != 0 {
				t.Errorf("InFlight() = %d after the commit, want 0", n)
			}
			if n := r.count("SELECT count(*) FROM drain_rows"); n != 3 {
				t.Errorf("%d rows after the drain, want 3 (the transaction committed)", n)
			}
			r.assertClosed()
		})
	}
}

// TestDrainStatementsOutsideTx: a statement outside a transaction is one
// unit while it runs, and rows read after it returned are still readable.
func TestDrainStatementsOutsideTx(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Timeout: time.Minute})
			r.table()
			rows, err := r.drv.QueryContext(context.Background(), "SELECT id FROM drain_rows")
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for rows.Next() {
				n++
			}
			if err := errors.Join(rows.Err(), rows.Close()); err != nil || n != 1 {
				t.Fatalf("read %d rows, err %v; want 1", n, err)
			}
			if got := r.d.InFlight(); got != 0 {
				t.Errorf("InFlight() = %d after statements returned, want 0", got)
			}
			// A statement running when the drain starts is waited for.
			done := make(chan error, 1)
			go func() {
				q := "SELECT pg_sleep(0.5)"
				if dialect == testdb.SQLite {
					q = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 300000) SELECT count(*) FROM c"
				}
				_, err := r.drv.ExecContext(context.Background(), q)
				done <- err
			}()
			deadline := time.Now().Add(5 * time.Second)
			for r.d.InFlight() == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if r.d.InFlight() != 1 {
				t.Fatalf("InFlight() = %d while a statement runs, want 1", r.d.InFlight())
			}
			st := waitStats(t, startDrain(context.Background(), r.d), time.Minute)
			if err := <-done; err != nil {
				t.Errorf("the running statement failed: %v", err)
			}
			if !st.Success || st.InFlightStart != 1 || st.InFlightEnd != 0 {
				t.Errorf("want Success with InFlightStart 1, InFlightEnd 0; got %+v", st)
			}
		})
	}
}

// TestDrainGracefulEscalates: a transaction that never ends is cancelled
// when the timeout passes (Escalated) and rolled back.
func TestDrainGracefulEscalates(t *testing.T) {
	const timeout = 700 * time.Millisecond
	for _, dialect := range dialects {
		t.Run(dialect+"/blocked statement", func(t *testing.T) {
			// The owner reacts to the cancellation as a unit of work does:
			// its statement fails and it rolls back.
			r := newRig(t, dialect, drain.Config{Timeout: timeout, CheckInterval: 10 * time.Millisecond})
			r.table()
			blocked := r.startBlocked(true)
			st := waitStats(t, startDrain(context.Background(), r.d), timeout+5*time.Second)
			t.Logf("stats: %+v", st)
			if !st.Escalated || st.Success || st.Mode != drain.Graceful || st.InFlightStart != 1 || st.InFlightEnd != 0 {
				t.Errorf("want Escalated, not Success, InFlightStart 1, InFlightEnd 0; got %+v", st)
			}
			if st.Took < timeout || st.Took > timeout+time.Second {
				t.Errorf("Took = %s, want within [%s, %s]", st.Took, timeout, timeout+time.Second)
			}
			select {
			case err := <-blocked:
				if err == nil {
					t.Error("the blocked statement should have failed (cancelled)")
				}
				t.Logf("blocked statement: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("the blocked statement was not cancelled")
			}
			if n := r.count("SELECT count(*) FROM drain_rows"); n != 1 {
				t.Errorf("%d rows, want 1: the cancelled transaction's insert must be rolled back", n)
			}
		})
		t.Run(dialect+"/idle transaction", func(t *testing.T) {
			// The owner never comes back: the transaction is rolled back by
			// its context; the drain then waits up to Timeout more for the
			// owner to return (Config.Timeout) and closes.
			r := newRig(t, dialect, drain.Config{Timeout: timeout, CheckInterval: 10 * time.Millisecond})
			r.table()
			tx := r.begin()
			r.exec(tx, "INSERT INTO drain_rows (id, v) VALUES (2, 'never ends')")
			st := waitStats(t, startDrain(context.Background(), r.d), 2*timeout+5*time.Second)
			t.Logf("stats: %+v", st)
			if !st.Escalated || st.Success || st.InFlightStart != 1 {
				t.Errorf("want Escalated, not Success, InFlightStart 1; got %+v", st)
			}
			if st.Took < timeout || st.Took > 2*timeout+time.Second {
				t.Errorf("Took = %s, want within [%s, %s]", st.Took, timeout, 2*timeout+time.Second)
			}
			if err := tx.Commit(); err == nil {
				t.Error("Commit after a forced drain succeeded; the transaction must have been rolled back")
			}
			if n := r.count("SELECT count(*) FROM drain_rows"); n != 1 {
				t.Errorf("%d rows, want 1: the transaction that never ended must be rolled back", n)
			}
		})
	}
}

// TestDrainContextEnds: a graceful drain whose context ends before the
// timeout cancels the work in flight then.
func TestDrainContextEnds(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Timeout: 30 * time.Second, CheckInterval: 10 * time.Millisecond})
			r.table()
			blocked := r.startBlocked(false)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			st := waitStats(t, startDrain(ctx, r.d), 10*time.Second)
			t.Logf("stats: %+v", st)
			if !st.Escalated || st.Success || st.InFlightEnd != 0 {
				t.Errorf("want Escalated, not Success, InFlightEnd 0; got %+v", st)
			}
			if st.Took < 250*time.Millisecond || st.Took > 1500*time.Millisecond {
				t.Errorf("Took = %s, want about the context's 300ms, far below the 30s timeout", st.Took)
			}
			if err := <-blocked; err == nil {
				t.Error("the blocked statement should have been cancelled")
			}
		})
	}
}

// TestDrainImmediate: the pool is closed at once, without waiting for the
// transaction in flight.
func TestDrainImmediate(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect+"/idle", func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Mode: drain.Immediate, Timeout: 10 * time.Second})
			r.table()
			st := waitStats(t, startDrain(context.Background(), r.d), 2*time.Second)
			t.Logf("stats: %+v", st)
			if !st.Success || st.Mode != drain.Immediate || st.ConnectionsStart < 1 || st.ConnectionsEnd != 0 {
				t.Errorf("want a successful immediate drain from >= 1 connection to 0; got %+v", st)
			}
			r.assertClosed()
			r.assertRefused()
		})
		t.Run(dialect+"/transaction open", func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Mode: drain.Immediate, Timeout: 10 * time.Second})
			r.table()
			tx := r.begin()
			r.exec(tx, "INSERT INTO drain_rows (id, v) VALUES (2, 'open')")
			st := waitStats(t, startDrain(context.Background(), r.d), 2*time.Second)
			t.Logf("stats: %+v", st)
			if st.Success || st.Escalated || st.Mode != drain.Immediate || st.InFlightStart != 1 || st.InFlightEnd != 1 {
				t.Errorf("want an immediate drain, not Success (work was cut), InFlightStart 1, InFlightEnd 1; got %+v", st)
			}
			if st.Took > 500*time.Millisecond {
				t.Errorf("Took = %s; an immediate drain must not wait", st.Took)
			}
			r.assertClosed()
			r.assertRefused()
			// The transaction keeps its connection: its statements are not
			// refused and it may commit; its end is still counted and its
			// connection then closes.
			r.exec(tx, "INSERT INTO drain_rows (id, v) VALUES (3, 'after the drain')")
			if err := tx.Commit(); err != nil {
				t.Errorf("Commit of the transaction in flight after an immediate drain: %v", err)
			}
			if n := r.d.InFlight(); n != 0 {
				t.Errorf("InFlight() = %d after the commit, want 0", n)
			}
			if open := r.db.Pool().Stats().Open; open != 0 {
				t.Errorf("%d connection(s) open after the last transaction ended, want 0", open)
			}
			if n := r.count("SELECT count(*) FROM drain_rows"); n != 3 {
				t.Errorf("%d rows, want 3", n)
			}
		})
	}
}

// TestDrainForceBlockedOnLock: on PostgreSQL, a unit of work (shop.Pay)
// waits for a row lock another connection holds; a forced drain cancels
// it, returns within Timeout + 1s, and the order is unchanged.
func TestDrainForceBlockedOnLock(t *testing.T) {
	const timeout = 2 * time.Second
	r := newRig(t, testdb.Postgres, drain.Config{Mode: drain.Force, Timeout: timeout, CheckInterval: 10 * time.Millisecond})
	svc, _ := r.schema()
	ctx := context.Background()
	o, err := svc.Place(ctx, shop.PlaceOrder{Customer: "lock@example.com", Lines: []shop.Line{{SKU: "SKU-1", Quantity: 1, UnitPriceCents: 100}}}, "")
	if err != nil {
		t.Fatalf("Place: %v", err)
	}
	holder, err := r.checkDB().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	var id int
	if err := holder.QueryRowContext(ctx, "SELECT id FROM orders WHERE id = $1 FOR UPDATE", o.ID).Scan(&id); err != nil {
		t.Fatalf("locking the order: %v", err)
	}
	type result struct {
		err  error
		took time.Duration
	}
	paid := make(chan result, 1)
	payStart := time.Now()
	go func() {
		_, err := svc.Pay(ctx, o.ID)
		paid <- result{err, time.Since(payStart)}
	}()
	waitLockWait(t, r.checkDB(), r.appName)

	start := time.Now()
	st := waitStats(t, startDrain(ctx, r.d), timeout+10*time.Second)
	elapsed := time.Since(start)
	t.Logf("stats: %+v (Drain returned after %s)", st, elapsed.Round(time.Millisecond))
	if elapsed > timeout+time.Second {
		t.Errorf("a forced drain took %s, want at most Timeout + 1s = %s", elapsed, timeout+time.Second)
	}
	if st.Mode != drain.Force || st.Success || st.InFlightStart != 1 || st.InFlightEnd != 0 {
		t.Errorf("want a forced drain, not Success, InFlightStart 1, InFlightEnd 0 (the cancelled unit returned); got %+v", st)
	}
	select {
	case res := <-paid:
		t.Logf("Pay returned after %s: %v", res.took.Round(time.Millisecond), res.err)
		if res.err == nil {
			t.Error("Pay succeeded although its unit of work was cancelled")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Pay did not return after the forced drain")
	}
	if err := holder.Rollback(); err != nil {
		t.Fatalf("releasing the lock: %v", err)
	}
	var status string
	if err := r.checkDB().QueryRowContext(ctx, "SELECT status FROM orders WHERE id = $1", o.ID).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != shop.StatusPending {
		t.Errorf("order status = %q, want pending: the forced unit of work must roll back", status)
	}
	if n := r.count("SELECT count(*) FROM bento_outbox WHERE type = 'OrderPaid'"); n != 0 {
		t.Errorf("%d OrderPaid outbox rows, want 0", n)
	}
	waitNoConnections(t, r.checkDB(), r.appName)
}

// TestDrainForceIdle: with nothing in flight a forced drain returns at
// once; Success is false by definition of Force.
func TestDrainForceIdle(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Mode: drain.Force, Timeout: 10 * time.Second})
			r.table()
			st := waitStats(t, startDrain(context.Background(), r.d), 2*time.Second)
			t.Logf("stats: %+v", st)
			if st.Mode != drain.Force || st.Success || st.InFlightEnd != 0 || st.ConnectionsEnd != 0 || st.Took > time.Second {
				t.Errorf("want a quick forced drain to 0 connections, Success false; got %+v", st)
			}
			r.assertClosed()
		})
	}
}

// TestDrainRefusesUnitOfWork: a unit of work that starts while draining
// fails at once with ErrDraining, runs nothing and is not retried.
func TestDrainRefusesUnitOfWork(t *testing.T) {
	for _, dialect := range dialects {
		t.Run(dialect, func(t *testing.T) {
			r := newRig(t, dialect, drain.Config{Timeout: 10 * time.Second})
			svc, client := r.schema()
			ctx := context.Background()
			held := r.begin() // keeps the drain running
			drained := startDrain(ctx, r.d)
			waitDraining(t, r.d)
			start := time.Now()
			_, err := svc.Place(ctx, shop.PlaceOrder{Customer: "late@example.com", Lines: []shop.Line{{SKU: "S", Quantity: 1, UnitPriceCents: 1}}}, "key-1")
			took := time.Since(start)
			if !errors.Is(err, drain.ErrDraining) || resilience.IsRetryable(err) {
				t.Errorf("Place while draining: got %v (retryable %v), want ErrDraining, not retryable", err, resilience.IsRetryable(err))
			}
			if took > 200*time.Millisecond {
				t.Errorf("Place while draining took %s: ErrDraining must not be retried with backoff", took)
			}
			if _, err := svc.Get(ctx, 1); !errors.Is(err, drain.ErrDraining) {
				t.Errorf("Get while draining: got %v, want ErrDraining", err)
			}
			if _, err := client.Order.Query().Count(ctx); !errors.Is(err, drain.ErrDraining) {
				t.Errorf("a query through the ent client while draining: got %v, want ErrDraining", err)
			}
			if err := held.Rollback(); err != nil {
				t.Fatal(err)
			}
			st := waitStats(t, drained, 5*time.Second)
			if !st.Success || st.Rejected < 3 {
				t.Errorf("want Success with Rejected >= 3; got %+v", st)
			}
			if n := r.count("SELECT count(*) FROM orders"); n != 0 {
				t.Errorf("%d orders, want 0", n)
			}
		})
	}
}

// waitLockWait waits until a backend of the application waits for a lock.
func waitLockWait(t *testing.T, db *sql.DB, app string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		err := db.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", app).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no backend of the application waited for the lock within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitNoConnections waits until the application has no connection left.
func waitNoConnections(t *testing.T, db *sql.DB, app string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := db.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connection(s) of %s still open 10s after the drain", n, app)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
