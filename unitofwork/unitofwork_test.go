package unitofwork_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/faultconn"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
	"github.com/bento-go/bento/unitofwork"
)

// TestHappyPath: Do commits the order, its line and exactly one outbox row
// that a consumer can decode.
func TestHappyPath(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openEnv(t, cfg)
		ctx := context.Background()
		const customer = "happy@example.com"
		var placed *ent.Order
		err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			var err error
			placed, err = place(ctx, tx, customer)
			return err
		})
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		e.expectRows(customer, 1)
		if n := e.count("SELECT COUNT(*) FROM order_lines"); n != 1 {
			t.Fatalf("order lines = %d, want 1", n)
		}
		if o, ev := e.totals(); o != 1 || ev != 1 {
			t.Fatalf("totals: %d orders, %d outbox rows; want 1 and 1", o, ev)
		}

		var (
			typ, aggType, aggID, status string
			seq                         int64
			payload                     []byte
		)
		row := e.raw.QueryRowContext(ctx, e.sql("SELECT `type`, aggregatetype, aggregateid, `sequence`, status, payload FROM bento_outbox"))
		if err := row.Scan(&typ, &aggType, &aggID, &seq, &status, &payload); err != nil {
			t.Fatalf("reading the outbox row: %v", err)
		}
		want := [5]string{"OrderPlaced", "Order", strconv.Itoa(placed.ID), "1", outbox.StatusPending}
		got := [5]string{typ, aggType, aggID, strconv.FormatInt(seq, 10), status}
		if got != want {
			t.Fatalf("outbox row (type, aggregatetype, aggregateid, sequence, status) = %q, want %q", got, want)
		}
		ev, err := shop.Events().Decode(typ, payload)
		if err != nil {
			t.Fatalf("decoding the payload %s: %v", payload, err)
		}
		wantEv := shop.OrderPlaced{OrderID: placed.ID, Customer: customer, TotalCents: 2500,
			Lines: []shop.Line{{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}}}
		if !reflect.DeepEqual(ev, wantEv) {
			t.Fatalf("decoded payload = %#v, want %#v", ev, wantEv)
		}
	})
}

// TestEventIffCommitted: invariant — an event row exists if and only if
// the aggregate change that raised it committed. Every way a unit can fail
// after its write (an error, a panic, a cancelled context, a connection
// killed before COMMIT) leaves neither the order nor its event; the unit
// that is retried after a killed connection leaves exactly one of each.
// Each case counts the rows of its own customer.
func TestEventIffCommitted(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openEnv(t, cfg)
		ctx := context.Background()

		t.Run("error", func(t *testing.T) {
			const customer = "iff-error@example.com"
			boom := errors.New("boom")
			err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				if _, err := place(ctx, tx, customer); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Do returned %v, want the closure's error", err)
			}
			e.expectRows(customer, 0)
		})

		t.Run("panic", func(t *testing.T) {
			const customer = "iff-panic@example.com"
			type marker struct{ s string }
			want := &marker{"boom"}
			var got any
			func() {
				defer func() { got = recover() }()
				_ = e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
					if _, err := place(ctx, tx, customer); err != nil {
						return err
					}
					panic(want)
				})
			}()
			if got != want {
				t.Fatalf("recovered %#v, want the closure's panic value %#v", got, want)
			}
			e.expectRows(customer, 0)
			// The rolled-back transaction released its connection (and, on
			// SQLite, the write slot): the next unit commits.
			if err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				_, err := place(ctx, tx, "iff-after-panic@example.com")
				return err
			}); err != nil {
				t.Fatalf("Do after a panic: %v", err)
			}
			e.expectRows("iff-after-panic@example.com", 1)
		})

		t.Run("cancelled", func(t *testing.T) {
			const customer = "iff-cancel@example.com"
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			calls := 0
			err := e.uow.Do(cctx, func(ctx context.Context, tx *ent.Client) error {
				calls++
				if _, err := place(ctx, tx, customer); err != nil {
					return err
				}
				cancel()
				return nil
			})
			if err == nil {
				t.Fatal("Do returned nil although its context was cancelled before COMMIT")
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Do returned %v, want an error matching context.Canceled", err)
			}
			if calls != 1 {
				t.Errorf("closure ran %d times, want 1 (a cancelled caller is not retried)", calls)
			}
			e.expectRows(customer, 0)
		})

		if e.dialect == testdb.SQLite {
			return // an embedded database has no connection to kill
		}
		admin := testdb.Admin(t, e.dialect)

		t.Run("killed", func(t *testing.T) {
			const customer = "iff-killed@example.com"
			calls := 0
			err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				calls++
				if _, err := place(ctx, tx, customer); err != nil {
					return err
				}
				return killSession(ctx, t, e.dialect, admin, tx)
			}, unitofwork.NoRetry())
			if err == nil {
				t.Fatal("Do returned nil although its connection was killed before COMMIT")
			}
			if c := resilience.Classify(err); c != resilience.Connection && c != resilience.Ambiguous {
				t.Fatalf("Do returned a %s error, want connection or ambiguous: %v", c, err)
			}
			t.Logf("Do after the kill: %v", err)
			if calls != 1 {
				t.Fatalf("closure ran %d times with NoRetry", calls)
			}
			e.expectRows(customer, 0)
		})

		t.Run("killed-retried", func(t *testing.T) {
			const customer = "iff-killed-retried@example.com"
			calls := 0
			err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				calls++
				if _, err := place(ctx, tx, customer); err != nil {
					return err
				}
				if calls == 1 {
					return killSession(ctx, t, e.dialect, admin, tx)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("Do: %v (the unit should have been run again after the killed connection)", err)
			}
			if calls != 2 {
				t.Fatalf("closure ran %d times, want 2", calls)
			}
			e.expectRows(customer, 1)
		})
	})
}

