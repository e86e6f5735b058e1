package aggregate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/aggregate"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// open opens and migrates a test database; the client has no hooks yet.
func open(t *testing.T, cfg config.Config) (*bento.DB, *ent.Client) {
	t.Helper()
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(context.Background(), migrate.Tables...); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return db, ent.NewClient(ent.Driver(db.Driver()))
}

// rebind turns ? placeholders into $n on PostgreSQL and `quotes` into
// "quotes" outside MySQL.
func rebind(dialect, q string) string {
	if dialect == testdb.MySQL {
		return q
	}
	out := make([]byte, 0, len(q)+8)
	n := 0
	for i := 0; i < len(q); i++ {
		switch {
		case q[i] == '`':
			out = append(out, '"')
		case q[i] == '?' && dialect == testdb.Postgres:
			n++
			out = append(out, '$')
			out = strconv.AppendInt(out, int64(n), 10)
		default:
			out = append(out, q[i])
		}
	}
	return string(out)
}

// count runs a one-integer query on the raw pool, past Bento's layers.
func count(t *testing.T, db *bento.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Driver().DB().QueryRow(rebind(db.Dialect(), q), args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// row reads an order's version, total and status on the raw pool.
func row(t *testing.T, db *bento.DB, id int) (version, total int64, status string) {
	t.Helper()
	err := db.Driver().DB().QueryRow(rebind(db.Dialect(), "SELECT version, total_cents, status FROM orders WHERE id = ?"), id).
		Scan(&version, &total, &status)
	if err != nil {
		t.Fatalf("reading order %d: %v", id, err)
	}
	return version, total, status
}

func expectConflict(t *testing.T, err error, id int, stale int64) {
	t.Helper()
	if !errors.Is(err, aggregate.ErrConflict) {
		t.Fatalf("got %v, want an error matching aggregate.ErrConflict", err)
	}
	if c := resilience.Classify(err); c != resilience.Transient || !resilience.IsRetryable(err) {
		t.Fatalf("a conflict is classified %s (retryable %t), want transient and retryable", c, resilience.IsRetryable(err))
	}
	var ce *aggregate.ConflictError
	if !errors.As(err, &ce) || ce.Type != "Order" || ce.ID != strconv.Itoa(id) || ce.Version != stale {
		t.Fatalf("ConflictError = %+v, want Order %d at stale version %d", ce, id, stale)
	}
}

// TestVersionConflict: invariant — an update of a stale read never
// applies: it fails with a transient ConflictError, and inside a unit of
// work the whole unit runs again on a fresh read and applies once.
func TestVersionConflict(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		db, client := open(t, cfg)
		uow := ent.NewUnitOfWork(client) // registers the aggregate hooks
		ctx := context.Background()
		created, err := client.Order.Create().SetCustomer("v@example.com").SetTotalCents(100).Save(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if created.Version != 1 {
			t.Fatalf("a new order has version %d, want 1", created.Version)
		}
		o1 := client.Order.GetX(ctx, created.ID)
		o2 := client.Order.GetX(ctx, created.ID)

		u1, err := client.Order.UpdateOne(o1).SetStatus(order.StatusPaid).Save(ctx)
		if err != nil {
			t.Fatalf("the first update: %v", err)
		}
		if u1.Version != 2 {
			t.Fatalf("UpdateOne returned version %d, want 2", u1.Version)
		}

		_, err = client.Order.UpdateOne(o2).SetTotalCents(999).Save(ctx)
		expectConflict(t, err, created.ID, 1)
		if v, total, status := row(t, db, created.ID); v != 2 || total != 100 || status != "paid" {
			t.Fatalf("after the refused update: version %d, total %d, status %s; want 2, 100, paid", v, total, status)
		}

		// The same stale read inside a unit of work: the first attempt
		// uses it and conflicts, the second reads afresh.
		attempts := 0
		err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			attempts++
			target := o2
			if attempts > 1 {
				var err error
				if target, err = tx.Order.Get(ctx, created.ID); err != nil {
					return err
				}
			}
			_, err := tx.Order.UpdateOne(target).SetTotalCents(999).Save(ctx)
			return err
		})
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		if attempts != 2 {
			t.Fatalf("the unit ran %d times, want 2 (a conflict, then a fresh read)", attempts)
		}
		if v, total, _ := row(t, db, created.ID); v != 3 || total != 999 {
			t.Fatalf("after the retried unit: version %d, total %d; want 3, 999", v, total)
		}

		// UpdateOneID reads the version itself.
		if _, err := client.Order.UpdateOneID(created.ID).SetTotalCents(7).Save(ctx); err != nil {
			t.Fatalf("UpdateOneID: %v", err)
		}
		// An explicit version skips the check.
		if _, err := client.Order.UpdateOne(o2).SetVersion(42).Save(ctx); err != nil {
			t.Fatalf("UpdateOne with an explicit version: %v", err)
		}
		if v, total, _ := row(t, db, created.ID); v != 42 || total != 7 {
			t.Fatalf("version %d, total %d; want 42, 7", v, total)
		}
	})
}

