package unitofwork_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/aggregate"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/unitofwork"
)

// The code in this file backs docs/unitofwork.md: every Go block of that
// page is a piece of this file (or of schema/order.go and ent/entc.go),
// which TestDocCodeBlocks checks.

// OrderPlaced is a domain event: any Go value with an EventType. Its JSON
// encoding becomes the outbox row's payload.
type OrderPlaced struct {
	OrderID  int    `json:"order_id"`
	Customer string `json:"customer"`
}

// EventType names the event in the outbox (and the broker subject).
func (OrderPlaced) EventType() string { return "OrderPlaced" }

// openShop opens a SQLite database in dir the way a service opens its
// database: configuration, bento.Open, Migrate, the generated client and
// its unit of work.
func openShop(ctx context.Context, dir string) (*bento.DB, *ent.Client, *ent.UnitOfWork, error) {
	cfg, err := config.Load(config.Source{Environ: func() []string {
		return []string{"DB_URL=sqlite://" + filepath.Join(dir, "shop.db")}
	}})
	if err != nil {
		return nil, nil, nil, err
	}
	db, err := bento.Open(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	// Creates the application's tables and Bento's (bento_outbox, …).
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		db.Close()
		return nil, nil, nil, err
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	// Registers the aggregate hooks on client; one unit of work per client.
	uow := ent.NewUnitOfWork(client)
	return db, client, uow, nil
}

// countRows counts the orders and outbox rows, for the examples' output.
func countRows(ctx context.Context, db *bento.DB) (orders, events int, typ string) {
	row := db.Driver().DB().QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM orders), COUNT(*), COALESCE(MAX("type"), '') FROM bento_outbox`)
	if err := row.Scan(&orders, &events, &typ); err != nil {
		log.Fatal(err)
	}
	return orders, events, typ
}

// tempDir is a temporary directory for one example's database.
func tempDir() (string, func()) {
	dir, err := os.MkdirTemp("", "bento-example-")
	if err != nil {
		log.Fatal(err)
	}
	return dir, func() { os.RemoveAll(dir) }
}

// Example places an order and records its event in one transaction.
func Example() {
	dir, cleanup := tempDir()
	defer cleanup()
	ctx := context.Background()
	db, _, uow, err := openShop(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx)
		if err != nil {
			return err
		}
		return outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID, Customer: o.Customer})
	})
	if err != nil {
		log.Fatal(err)
	}

	orders, events, typ := countRows(ctx, db)
	fmt.Printf("orders: %d, events: %d, type: %s\n", orders, events, typ)
	// Output: orders: 1, events: 1, type: OrderPlaced
}

// ExampleDeferWrites takes the id of the unit's new order before the unit
// runs, so that on PostgreSQL the order's insert, its event and COMMIT go
// to the server in one round trip. On SQLite (this example) and
// MySQL/MariaDB ids.New returns nil, Take hands out no ids, and the
// database assigns the id as usual.
func ExampleDeferWrites() {
	dir, cleanup := tempDir()
	defer cleanup()
	ctx := context.Background()
	db, _, uow, err := openShop(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// One Blocks for the process: it reads a hundred ids at a time.
	blocks := ids.New(db.Driver(), db.Dialect(), ids.DefaultBlock)

	id, err := blocks.Take(ctx, order.Table, 1)
	if err != nil {
		log.Fatal(err)
	}
	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		create := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500)
		if id != nil {
			create.SetID(id[0]) // inserted without RETURNING: it can wait for COMMIT
		}
		o, err := create.Save(ctx)
		if err != nil {
			return err // a deferred insert's failure is the commit's instead
		}
		return outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID, Customer: o.Customer})
	}, unitofwork.DeferWrites())
	if err != nil {
		log.Fatal(err)
	}

	orders, events, typ := countRows(ctx, db)
	fmt.Printf("orders: %d, events: %d, type: %s\n", orders, events, typ)
	// Output: orders: 1, events: 1, type: OrderPlaced
}

// ExampleDoValue returns the new order's id; with an idempotency key, a
// repeated call returns the first call's id and places nothing.
func ExampleDoValue() {
	dir, cleanup := tempDir()
	defer cleanup()
	ctx := context.Background()
	db, _, uow, err := openShop(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	placeOrder := func(requestID string) (int, error) {
		return unitofwork.DoValue(ctx, uow, func(ctx context.Context, tx *ent.Client) (int, error) {
			o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx)
			if err != nil {
				return 0, err
			}
			return o.ID, outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID, Customer: o.Customer})
		}, unitofwork.IdempotencyKey("place-order:"+requestID))
	}

	first, err := placeOrder("req-42")
	if err != nil {
		log.Fatal(err)
	}
	again, err := placeOrder("req-42") // a client retrying the same request
	if err != nil {
		log.Fatal(err)
	}
	orders, events, _ := countRows(ctx, db)
	fmt.Printf("first: %d, again: %d, orders: %d, events: %d\n", first, again, orders, events)
	// Output: first: 1, again: 1, orders: 1, events: 1
}

// addLine adds a line to an order. It runs in its own transaction when
// called alone, and joins the caller's when called inside a Do.
func addLine(ctx context.Context, uow *ent.UnitOfWork, orderID int, sku string) error {
	return uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		_, err := tx.OrderLine.Create().SetOrderID(orderID).SetSku(sku).SetQuantity(1).SetUnitPriceCents(100).Save(ctx)
		return err
	})
}

// ExampleUnitOfWork_Do_nested shows a Do inside a Do: the inner one joins
// the outer transaction, so the outer error undoes both.
func ExampleUnitOfWork_Do_nested() {
	dir, cleanup := tempDir()
	defer cleanup()
	ctx := context.Background()
	db, client, uow, err := openShop(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	errOutOfStock := errors.New("out of stock")
	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(200).Save(ctx)
		if err != nil {
			return err
		}
		if err := addLine(ctx, uow, o.ID, "SKU-1"); err != nil {
			return err
		}
		if err := addLine(ctx, uow, o.ID, "SKU-2"); err != nil {
			return err
		}
		return errOutOfStock // rolls back the order and both lines
	})
	fmt.Println("error:", err)
	fmt.Println("orders:", client.Order.Query().CountX(ctx), "lines:", client.OrderLine.Query().CountX(ctx))
	// Output:
	// error: out of stock
	// orders: 0 lines: 0
}

// ExampleUnitOfWork_Do_options sets the options of one Do; the same
// options given to ent.NewUnitOfWork become the defaults of every Do.
func ExampleUnitOfWork_Do_options() {
	dir, cleanup := tempDir()
	defer cleanup()
	ctx := context.Background()
	db, _, uow, err := openShop(ctx, dir)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// A write that must see a consistent snapshot, bounded in time, with
	// a patient retry policy.
	patient := resilience.DefaultPolicy()
	patient.MaxAttempts = 20
	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		o, err := tx.Order.Create().SetCustomer("a@example.com").SetTotalCents(2500).Save(ctx)
		if err != nil {
			return err
		}
		return outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID, Customer: o.Customer})
	},
		unitofwork.Isolation(sql.LevelSerializable),
		unitofwork.Timeout(5*time.Second),
		unitofwork.Retry(patient),
	)
	fmt.Println("serializable write:", err)

	// A report: read-only, run once.
	var n int
	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		n, err = tx.Order.Query().Count(ctx)
		return err
	}, unitofwork.ReadOnly(), unitofwork.NoRetry())
	fmt.Println("read-only count:", n, err)

	// A unit that outlives its timeout is rolled back.
	err = uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		if _, err := tx.Order.Create().SetCustomer("slow@example.com").SetTotalCents(1).Save(ctx); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond) // too slow
		return nil
	}, unitofwork.Timeout(100*time.Millisecond))
	fmt.Println("timed out:", errors.Is(err, context.DeadlineExceeded))
	orders, _, _ := countRows(ctx, db)
	fmt.Println("orders:", orders)
	// Output:
	// serializable write: <nil>
	// read-only count: 1 <nil>
	// timed out: true
	// orders: 1
}

// checkout is a use case. It depends only on the unit-of-work port, so
// its tests can give it a fake.
type checkout struct {
	uow unitofwork.Port[*ent.Client]
}

// Place places an order; retryable failures were already retried by the
// unit of work.
func (c checkout) Place(ctx context.Context, customer string) error {
	err := c.uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
		o, err := tx.Order.Create().SetCustomer(customer).SetTotalCents(2500).Save(ctx)
		if err != nil {
			return err
		}
		return outbox.Raise(ctx, o, OrderPlaced{OrderID: o.ID, Customer: customer})
	})
	switch {
	case errors.Is(err, resilience.ErrCommitUnknown):
		// The COMMIT's reply was lost and the outcome could not be
		// resolved: the order may exist. Retry with an idempotency key,
		// or tell the caller to check.
		return fmt.Errorf("placing the order: outcome unknown: %w", err)
	case errors.Is(err, aggregate.ErrConflict):
		// Still conflicting after every retry: a hot aggregate.
		return fmt.Errorf("placing the order: too much contention: %w", err)
	case err != nil:
		return fmt.Errorf("placing the order: %w", err)
	}
	return nil
}

// ExampleFunc fakes the port in a test of application code: no database,
// no transaction.
func ExampleFunc() {
	calls := 0
	fake := unitofwork.Func[*ent.Client](func(ctx context.Context, fn func(context.Context, *ent.Client) error, opts ...unitofwork.Option) error {
		calls++
		return &resilience.Error{Category: resilience.Ambiguous, Op: "commit", Err: errors.New("connection reset")}
	})
	err := checkout{uow: fake}.Place(context.Background(), "a@example.com")
	fmt.Println(calls, err)
	// Output: 1 placing the order: outcome unknown: ambiguous error in commit: connection reset
}