// killSession finds the server session of the transaction behind tx and
// kills it from an admin connection, waiting until it is gone.
func killSession(ctx context.Context, t *testing.T, dialect string, admin *sql.DB, tx *ent.Client) error {
	t.Helper()
	switch dialect {
	case testdb.Postgres:
		pid, err := queryInt(ctx, tx, "SELECT pg_backend_pid()")
		if err != nil {
			return err
		}
		var ok bool
		if err := admin.QueryRowContext(ctx, "SELECT pg_terminate_backend($1, 5000)", pid).Scan(&ok); err != nil || !ok {
			t.Fatalf("pg_terminate_backend(%d) = %t, %v", pid, ok, err)
		}
	case testdb.MySQL:
		id, err := queryInt(ctx, tx, "SELECT CONNECTION_ID()")
		if err != nil {
			return err
		}
		if _, err := admin.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", id)); err != nil {
			t.Fatalf("KILL CONNECTION %d: %v", id, err)
		}
		// KILL only flags the thread; wait until the server lists it no more.
		deadline := time.Now().Add(5 * time.Second)
		for {
			var n int
			if err := admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", id).Scan(&n); err != nil {
				t.Fatalf("waiting for connection %d to end: %v", id, err)
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("connection %d still listed 5 s after KILL", id)
			}
			time.Sleep(5 * time.Millisecond)
		}
	default:
		t.Fatalf("killSession: %s has no session to kill", dialect)
	}
	return nil
}

// TestNestedDo: a Do inside another Do of the same unit of work joins the
// outer transaction, so the outer outcome decides for both.
func TestNestedDo(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openEnv(t, cfg)
		ctx := context.Background()

		t.Run("rolled back with the outer", func(t *testing.T) {
			const customer = "nested-rollback@example.com"
			boom := errors.New("outer fails after the inner committed nothing yet")
			var sameClient bool
			err := e.uow.Do(ctx, func(ctx context.Context, outer *ent.Client) error {
				if err := e.uow.Do(ctx, func(ctx context.Context, inner *ent.Client) error {
					sameClient = inner == outer
					_, err := place(ctx, inner, customer)
					return err
				}); err != nil {
					return fmt.Errorf("inner Do: %w", err)
				}
				// The inner write is visible in the outer transaction…
				if n, err := outer.Order.Query().Count(ctx); err != nil || n != 1 {
					return fmt.Errorf("outer sees %d orders (%v), want 1", n, err)
				}
				return boom // …and goes when it rolls back.
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Do returned %v, want the outer error", err)
			}
			if !sameClient {
				t.Error("the inner Do got another client than the outer transaction's")
			}
			e.expectRows(customer, 0)
		})

		t.Run("committed with the outer", func(t *testing.T) {
			const customer = "nested-commit@example.com"
			err := e.uow.Do(ctx, func(ctx context.Context, outer *ent.Client) error {
				return e.uow.Do(ctx, func(ctx context.Context, inner *ent.Client) error {
					_, err := place(ctx, inner, customer)
					return err
				})
			})
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			e.expectRows(customer, 1)
		})

		t.Run("options refused", func(t *testing.T) {
			ran := false
			err := e.uow.Do(ctx, func(ctx context.Context, outer *ent.Client) error {
				return e.uow.Do(ctx, func(ctx context.Context, inner *ent.Client) error {
					ran = true
					return nil
				}, unitofwork.ReadOnly())
			})
			if !errors.Is(err, unitofwork.ErrNestedOptions) {
				t.Fatalf("nested Do with options returned %v, want ErrNestedOptions", err)
			}
			if ran {
				t.Fatal("the nested closure ran although its options were refused")
			}
		})
	})
}

