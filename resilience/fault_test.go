package resilience_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/internal/faultconn"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/resilience"
)

// openPG opens a migrated PostgreSQL test database through Bento with a
// unique application_name, so a fault injector can find its connections.
func openPG(t *testing.T, opts ...bento.Option) (*bento.DB, *ent.Client, string, *sql.DB) {
	t.Helper()
	cfg := testdb.Config(t, testdb.Postgres)
	app := fmt.Sprintf("bt_fault_%d", time.Now().UnixNano())
	cfg.DB.ApplicationName = app
	db, err := bento.Open(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(context.Background(), migrate.Tables...); err != nil {
		t.Fatal(err)
	}
	return db, ent.NewClient(ent.Driver(db.Driver())), app, testdb.Admin(t, testdb.Postgres)
}

// terminator kills every backend of application app every interval until
// stop is closed; it returns how many it killed.
func terminator(t *testing.T, admin *sql.DB, app string, interval time.Duration, stop <-chan struct{}) *atomic.Int64 {
	var killed atomic.Int64
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var n int64
			err := admin.QueryRow(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name = $1 AND pid <> pg_backend_pid()`, app).Scan(&n)
			if err == nil {
				killed.Add(n)
			}
		}
	}()
	return &killed
}

// TestReadsSurviveTerminatedConnections: invariant — while the server
// terminates the pool's connections every 10 ms, reads outside a
// transaction return no error to the caller: each is retried on a new
// connection, by the driver when the statement fails and by the ReadRetry
// interceptor when the connection is lost while rows are read.
func TestReadsSurviveTerminatedConnections(t *testing.T) {
	// The fault is continuous for 3 s: the retry budget must outlast the
	// time a read may keep finding its new connection killed on a loaded
	// machine, so it is sized for the fault (attempts every ≤100 ms for up
	// to 10 s), as a service facing such a fault would size it.
	policy := resilience.Policy{MaxAttempts: 100, BaseDelay: 5 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		JitterPercent: 50, MaxElapsed: 10 * time.Second}
	_, client, app, admin := openPG(t, bento.WithResilience(resilience.Options{Policy: policy}))
	client.Intercept(resilience.ReadRetry(policy))
	ctx := context.Background()
	seed := client.Order.Create().SetCustomer("seed@example.com").SetTotalCents(1).SaveX(ctx)

	stop := make(chan struct{})
	killed := terminator(t, admin, app, 10*time.Millisecond, stop)
	var reads, failures atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Second)
	// The fault ends at the deadline, when the readers stop starting
	// reads: a read begun just before it must outlast what is left of the
	// fault, not a fault that lasts until every read has given up.
	fault := time.AfterFunc(time.Until(deadline), func() { close(stop) })
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				o, err := client.Order.Get(ctx, seed.ID)
				if err == nil && o.Customer != "seed@example.com" {
					err = fmt.Errorf("read back %q", o.Customer)
				}
				if err != nil {
					failures.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
				reads.Add(1)
			}
		}()
	}
	wg.Wait()
	if fault.Stop() {
		close(stop)
	}
	t.Logf("%d reads, %d backends terminated", reads.Load(), killed.Load())
	if killed.Load() < 10 {
		t.Fatalf("only %d backends were terminated: the fault did not happen", killed.Load())
	}
	if failures.Load() > 0 {
		t.Fatalf("%d of %d reads failed; first: %v", failures.Load(), reads.Load(), firstErr)
	}
}

// TestWritesNeverAppliedTwice: invariant — under the same fault, a write
// outside a transaction is applied at most once, and a write that returned
// no error is applied exactly once. Writes that fail report a classified
// error (ambiguous or connection), never a silent duplicate.
func TestWritesNeverAppliedTwice(t *testing.T) {
	_, client, app, admin := openPG(t)
	ctx := context.Background()
	stop := make(chan struct{})
	killed := terminator(t, admin, app, 5*time.Millisecond, stop)
	const writers, each = 4, 150
	acked := make([][]bool, writers)
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		acked[w] = make([]bool, each)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := client.Order.Create().SetCustomer(fmt.Sprintf("w%d-%d@example.com", w, i)).SetTotalCents(1).Save(ctx)
				if err == nil {
					acked[w][i] = true
					continue
				}
				failed.Add(1)
				switch c := resilience.Classify(err); c {
				case resilience.Ambiguous, resilience.Connection:
				default:
					t.Errorf("write failed with category %s, want ambiguous or connection: %v", c, err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if killed.Load() < 10 {
		t.Fatalf("only %d backends were terminated: the fault did not happen", killed.Load())
	}
	var rows []struct {
		Customer string `json:"customer"`
		Count    int    `json:"count"`
	}
	if err := client.Order.Query().GroupBy(order.FieldCustomer).Aggregate(ent.Count()).Scan(ctx, &rows); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range rows {
		count[r.Customer] = r.Count
	}
	for w := 0; w < writers; w++ {
		for i := 0; i < each; i++ {
			key := fmt.Sprintf("w%d-%d@example.com", w, i)
			switch n := count[key]; {
			case n > 1:
				t.Errorf("%s applied %d times", key, n)
			case acked[w][i] && n != 1:
				t.Errorf("%s was acknowledged but has %d rows", key, n)
			}
		}
	}
	t.Logf("%d writes, %d failed (classified), %d backends terminated", writers*each, failed.Load(), killed.Load())
}

// TestAmbiguousCommitResolved: a COMMIT whose connection is cut after it
// was sent is ambiguous; on PostgreSQL the driver resolves it with
// pg_xact_status. Invariant: Commit returns nil exactly when the row is
// committed, and the unresolved case reports ErrCommitUnknown.
func TestAmbiguousCommitResolved(t *testing.T) {
	var dialer faultconn.Dialer
	db, client, _, _ := openPG(t, bento.WithDialer(dialer.DialContext))
	ctx := context.Background()

	commit := func(customer string, mode faultconn.Mode) error {
		t.Helper()
		tx, err := client.Tx(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Order.Create().SetCustomer(customer).SetTotalCents(1).Save(ctx); err != nil {
			t.Fatal(err)
		}
		dialer.Arm(mode)
		err = tx.Commit()
		if dialer.Fired() != 1 {
			t.Fatalf("the fault did not fire")
		}
		return err
	}
	rowsOf := func(customer string) int {
		return client.Order.Query().Where(order.Customer(customer)).CountX(ctx)
	}

	t.Run("committed", func(t *testing.T) {
		err := commit("cut-after@example.com", faultconn.CutAfterCommit)
		if err != nil {
			t.Fatalf("COMMIT reached the server and committed, but Commit returned %v", err)
		}
		if n := rowsOf("cut-after@example.com"); n != 1 {
			t.Fatalf("rows = %d, want 1", n)
		}
	})
	t.Run("aborted", func(t *testing.T) {
		err := commit("dropped@example.com", faultconn.DropCommit)
		if err == nil {
			t.Fatal("COMMIT never reached the server, but Commit returned nil")
		}
		if !resilience.IsRetryable(err) || errors.Is(err, resilience.ErrCommitUnknown) {
			t.Fatalf("a resolved abort must be retryable and not unknown: %s: %v", resilience.Classify(err), err)
		}
		if n := rowsOf("dropped@example.com"); n != 0 {
			t.Fatalf("rows = %d, want 0", n)
		}
	})
	t.Run("unresolved", func(t *testing.T) {
		var d2 faultconn.Dialer
		cfg := db.Config()
		db2, err := bento.Open(cfg, bento.WithDialer(d2.DialContext), bento.WithResilience(resilience.Options{ResolveTimeout: -1}))
		if err != nil {
			t.Fatal(err)
		}
		defer db2.Close()
		c2 := ent.NewClient(ent.Driver(db2.Driver()))
		tx, err := c2.Tx(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tx.Order.Create().SetCustomer("unresolved@example.com").SetTotalCents(1).SaveX(ctx)
		d2.Arm(faultconn.CutAfterCommit)
		err = tx.Commit()
		if !errors.Is(err, resilience.ErrCommitUnknown) || resilience.Classify(err) != resilience.Ambiguous || resilience.IsRetryable(err) {
			t.Fatalf("unresolved cut commit: %s, retryable=%t: %v", resilience.Classify(err), resilience.IsRetryable(err), err)
		}

		// The same with a statement sent with the COMMIT (Tx.DeferExec, as
		// the outbox does): the statement's error and the COMMIT's are one
		// failure, and its text says "ambiguous error ... in commit" once.
		slot := &driver.TxSlot{}
		tx, err = c2.BeginTx(driver.WithTxSlot(ctx, slot), nil)
		if err != nil {
			t.Fatal(err)
		}
		tx.Order.Create().SetCustomer("unresolved-deferred@example.com").SetTotalCents(1).SaveX(ctx)
		if err := slot.Tx.DeferExec("SELECT 1"); err != nil {
			t.Fatal(err)
		}
		d2.Arm(faultconn.CutAfterCommit)
		err = tx.Commit()
		if !errors.Is(err, resilience.ErrCommitUnknown) || resilience.Classify(err) != resilience.Ambiguous {
			t.Fatalf("unresolved cut commit with a deferred statement: %s: %v", resilience.Classify(err), err)
		}
		if n := strings.Count(err.Error(), "error in commit") + strings.Count(err.Error(), "] in commit"); n != 1 {
			t.Fatalf("the error names the failed commit %d times, want once: %v", n, err)
		}
	})
}

// TestAmbiguousCommitOneRoundTrip: a transaction sent whole with its
// COMMIT (writes deferred, the order's id taken beforehand) does not read
// its transaction id, which a COMMIT cut after sending would lose with
// its answer anyway; the row it inserted (CommitEvidence) resolves it
// once its server process has ended. Invariant: Commit
// returns nil exactly when the row is committed, counted in the table;
// without evidence the outcome is reported unknown (ErrCommitUnknown),
// never guessed.
func TestAmbiguousCommitOneRoundTrip(t *testing.T) {
	var dialer faultconn.Dialer
	db, client, _, _ := openPG(t, bento.WithDialer(dialer.DialContext))
	ctx := context.Background()
	blocks := ids.New(db.Driver(), db.Dialect(), 10)
	commit := func(customer string, mode faultconn.Mode, evidence bool) error {
		t.Helper()
		id, err := blocks.Take(ctx, order.Table, 1)
		if err != nil {
			t.Fatal(err)
		}
		slot := &driver.TxSlot{}
		tx, err := client.BeginTx(driver.WithDeferredWrites(driver.WithTxSlot(ctx, slot)), nil)
		if err != nil {
			t.Fatal(err)
		}
		tx.Order.Create().SetID(id[0]).SetCustomer(customer).SetTotalCents(1).SaveX(ctx)
		if evidence {
			resilience.SetCommitEvidence(slot.Tx, resilience.CommitEvidence{Table: order.Table, Column: order.FieldID, Value: id[0]})
		}
		dialer.Arm(mode)
		err = tx.Commit()
		if dialer.Fired() != 1 {
			t.Fatalf("the fault did not fire")
		}
		if xid := resilience.TxID(slot.Tx); xid != "" {
			t.Fatalf("the transaction id %s reached the client: the COMMIT was not sent in the first round trip", xid)
		}
		return err
	}
	rowsOf := func(customer string) int {
		return client.Order.Query().Where(order.Customer(customer)).CountX(ctx)
	}

	t.Run("committed", func(t *testing.T) {
		if err := commit("one-rt-cut@example.com", faultconn.CutAfterCommit, true); err != nil {
			t.Fatalf("COMMIT reached the server and committed, but Commit returned %v", err)
		}
		if n := rowsOf("one-rt-cut@example.com"); n != 1 {
			t.Fatalf("rows = %d, want 1", n)
		}
	})
	t.Run("aborted", func(t *testing.T) {
		err := commit("one-rt-dropped@example.com", faultconn.DropCommit, true)
		if err == nil {
			t.Fatal("COMMIT never reached the server, but Commit returned nil")
		}
		if !resilience.IsRetryable(err) || errors.Is(err, resilience.ErrCommitUnknown) {
			t.Fatalf("a resolved abort must be retryable and not unknown: %s: %v", resilience.Classify(err), err)
		}
		if n := rowsOf("one-rt-dropped@example.com"); n != 0 {
			t.Fatalf("rows = %d, want 0", n)
		}
	})
	t.Run("no evidence", func(t *testing.T) {
		err := commit("one-rt-unknown@example.com", faultconn.CutAfterCommit, false)
		if !errors.Is(err, resilience.ErrCommitUnknown) || resilience.IsRetryable(err) {
			t.Fatalf("a cut COMMIT without its transaction id or evidence: %s, retryable=%t: %v", resilience.Classify(err), resilience.IsRetryable(err), err)
		}
		if n := rowsOf("one-rt-unknown@example.com"); n != 1 {
			t.Fatalf("rows = %d, want 1 (the server committed)", n)
		}
	})
}