// TestConflictWithinSnapshot: invariant — a row another transaction
// changed and committed after this unit read it is never overwritten
// (no lost update), whatever the isolation level: the unit's update fails
// with a conflict, and the retried unit applies on top of the other
// change. MariaDB's REPEATABLE READ is the hard case: the UPDATE matches
// nothing, but reads in the transaction still see the old version.
// SQLite writes one transaction at a time, so it cannot interleave so.
func TestConflictWithinSnapshot(t *testing.T) {
	for _, dialect := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(dialect, func(t *testing.T) {
			db, client := open(t, testdb.Config(t, dialect))
			uow := ent.NewUnitOfWork(client)
			ctx := context.Background()
			o := client.Order.Create().SetCustomer("snap@example.com").SetTotalCents(0).SaveX(ctx)

			// bump is the unit: read, let another transaction commit an
			// increment (first attempt only), then increment.
			bump := func(opts ...unitofwork.Option) (int, error) {
				attempts := 0
				err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
					attempts++
					cur, err := tx.Order.Get(ctx, o.ID)
					if err != nil {
						return err
					}
					if attempts == 1 {
						if _, err := client.Order.UpdateOneID(o.ID).AddTotalCents(1).Save(ctx); err != nil {
							return fmt.Errorf("the concurrent update: %w", err)
						}
					}
					_, err = tx.Order.UpdateOne(cur).AddTotalCents(1).Save(ctx)
					return err
				}, opts...)
				return attempts, err
			}

			_, err := bump(unitofwork.NoRetry())
			expectConflict(t, err, o.ID, 1)
			if v, total, _ := row(t, db, o.ID); v != 2 || total != 1 {
				t.Fatalf("after a conflicting unit: version %d, total %d; want 2, 1 (only the other transaction's)", v, total)
			}

			attempts, err := bump()
			if err != nil {
				t.Fatalf("retried unit: %v", err)
			}
			if attempts != 2 {
				t.Fatalf("the unit ran %d times, want 2", attempts)
			}
			if v, total, _ := row(t, db, o.ID); v != 4 || total != 3 {
				t.Fatalf("after the retried unit: version %d, total %d; want 4, 3 (every increment applied once)", v, total)
			}
		})
	}
}

// TestBulkUpdateBumpsVersions: a bulk update increments the version of
// every row it changes and of no other.
func TestBulkUpdateBumpsVersions(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		db, client := open(t, cfg)
		uow := ent.NewUnitOfWork(client)
		ctx := context.Background()
		var xs []int
		for range 3 {
			xs = append(xs, client.Order.Create().SetCustomer("x@example.com").SetTotalCents(1).SaveX(ctx).ID)
		}
		y := client.Order.Create().SetCustomer("y@example.com").SetTotalCents(1).SaveX(ctx).ID

		n, err := client.Order.Update().Where(order.Customer("x@example.com")).SetStatus(order.StatusPaid).Save(ctx)
		if err != nil || n != 3 {
			t.Fatalf("bulk update: %d rows, %v; want 3", n, err)
		}
		err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			_, err := tx.Order.Update().Where(order.Customer("x@example.com")).AddTotalCents(1).Save(ctx)
			return err
		})
		if err != nil {
			t.Fatalf("bulk update in a unit of work: %v", err)
		}
		for _, id := range xs {
			if v, total, status := row(t, db, id); v != 3 || total != 2 || status != "paid" {
				t.Errorf("order %d: version %d, total %d, status %s; want 3, 2, paid", id, v, total, status)
			}
		}
		if v, _, status := row(t, db, y); v != 1 || status != "pending" {
			t.Errorf("the order outside the predicate: version %d, status %s; want 1, pending", v, status)
		}
		if n := count(t, db, "SELECT COUNT(*) FROM orders WHERE version = 3"); n != 3 {
			t.Errorf("%d orders at version 3, want 3", n)
		}
	})
}