// placed is what the idempotent units return.
type placed struct {
	OrderID  int    `json:"order_id"`
	Customer string `json:"customer"`
}

// TestIdempotencyKey: invariant — however often and however concurrently
// a unit with an idempotency key runs, its change commits once and every
// caller gets the first outcome.
func TestIdempotencyKey(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openEnv(t, cfg)
		ctx := context.Background()
		// placeKeyed places an order for customer with opts, counting
		// the runs of the closure in calls.
		placeKeyed := func(customer string, calls *atomic.Int32, opts ...unitofwork.Option) (placed, error) {
			return unitofwork.DoValue(ctx, e.uow, func(ctx context.Context, tx *ent.Client) (placed, error) {
				calls.Add(1)
				o, err := place(ctx, tx, customer)
				if err != nil {
					return placed{}, err
				}
				return placed{OrderID: o.ID, Customer: customer}, nil
			}, opts...)
		}

		t.Run("sequential", func(t *testing.T) {
			const customer = "idem-seq@example.com"
			var calls atomic.Int32
			run := func() (placed, error) { return placeKeyed(customer, &calls, unitofwork.IdempotencyKey("seq-1")) }
			first, err := run()
			if err != nil {
				t.Fatalf("first DoValue: %v", err)
			}
			second, err := run()
			if err != nil {
				t.Fatalf("second DoValue: %v", err)
			}
			if first != second || first.OrderID == 0 {
				t.Fatalf("first returned %+v, second %+v: want the same, non-zero", first, second)
			}
			if n := calls.Load(); n != 1 {
				t.Fatalf("closure ran %d times, want 1", n)
			}
			e.expectRows(customer, 1)
			if n := e.count("SELECT COUNT(*) FROM bento_outbox_idempotency WHERE idempotency_key = ?", "seq-1"); n != 1 {
				t.Fatalf("idempotency rows = %d, want 1", n)
			}
		})

		t.Run("fingerprint", func(t *testing.T) {
			// The same key with another request's fingerprint applies
			// nothing and says so; with its own, or none, it replays.
			const customer = "idem-fp@example.com"
			var calls atomic.Int32
			run := func(opts ...unitofwork.Option) (placed, error) {
				return placeKeyed(customer, &calls, append([]unitofwork.Option{unitofwork.IdempotencyKey("fp-1")}, opts...)...)
			}
			first, err := run(unitofwork.IdempotencyFingerprint("aaaa"))
			if err != nil {
				t.Fatalf("first DoValue: %v", err)
			}
			if _, err := run(unitofwork.IdempotencyFingerprint("bbbb")); !errors.Is(err, unitofwork.ErrIdempotencyKeyReused) || !strings.Contains(err.Error(), `"fp-1"`) {
				t.Fatalf("same key, other fingerprint: %v; want ErrIdempotencyKeyReused naming the key", err)
			}
			for _, opts := range [][]unitofwork.Option{{unitofwork.IdempotencyFingerprint("aaaa")}, nil} {
				again, err := run(opts...)
				if err != nil || again != first {
					t.Fatalf("replay with %d options: %+v, %v; want %+v", len(opts), again, err, first)
				}
			}
			if n := calls.Load(); n != 1 {
				t.Fatalf("closure ran %d times, want 1", n)
			}
			e.expectRows(customer, 1)
			if _, err := run(unitofwork.IdempotencyFingerprint(strings.Repeat("f", 65))); err == nil || !strings.Contains(err.Error(), "at most 64") {
				t.Fatalf("a 65-character fingerprint: %v; want a clear error", err)
			}
			e.expectRows(customer, 1)
		})

		t.Run("concurrent", func(t *testing.T) {
			const customer = "idem-conc@example.com"
			// Both closures wait for each other (briefly: on SQLite the
			// second cannot begin before the first commits), so that on
			// the servers both run before either commits.
			var arrived sync.WaitGroup
			arrived.Add(2)
			both := make(chan struct{})
			go func() { arrived.Wait(); close(both) }()
			var once [2]sync.Once
			var calls atomic.Int32
			results := make([]placed, 2)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i], errs[i] = unitofwork.DoValue(ctx, e.uow, func(ctx context.Context, tx *ent.Client) (placed, error) {
						calls.Add(1)
						o, err := place(ctx, tx, customer)
						if err != nil {
							return placed{}, err
						}
						once[i].Do(arrived.Done)
						select {
						case <-both:
						case <-time.After(500 * time.Millisecond):
						}
						return placed{OrderID: o.ID, Customer: customer}, nil
					}, unitofwork.IdempotencyKey("conc-1"))
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("caller %d: %v", i, err)
				}
			}
			if results[0] != results[1] || results[0].OrderID == 0 {
				t.Fatalf("callers got %+v and %+v: want the same, non-zero", results[0], results[1])
			}
			t.Logf("closure ran %d times for 2 callers", calls.Load())
			e.expectRows(customer, 1)
			if got := e.count("SELECT id FROM orders WHERE customer = ?", customer); got != results[0].OrderID {
				t.Fatalf("the committed order is %d, the callers were told %d", got, results[0].OrderID)
			}
		})
	})
}

