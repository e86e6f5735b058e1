package outbox_test

import (
	"context"
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

// TestIdempotencyKeyRetention: Cleanup deletes idempotency keys older than
// IdempotencyRetention and keeps younger ones (counted in the table).
func TestIdempotencyKeyRetention(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		db, err := bento.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Migrate(ctx, migrate.Tables...); err != nil {
			t.Fatal(err)
		}
		client := ent.NewClient(ent.Driver(db.Driver()))
		svc := shop.NewService(ent.NewUnitOfWork(client), client)
		for _, key := range []string{"old", "young"} {
			if _, err := svc.Place(ctx, shop.PlaceOrder{Customer: "k@example.com", Lines: []shop.Line{{SKU: "S", Quantity: 1, UnitPriceCents: 1}}}, key); err != nil {
				t.Fatal(err)
			}
		}
		q := "UPDATE bento_outbox_idempotency SET created_at = ? WHERE idempotency_key = ?"
		if db.Dialect() == testdb.Postgres {
			q = "UPDATE bento_outbox_idempotency SET created_at = $1 WHERE idempotency_key = $2"
		}
		if _, err := db.Driver().ExecContext(ctx, q, time.Now().Add(-48*time.Hour).UTC(), "order:old"); err != nil {
			t.Fatal(err)
		}
		rc := db.RelayConfig()
		rc.IdempotencyRetention = 24 * time.Hour
		r, err := db.NewRelay(outbox.NewChannelPublisher(10), rc)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		n, err := r.Cleanup(ctx)
		if err != nil || n != 1 {
			t.Fatalf("Cleanup deleted %d rows (%v), want the 1 old key", n, err)
		}
		rows, err := db.Driver().QueryContext(ctx, "SELECT idempotency_key FROM bento_outbox_idempotency")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var keys []string
		for rows.Next() {
			var k string
			rows.Scan(&k)
			keys = append(keys, k)
		}
		if len(keys) != 1 || keys[0] != "order:young" {
			t.Fatalf("keys left: %v, want [order:young]", keys)
		}
	})
}
