package shop_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/consumer"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/resilience"
	"github.com/bento-go/bento/shop"
)

// TestSummaryProjection applies the projection's handlers directly (the
// consumer's part is tested in package consumer) and reads the result
// over HTTP: counts and spending as the events say; an order paid or
// cancelled that was never placed, or settled twice, is a permanent error;
// an unknown customer is 404, an over-long one 400.
func TestSummaryProjection(t *testing.T) {
	db, err := bento.Open(testdb.Config(t, testdb.SQLite))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatal(err)
	}
	client := ent.NewClient(ent.Driver(db.Driver()))
	uow := ent.NewUnitOfWork(client)
	apply := func(fn func(ctx context.Context, tx *ent.Client) error) error { return uow.Do(ctx, fn) }
	var m consumer.Metadata
	for _, ev := range []shop.OrderPlaced{{OrderID: 1, Customer: "a@example.com", TotalCents: 1000},
		{OrderID: 2, Customer: "a@example.com", TotalCents: 300}, {OrderID: 3, Customer: "a@example.com", TotalCents: 50}} {
		if err := apply(func(ctx context.Context, tx *ent.Client) error { return shop.ApplyOrderPlaced(ctx, tx, ev, m) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := apply(func(ctx context.Context, tx *ent.Client) error {
		return shop.ApplyOrderPaid(ctx, tx, shop.OrderPaid{OrderID: 1, TotalCents: 1000}, m)
	}); err != nil {
		t.Fatal(err)
	}
	if err := apply(func(ctx context.Context, tx *ent.Client) error {
		return shop.ApplyOrderCancelled(ctx, tx, shop.OrderCancelled{OrderID: 2}, m)
	}); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(ctx context.Context, tx *ent.Client) error{
		"paid, never placed": func(ctx context.Context, tx *ent.Client) error {
			return shop.ApplyOrderPaid(ctx, tx, shop.OrderPaid{OrderID: 9}, m)
		},
		"paid after cancelled": func(ctx context.Context, tx *ent.Client) error {
			return shop.ApplyOrderPaid(ctx, tx, shop.OrderPaid{OrderID: 2}, m)
		},
	} {
		if err := apply(bad); resilience.Classify(err) != resilience.Permanent {
			t.Errorf("%s: %v, want a permanent error", name, err)
		}
	}

	srv := httptest.NewServer(shop.NewHandler(shop.NewService(uow, client), shop.HTTPOptions{}))
	defer srv.Close()
	get := func(customer string) (int, shop.Summary) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/customers/" + customer + "/summary")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s shop.Summary
		_ = json.NewDecoder(resp.Body).Decode(&s)
		return resp.StatusCode, s
	}
	code, s := get("a@example.com")
	if code != http.StatusOK || s.OrdersPlaced != 3 || s.OrdersPaid != 1 || s.OrdersCancelled != 1 || s.TotalSpentCents != 1000 {
		t.Errorf("summary: %d %+v; want 200, 3 placed, 1 paid, 1 cancelled, 1000 cents", code, s)
	}
	if code, _ := get("b@example.com"); code != http.StatusNotFound {
		t.Errorf("unknown customer: %d, want 404", code)
	}
	if code, _ := get(strings.Repeat("x", 400) + "@example.com"); code != http.StatusBadRequest {
		t.Errorf("over-long customer: %d, want 400", code)
	}
}