// TestAmbiguousCommit: invariant — a COMMIT whose reply is lost never
// produces a duplicate order: after Do returns, the customer has exactly
// one order if Do returned nil, and never two. PostgreSQL resolves the
// outcome with pg_xact_status, so no idempotency key is needed; MariaDB
// needs one, which the retry finds if the COMMIT took effect.
func TestAmbiguousCommit(t *testing.T) {
	type fault struct {
		dialect string
		mode    faultconn.Mode
		key     bool
		// wantNil: Do must return nil (the outcome is known to be a commit
		// or the retry commits).
		wantNil bool
		// wantUnknown: Do must return ErrCommitUnknown.
		wantUnknown bool
	}
	modeName := map[faultconn.Mode]string{faultconn.CutAfterCommit: "cut-after-commit", faultconn.DropCommit: "drop-commit"}
	for _, f := range []fault{
		{dialect: testdb.Postgres, mode: faultconn.CutAfterCommit, wantNil: true},
		{dialect: testdb.Postgres, mode: faultconn.DropCommit, wantNil: true},
		{dialect: testdb.MySQL, mode: faultconn.CutAfterCommit, key: true, wantNil: true},
		{dialect: testdb.MySQL, mode: faultconn.DropCommit, key: true, wantNil: true},
		// Without a key MariaDB cannot know: Do says so, and never retries.
		{dialect: testdb.MySQL, mode: faultconn.CutAfterCommit, wantUnknown: true},
	} {
		name := fmt.Sprintf("%s/%s/key=%t", f.dialect, modeName[f.mode], f.key)
		t.Run(name, func(t *testing.T) {
			var dialer faultconn.Dialer
			e := openEnv(t, testdb.Config(t, f.dialect), bento.WithDialer(dialer.DialContext))
			ctx := context.Background()
			customer := fmt.Sprintf("ambiguous-%s-%d@example.com", f.dialect, f.mode)
			var opts []unitofwork.Option
			if f.key {
				opts = append(opts, unitofwork.IdempotencyKey("ambiguous-1"))
			}
			calls := 0
			err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				calls++
				if _, err := place(ctx, tx, customer); err != nil {
					return err
				}
				if calls == 1 {
					dialer.Arm(f.mode) // the last step: the next COMMIT is the unit's
				}
				return nil
			}, opts...)
			if dialer.Fired() != 1 {
				t.Fatalf("the fault fired %d times, want 1", dialer.Fired())
			}
			n := e.orders(customer)
			t.Logf("Do ran the closure %d times and returned %v; %d orders", calls, err, n)
			switch {
			case n > 1:
				t.Fatalf("%d orders: an ambiguous commit was applied twice", n)
			case err == nil && n != 1:
				t.Fatalf("Do returned nil but there are %d orders", n)
			case f.wantNil && err != nil:
				t.Fatalf("Do returned %v, want nil", err)
			case f.wantUnknown && !errors.Is(err, resilience.ErrCommitUnknown):
				t.Fatalf("Do returned %v, want ErrCommitUnknown", err)
			}
			if f.wantUnknown && calls != 1 {
				t.Fatalf("an unknown COMMIT outcome was retried blind: closure ran %d times", calls)
			}
			if ev := e.events(customer); ev != n {
				t.Fatalf("%d orders but %d outbox rows", n, ev)
			}
		})
	}
}