// event is one outbox row as the AutoEvents test reads it.
type event struct {
	Type, AggregateID string
	Sequence          int64
	Payload           struct {
		ID      string          `json:"id"`
		Fields  map[string]any  `json:"fields"`
		Added   map[string]any  `json:"added"`
		Cleared []string        `json:"cleared"`
		Raw     json.RawMessage `json:"-"`
	}
}

func events(t *testing.T, db *bento.DB) []event {
	t.Helper()
	col := "payload"
	if db.Dialect() == testdb.Postgres {
		col = "payload::text"
	}
	rows, err := db.Driver().DB().Query(rebind(db.Dialect(),
		"SELECT `type`, aggregateid, `sequence`, "+col+" FROM bento_outbox WHERE aggregatetype = 'Order' ORDER BY aggregateid, `sequence`"))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []event
	for rows.Next() {
		var e event
		var payload []byte
		if err := rows.Scan(&e.Type, &e.AggregateID, &e.Sequence, &payload); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(payload, &e.Payload); err != nil {
			t.Fatalf("payload %s: %v", payload, err)
		}
		e.Payload.Raw = payload
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAutoEvents: with AutoEvents, every create, update (one or bulk) and
// delete of an aggregate records <Type>Created/Updated/Deleted, one per
// affected aggregate, with what changed. Invariant: such a mutation
// outside a unit of work fails with outbox.ErrNoUnitOfWork and changes
// nothing — a change without its event must never commit.
func TestAutoEvents(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		db, client := open(t, cfg)
		specs := ent.AggregateSpecs()
		for i := range specs {
			specs[i].AutoEvents = true
		}
		client.Use(aggregate.Hooks(specs...)...)
		uow := unitofwork.New[*ent.Client, *ent.Tx](client.BeginTx)
		ctx := context.Background()

		var a, b, c int
		err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
			ids := make([]int, 3)
			for i, name := range []string{"a", "b", "c"} {
				o, err := tx.Order.Create().SetCustomer(name + "@example.com").SetTotalCents(10).Save(ctx)
				if err != nil {
					return err
				}
				ids[i] = o.ID
			}
			a, b, c = ids[0], ids[1], ids[2]
			oa, err := tx.Order.Get(ctx, a)
			if err != nil {
				return err
			}
			if oa, err = tx.Order.UpdateOne(oa).SetStatus(order.StatusPaid).Save(ctx); err != nil {
				return err
			}
			if _, err = tx.Order.UpdateOne(oa).AddTotalCents(5).ClearMetadata().Save(ctx); err != nil {
				return err
			}
			n, err := tx.Order.Update().Where(order.IDIn(b, c)).SetStatus(order.StatusCancelled).Save(ctx)
			if err != nil || n != 2 {
				return fmt.Errorf("bulk update: %d rows, %v", n, err)
			}
			if n, err := tx.Order.Delete().Where(order.ID(b)).Exec(ctx); err != nil || n != 1 {
				return fmt.Errorf("bulk delete: %d rows, %v", n, err)
			}
			return tx.Order.DeleteOneID(c).Exec(ctx)
		})
		if err != nil {
			t.Fatalf("Do: %v", err)
		}

		got := map[string][]string{}
		byID := map[string][]event{}
		for _, e := range events(t, db) {
			got[e.AggregateID] = append(got[e.AggregateID], e.Type)
			byID[e.AggregateID] = append(byID[e.AggregateID], e)
			if e.Payload.ID != e.AggregateID {
				t.Errorf("%s of %s carries id %q", e.Type, e.AggregateID, e.Payload.ID)
			}
		}
		sa, sb, sc := strconv.Itoa(a), strconv.Itoa(b), strconv.Itoa(c)
		want := map[string][]string{
			sa: {"OrderCreated", "OrderUpdated", "OrderUpdated"},
			sb: {"OrderCreated", "OrderUpdated", "OrderDeleted"},
			sc: {"OrderCreated", "OrderUpdated", "OrderDeleted"},
		}
		for id, types := range want {
			if !slices.Equal(got[id], types) {
				t.Errorf("events of order %s: %v, want %v", id, got[id], types)
			}
			for i, e := range byID[id] {
				if e.Sequence != int64(i+1) {
					t.Errorf("order %s: event %d has sequence %d", id, i+1, e.Sequence)
				}
			}
		}
		if len(got) != 3 {
			t.Errorf("events for %d aggregates, want 3: %v", len(got), got)
		}
		if t.Failed() {
			return
		}
		created, paid, added := byID[sa][0].Payload, byID[sa][1].Payload, byID[sa][2].Payload
		if created.Fields["customer"] != "a@example.com" || created.Fields["total_cents"] != float64(10) {
			t.Errorf("OrderCreated payload %s lacks the created fields", created.Raw)
		}
		if _, ok := created.Fields[aggregate.VersionField]; ok {
			t.Errorf("OrderCreated payload %s carries the version", created.Raw)
		}
		if paid.Fields["status"] != "paid" {
			t.Errorf("OrderUpdated payload %s lacks status=paid", paid.Raw)
		}
		if added.Added["total_cents"] != float64(5) || !slices.Contains(added.Cleared, "metadata") {
			t.Errorf("OrderUpdated payload %s of AddTotalCents(5).ClearMetadata() does not say total_cents +5 and metadata cleared", added.Raw)
		}
		if bulk := byID[sb][1].Payload; bulk.Fields["status"] != "cancelled" {
			t.Errorf("bulk OrderUpdated payload %s lacks status=cancelled", bulk.Raw)
		}
		if v, _, _ := row(t, db, a); v != 3 {
			t.Errorf("order a has version %d after two updates, want 3", v)
		}

		// Outside a unit of work: refused, and nothing changed.
		before := count(t, db, "SELECT COUNT(*) FROM orders")
		beforeEvents := count(t, db, "SELECT COUNT(*) FROM bento_outbox")
		_, err = client.Order.Create().SetCustomer("outside@example.com").SetTotalCents(1).Save(ctx)
		if !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Errorf("Create outside a unit of work returned %v, want ErrNoUnitOfWork", err)
		}
		if n := count(t, db, "SELECT COUNT(*) FROM orders WHERE customer = ?", "outside@example.com"); n != 0 {
			t.Errorf("the refused Create left %d rows: a change without its event committed", n)
		}
		_, err = client.Order.Update().Where(order.ID(a)).SetStatus(order.StatusCancelled).Save(ctx)
		if !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Errorf("bulk Update outside a unit of work returned %v, want ErrNoUnitOfWork", err)
		}
		_, err = client.Order.UpdateOneID(a).SetStatus(order.StatusCancelled).Save(ctx)
		if !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Errorf("UpdateOne outside a unit of work returned %v, want ErrNoUnitOfWork", err)
		}
		if _, _, status := row(t, db, a); status != "paid" {
			t.Errorf("the refused updates changed order a's status to %s", status)
		}
		_, err = client.Order.Delete().Where(order.ID(a)).Exec(ctx)
		if !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Errorf("Delete outside a unit of work returned %v, want ErrNoUnitOfWork", err)
		}
		// A collector that no transaction was begun with is no unit of
		// work either.
		cctx, _ := outbox.NewContext(ctx)
		if err := client.Order.DeleteOneID(a).Exec(cctx); !errors.Is(err, outbox.ErrNoUnitOfWork) {
			t.Errorf("DeleteOne with an unbound collector returned %v, want ErrNoUnitOfWork", err)
		}
		if after := count(t, db, "SELECT COUNT(*) FROM orders"); after != before {
			t.Errorf("orders went from %d to %d through refused mutations", before, after)
		}
		if after := count(t, db, "SELECT COUNT(*) FROM bento_outbox"); after != beforeEvents {
			t.Errorf("outbox rows went from %d to %d through refused mutations", beforeEvents, after)
		}
	})
}
