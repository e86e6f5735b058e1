package bento_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	atlasmigrate "ariga.io/atlas/sql/migrate"
	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql/schema"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/ent/order"
	"github.com/bento-go/bento/internal/testdb"
)

// open opens a migrated test database and its ent client.
func open(t *testing.T, cfg config.Config, opts ...bento.Option) (*bento.DB, *ent.Client) {
	t.Helper()
	db, err := bento.Open(cfg, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	ctx := context.Background()
	if err := db.Migrate(ctx, migrate.Tables...); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return db, ent.NewClient(ent.Driver(db.Driver()))
}

func placeOrder(t *testing.T, ctx context.Context, c *ent.Client, customer string) *ent.Order {
	t.Helper()
	o, err := c.Order.Create().SetCustomer(customer).SetTotalCents(2500).
		SetMetadata(map[string]string{"channel": "web"}).Save(ctx)
	if err != nil {
		t.Fatalf("creating order: %v", err)
	}
	if _, err := c.OrderLine.Create().SetOrder(o).SetSku("SKU-1").SetQuantity(2).SetUnitPriceCents(1250).Save(ctx); err != nil {
		t.Fatalf("creating line: %v", err)
	}
	return o
}

func TestConformance(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		ctx := context.Background()
		db, client := open(t, cfg)

		t.Run("Health", func(t *testing.T) {
			if err := db.Health(ctx, 0); err != nil {
				t.Fatalf("Health: %v", err)
			}
		})

		t.Run("CRUD", func(t *testing.T) {
			o := placeOrder(t, ctx, client, "crud@example.com")
			got, err := client.Order.Query().Where(order.ID(o.ID)).WithLines().Only(ctx)
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			if got.Customer != "crud@example.com" || got.Status != order.StatusPending || len(got.Edges.Lines) != 1 {
				t.Fatalf("read back %+v with %d lines", got, len(got.Edges.Lines))
			}
			if got.Metadata["channel"] != "web" {
				t.Fatalf("metadata = %v", got.Metadata)
			}
			if _, err := client.Order.UpdateOne(got).SetStatus(order.StatusPaid).Save(ctx); err != nil {
				t.Fatalf("update: %v", err)
			}
			if n, err := client.Order.Query().Where(order.StatusEQ(order.StatusPaid), order.ID(o.ID)).Count(ctx); err != nil || n != 1 {
				t.Fatalf("paid count = %d, %v", n, err)
			}
			if err := client.Order.DeleteOneID(o.ID).Exec(ctx); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if n, err := client.OrderLine.Query().Count(ctx); err != nil || n != 0 {
				t.Fatalf("lines after cascade delete = %d, %v", n, err)
			}
		})

		t.Run("TransactionRollback", func(t *testing.T) {
			tx, err := client.Tx(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Order.Create().SetCustomer("rollback@example.com").SetTotalCents(1).Save(ctx); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if n := client.Order.Query().Where(order.Customer("rollback@example.com")).CountX(ctx); n != 0 {
				t.Fatalf("rolled-back order is visible: %d rows", n)
			}
			if err := tx.Rollback(); err == nil {
				t.Fatal("second Rollback succeeded; want sql.ErrTxDone")
			}
		})

		t.Run("ForeignKeysEnforced", func(t *testing.T) {
			_, err := client.OrderLine.Create().SetOrderID(987654321).SetSku("X").SetQuantity(1).SetUnitPriceCents(1).Save(ctx)
			if err == nil {
				t.Fatal("an order line for a missing order was accepted: foreign keys are not enforced")
			}
			if !ent.IsConstraintError(err) {
				t.Fatalf("error is not a constraint error: %v", err)
			}
		})

		t.Run("MigrateTwiceIsNoOp", func(t *testing.T) {
			if err := db.Migrate(ctx, migrate.Tables...); err != nil {
				t.Fatalf("second Migrate: %v", err)
			}
			changes := countPlannedChanges(t, db)
			if changes != 0 {
				t.Fatalf("schema is up to date but a migration would apply %d changes", changes)
			}
		})

		t.Run("PoolTimeoutHonoured", func(t *testing.T) {
			c := cfg
			c.DB.PoolSize, c.DB.MaxOverflow, c.DB.PoolTimeout = 1, 0, 300*time.Millisecond
			small, err := bento.Open(c)
			if err != nil {
				t.Fatal(err)
			}
			defer small.Close()
			if small.Pool().Stats().MaxOpen != 1 && db.Dialect() != testdb.SQLite {
				t.Fatalf("max open = %d, want 1", small.Pool().Stats().MaxOpen)
			}
			sc := ent.NewClient(ent.Driver(small.Driver()))
			// Hold every connection of the pool (SQLite: its one write
			// slot) with open transactions.
			var held []*ent.Tx
			defer func() {
				for _, tx := range held {
					tx.Rollback()
				}
			}()
			n := small.Pool().Stats().MaxOpen
			if small.Capabilities().SingleWriter {
				n = 1
			}
			for i := 0; i < n; i++ {
				tx, err := sc.Tx(ctx)
				if err != nil {
					t.Fatalf("tx %d: %v", i, err)
				}
				held = append(held, tx)
			}
			start := time.Now()
			if small.Capabilities().SingleWriter {
				_, err = sc.Order.Create().SetCustomer("blocked@example.com").SetTotalCents(1).Save(ctx)
			} else {
				_, err = sc.Order.Query().Count(ctx)
			}
			took := time.Since(start)
			if !errors.Is(err, driver.ErrPoolTimeout) {
				t.Fatalf("query on an exhausted pool: err = %v, want a pool timeout", err)
			}
			if took < 300*time.Millisecond || took > 3*time.Second {
				t.Fatalf("pool timeout after %s, want about 300ms", took)
			}
			if !strings.Contains(err.Error(), "pool timeout") {
				t.Fatalf("error does not say pool timeout: %v", err)
			}
			if small.Pool().Stats().Timeouts != 1 {
				t.Fatalf("stats timeouts = %d, want 1", small.Pool().Stats().Timeouts)
			}
		})

		t.Run("Info", func(t *testing.T) {
			info, err := db.Info(ctx)
			if err != nil {
				t.Fatalf("Info: %v", err)
			}
			if info.Dialect != db.Dialect() || info.ServerVersion == "" || info.URL == "" {
				t.Fatalf("info = %+v", info)
			}
		})

		t.Run("DropAll", func(t *testing.T) {
			if err := db.DropAll(ctx, "yes", migrate.Tables...); err == nil {
				t.Fatal("DropAll without confirmation succeeded")
			}
			if n := client.Order.Query().CountX(ctx); n < 0 {
				t.Fatal("unreachable")
			}
			if err := db.DropAll(ctx, bento.IReallyWantToDropAllTables, migrate.Tables...); err != nil {
				t.Fatalf("DropAll: %v", err)
			}
			if _, err := client.Order.Query().Count(ctx); err == nil {
				t.Fatal("orders still queryable after DropAll")
			}
			if err := db.Migrate(ctx, migrate.Tables...); err != nil {
				t.Fatalf("Migrate after DropAll: %v", err)
			}
		})
	})
}