// TestOptions: read-only, isolation and timeout.
func TestOptions(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openEnv(t, cfg)
		ctx := context.Background()

		t.Run("read-only", func(t *testing.T) {
			const customer = "readonly@example.com"
			calls := 0
			var seen int
			err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				calls++
				var err error
				if seen, err = tx.Order.Query().Count(ctx); err != nil {
					return fmt.Errorf("a read in a read-only unit failed: %w", err)
				}
				_, err = place(ctx, tx, customer)
				return err
			}, unitofwork.ReadOnly())
			if err == nil {
				t.Fatal("a write in a read-only unit of work committed")
			}
			t.Logf("write refused: %s: %v (after reading %d orders)", resilience.Classify(err), err, seen)
			if calls != 1 {
				t.Fatalf("closure ran %d times: a read-only violation is not worth a retry", calls)
			}
			e.expectRows(customer, 0)
		})

		t.Run("timeout", func(t *testing.T) {
			const customer = "timeout@example.com"
			start := time.Now()
			err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
				if _, err := place(ctx, tx, customer); err != nil {
					return err
				}
				time.Sleep(300 * time.Millisecond)
				return nil
			}, unitofwork.Timeout(100*time.Millisecond))
			if err == nil {
				t.Fatal("a unit that outlived its timeout committed")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Do returned %v, want an error matching context.DeadlineExceeded", err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("Do took %s: a timed-out unit must not be retried", took)
			}
			e.expectRows(customer, 0)
		})

		if e.dialect != testdb.Postgres {
			return // SHOW transaction_isolation reports the level on PostgreSQL
		}
		t.Run("isolation", func(t *testing.T) {
			for _, c := range []struct {
				opts []unitofwork.Option
				want string
			}{
				{nil, "read committed"},
				{[]unitofwork.Option{unitofwork.Isolation(sql.LevelSerializable)}, "serializable"},
				{[]unitofwork.Option{unitofwork.Isolation(sql.LevelRepeatableRead), unitofwork.ReadOnly()}, "repeatable read"},
			} {
				var level, ro string
				err := e.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
					var err error
					if level, err = queryString(ctx, tx, "SHOW transaction_isolation"); err != nil {
						return err
					}
					ro, err = queryString(ctx, tx, "SHOW transaction_read_only")
					return err
				}, c.opts...)
				if err != nil {
					t.Fatalf("Do: %v", err)
				}
				if level != c.want {
					t.Errorf("transaction_isolation = %q, want %q", level, c.want)
				}
				if wantRO := map[bool]string{true: "on", false: "off"}[len(c.opts) == 2]; ro != wantRO {
					t.Errorf("transaction_read_only = %q, want %q", ro, wantRO)
				}
			}
		})
	})
}

