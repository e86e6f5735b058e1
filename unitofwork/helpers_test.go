package unitofwork_test

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
	"github.com/bento-go/bento/shop"
)

// env is one migrated test database opened through Bento, with the
// generated unit of work over it and the raw pool beneath it.
type env struct {
	t       testing.TB
	dialect string
	db      *bento.DB
	client  *ent.Client
	uow     *ent.UnitOfWork
	// raw is the database/sql pool under Bento's driver. Assertions count
	// rows through it, past every Bento layer.
	raw *sql.DB
}

// openEnv opens and migrates the database of cfg.
func openEnv(t testing.TB, cfg config.Config, opts ...bento.Option) *env {
	t.Helper()
	db, err := bento.Open(cfg, opts...)
	if err != nil {
		t.Fatalf("bento.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	return &env{t: t, dialect: db.Dialect(), db: db, client: client, uow: ent.NewUnitOfWork(client), raw: db.Driver().DB()}
}

// sql rewrites a query written with ? placeholders and `quoted`
// identifiers for the env's dialect.
func (e *env) sql(q string) string { return rebind(e.dialect, q) }

func rebind(dialect, q string) string {
	if dialect == testdb.MySQL {
		return q
	}
	q = strings.ReplaceAll(q, "`", `"`)
	if dialect != testdb.Postgres {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// count runs a SELECT COUNT(*)-like query on the raw pool.
func (e *env) count(q string, args ...any) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	if err := e.raw.QueryRowContext(ctx, e.sql(q), args...).Scan(&n); err != nil {
		e.t.Fatalf("counting with %q: %v", q, err)
	}
	return n
}

// orders counts the orders of a customer.
func (e *env) orders(customer string) int {
	e.t.Helper()
	return e.count("SELECT COUNT(*) FROM orders WHERE customer = ?", customer)
}

// events counts the outbox rows whose payload names the customer.
func (e *env) events(customer string) int {
	e.t.Helper()
	col := "payload"
	if e.dialect == testdb.Postgres {
		col = "payload::text"
	}
	return e.count("SELECT COUNT(*) FROM bento_outbox WHERE "+col+" LIKE ?", "%"+customer+"%")
}

// totals counts every order and every outbox row.
func (e *env) totals() (orders, events int) {
	e.t.Helper()
	return e.count("SELECT COUNT(*) FROM orders"), e.count("SELECT COUNT(*) FROM bento_outbox")
}

// expectRows fails unless the customer has exactly n orders and n events.
func (e *env) expectRows(customer string, n int) {
	e.t.Helper()
	if o, ev := e.orders(customer), e.events(customer); o != n || ev != n {
		e.t.Fatalf("%s: %d orders and %d outbox rows, want %d and %d", customer, o, ev, n, n)
	}
}

// place writes what shop.Service.Place writes: an order with one line and
// its OrderPlaced event.
func place(ctx context.Context, tx *ent.Client, customer string) (*ent.Order, error) {
	o, err := tx.Order.Create().SetCustomer(customer).SetTotalCents(2500).Save(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.OrderLine.Create().SetOrder(o).SetSku("SKU-1").SetQuantity(2).SetUnitPriceCents(1250).Save(ctx); err != nil {
		return nil, err
	}
	ev := shop.OrderPlaced{OrderID: o.ID, Customer: customer, TotalCents: 2500,
		Lines: []shop.Line{{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}}}
	if err := outbox.Raise(ctx, o, ev); err != nil {
		return nil, err
	}
	return o, nil
}

// queryInt reads one integer through the transaction-bound client (the
// generated ExecContext/QueryContext of the sql/execquery feature).
func queryInt(ctx context.Context, tx *ent.Client, q string) (int64, error) {
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var n int64
	if !rows.Next() {
		return 0, errors.Join(errors.New("no row"), rows.Err())
	}
	if err := rows.Scan(&n); err != nil {
		return 0, err
	}
	return n, rows.Err()
}

// queryString is queryInt for a text result.
func queryString(ctx context.Context, tx *ent.Client, q string) (string, error) {
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var s string
	if !rows.Next() {
		return "", errors.Join(errors.New("no row"), rows.Err())
	}
	if err := rows.Scan(&s); err != nil {
		return "", err
	}
	return s, rows.Err()
}