// countPlannedChanges returns how many changes a migration of the reference
// schema would apply now.
func countPlannedChanges(t *testing.T, db *bento.DB) int {
	t.Helper()
	var n int
	m, err := schema.NewMigrate(db.Driver(), schema.WithForeignKeys(true), schema.WithApplyHook(func(next schema.Applier) schema.Applier {
		return schema.ApplyFunc(func(ctx context.Context, conn dialect.ExecQuerier, plan *atlasmigrate.Plan) error {
			n = len(plan.Changes)
			return next.Apply(ctx, conn, plan)
		})
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Create(context.Background(), migrate.Tables...); err != nil {
		t.Fatalf("planning: %v", err)
	}
	return n
}

func TestEchoLogsStatementsWithoutSecrets(t *testing.T) {
	cfg := testdb.Config(t, testdb.SQLite)
	cfg.DB.Echo = true
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, client := open(t, cfg, bento.WithLogger(logger))
	ctx := context.Background()
	placeOrder(t, ctx, client, "echo@example.com")
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if !strings.Contains(out, "INSERT INTO") || !strings.Contains(out, "echo@example.com") {
		t.Fatalf("echo did not log the insert and its arguments:\n%s", out)
	}
	if strings.Contains(out, "file:") || strings.Contains(out, "_pragma") {
		t.Fatalf("echo logged the DSN:\n%s", out)
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