// TestFakePort: application code depends on unitofwork.Port, so a test of
// its logic can run it with a fake that opens no transaction at all.
func TestFakePort(t *testing.T) {
	ctx := context.Background()
	var (
		calls    int
		lastOpts int
		client   *ent.Client // what the fake hands the closure: nil, or a plain client
		result   error       // what the fake returns instead of running the closure
	)
	fake := unitofwork.Func[*ent.Client](func(ctx context.Context, fn func(context.Context, *ent.Client) error, opts ...unitofwork.Option) error {
		calls++
		lastOpts = len(opts)
		if result != nil {
			return result
		}
		return fn(ctx, client)
	})
	svc := shop.NewService(fake, nil)

	t.Run("validation never reaches the port", func(t *testing.T) {
		calls = 0
		_, err := svc.Place(ctx, shop.PlaceOrder{Customer: "not an address", Lines: []shop.Line{{SKU: "A", Quantity: 1}}}, "")
		var ve *shop.ValidationError
		if !errors.As(err, &ve) || ve.Field != "customer" {
			t.Fatalf("Place returned %v, want a ValidationError on customer", err)
		}
		if calls != 0 {
			t.Fatalf("the port was called %d times for an invalid command", calls)
		}
	})

	t.Run("the key becomes options", func(t *testing.T) {
		calls, result = 0, errors.New("stop here")
		defer func() { result = nil }()
		cmd := shop.PlaceOrder{Customer: "a@example.com", Lines: []shop.Line{{SKU: "A", Quantity: 1, UnitPriceCents: 5}}}
		if _, err := svc.Place(ctx, cmd, "k-1"); !errors.Is(err, result) {
			t.Fatalf("Place returned %v, want the port's error", err)
		}
		if calls != 1 || lastOpts != 2 {
			t.Fatalf("with a key: %d calls with %d options, want 1 call with 2 (the key and the order's fingerprint)", calls, lastOpts)
		}
		_, _ = svc.Place(ctx, cmd, "")
		if lastOpts != 0 {
			t.Fatalf("without a key the port got %d options, want 0", lastOpts)
		}
	})

	t.Run("a conflict from the port reaches the caller", func(t *testing.T) {
		conflict := &resilience.Error{Category: resilience.Transient, Code: "version_conflict", Err: errors.New("stale")}
		result = conflict
		defer func() { result = nil }()
		if _, err := svc.Pay(ctx, 1); !errors.Is(err, conflict) {
			t.Fatalf("Pay returned %v, want the port's error", err)
		}
	})

	t.Run("transitions on a plain client", func(t *testing.T) {
		// A plain client, outside any transaction: the fake runs the
		// closure on it directly.
		e := openEnv(t, testdb.Config(t, testdb.SQLite))
		client = e.client
		defer func() { client = nil }()
		paid, err := e.client.Order.Create().SetCustomer("fake@example.com").SetTotalCents(1).SetStatus("paid").Save(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var te *shop.TransitionError
		if _, err := svc.Cancel(ctx, paid.ID); !errors.As(err, &te) || te.From != shop.StatusPaid || te.To != shop.StatusCancelled {
			t.Fatalf("Cancel of a paid order returned %v, want a TransitionError paid → cancelled", err)
		}
		if _, err := svc.Pay(ctx, paid.ID+1000); !errors.Is(err, shop.ErrNotFound) {
			t.Fatalf("Pay of a missing order returned %v, want ErrNotFound", err)
		}
		// Past validation, the closure's event needs a real unit of work:
		// the fake has none, and the write path says so.
		cmd := shop.PlaceOrder{Customer: "fake@example.com", Lines: []shop.Line{{SKU: "A", Quantity: 1, UnitPriceCents: 5}}}
		if _, err := svc.Place(ctx, cmd, ""); !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Fatalf("Place through a fake port returned %v, want outbox.ErrNoUnitOfWork", err)
		}
	})
}

// stockError is an application error type, for errors.As.
type stockError struct{ sku string }

func (e *stockError) Error() string { return "out of stock: " + e.sku }

// TestFailedUnitReturnsUsersError: a unit of work whose fn fails returns
// fn's error itself, not a wrapper of it: == holds, errors.Unwrap gives
// what it gives on fn's error, errors.Is and errors.As find what fn put in
// it, and the text is fn's. (Do returned errors.Join(err, rollbackErr),
// whose Unwrap is nil.) The work is rolled back.
func TestFailedUnitReturnsUsersError(t *testing.T) {
	errOutOfStock := errors.New("out of stock")
	typed := &stockError{sku: "tea"}
	wrapped := fmt.Errorf("checking stock: %w", errOutOfStock)
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		e := openEnv(t, cfg)
		for _, userErr := range []error{errOutOfStock, typed, wrapped} {
			customer := "failed-" + userErr.Error() + "@example.com"
			err := e.uow.Do(context.Background(), func(ctx context.Context, tx *ent.Client) error {
				if _, err := place(ctx, tx, customer); err != nil {
					return err
				}
				return userErr
			})
			if err != userErr {
				t.Errorf("Do returned %#v (%v), want fn's error itself %#v", err, err, userErr)
			}
			if errors.Unwrap(err) != errors.Unwrap(userErr) {
				t.Errorf("errors.Unwrap(Do's error) = %v, want %v", errors.Unwrap(err), errors.Unwrap(userErr))
			}
			if !errors.Is(err, userErr) || (userErr == wrapped && !errors.Is(err, errOutOfStock)) {
				t.Errorf("errors.Is does not find fn's error in %v", err)
			}
			var se *stockError
			if errors.As(userErr, &se) && (!errors.As(err, &se) || se != typed) {
				t.Errorf("errors.As does not find fn's *stockError in %v", err)
			}
			if err != nil && err.Error() != userErr.Error() {
				t.Errorf("Do's error says %q, fn's said %q", err, userErr)
			}
			if n := e.orders(customer); n != 0 {
				t.Errorf("%d orders after a failed unit of work, want 0 (rolled back)", n)
			}
		}
	})
}
