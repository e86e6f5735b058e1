package pgxfloor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ids"
	"github.com/bento-go/bento/internal/pgxfloor"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/shop"
)

// TestPlace: orders placed by the floor from several goroutines are in the
// database whole, each with its line and its OrderPlaced outbox row, the
// first event of its aggregate. Invariant, counted in the tables: one
// order, one line and one event per acknowledged Place, none more.
func TestPlace(t *testing.T) {
	ctx := context.Background()
	cfg := testdb.Config(t, testdb.Postgres)
	db, err := bento.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxfloor.NewPool(ctx, cfg.DB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pgxfloor.New(pool, nil, db.Names()); err == nil {
		t.Fatal("New without id blocks: no error")
	}
	p, err := pgxfloor.New(pool, ids.New(db.Driver(), db.Dialect(), 5), db.Names())
	if err != nil {
		t.Fatal(err)
	}
	line := shop.Line{SKU: "SKU-1", Quantity: 2, UnitPriceCents: 1250}
	const workers, each = 4, 10
	var mu sync.Mutex
	placed := map[int]string{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				customer := fmt.Sprintf("floor-%d-%d@example.com", w, i)
				id, err := p.Place(ctx, customer, line)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				placed[id] = customer
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(placed) != workers*each {
		t.Fatalf("%d distinct orders acknowledged, want %d", len(placed), workers*each)
	}
	raw := db.Driver().DB()
	var orders, lines int
	if err := raw.QueryRowContext(ctx, "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM order_lines)").Scan(&orders, &lines); err != nil {
		t.Fatal(err)
	}
	if orders != len(placed) || lines != len(placed) {
		t.Fatalf("%d orders and %d lines in the database, want %d of each", orders, lines, len(placed))
	}
	rows, err := raw.QueryContext(ctx, "SELECT e.aggregateid, e.sequence, e.type, e.payload, o.customer, l.quantity FROM "+db.Names().Outbox+
		" e JOIN orders o ON o.id::text = e.aggregateid JOIN order_lines l ON l.order_lines = o.id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	events := 0
	for rows.Next() {
		var aggID, typ, customer string
		var seq int64
		var payload []byte
		var qty int
		if err := rows.Scan(&aggID, &seq, &typ, &payload, &customer, &qty); err != nil {
			t.Fatal(err)
		}
		events++
		id, _ := strconv.Atoi(aggID)
		var ev shop.OrderPlaced
		if err := json.Unmarshal(payload, &ev); err != nil {
			t.Fatalf("event of order %s: %v", aggID, err)
		}
		if placed[id] != customer || ev.OrderID != id || ev.Customer != customer || seq != 1 || typ != "OrderPlaced" || qty != line.Quantity {
			t.Errorf("order %d (placed for %q): event %s seq %d %+v, customer %q, quantity %d", id, placed[id], typ, seq, ev, customer, qty)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if events != len(placed) {
		t.Fatalf("%d events joined to their order and line, want %d", events, len(placed))
	}
}
