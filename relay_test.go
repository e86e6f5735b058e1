package bento_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"entgo.io/ent/dialect"

	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/driver"
	"github.com/bento-go/bento/ent"
	"github.com/bento-go/bento/internal/testdb"
	"github.com/bento-go/bento/outbox"
)

type testEvent struct {
	N int `json:"n"`
}

func (testEvent) EventType() string { return "TestEvent" }

// TestRelayOwnConnection: with OUTBOX_OWN_CONNECTION (the default) a relay
// on PostgreSQL or MySQL publishes while the application holds every
// connection of the main pool, and its pool closes with it; with the
// setting off it shares the pool and waits like any caller (a pool
// timeout here). SQLite relays always share the pool.
//
// Invariant: the event committed before the pool filled up is published
// exactly once by the relay with its own connection.
func TestRelayOwnConnection(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		// Two connections: Migrate holds its lock on one and works on the other.
		cfg.DB.PoolSize, cfg.DB.MaxOverflow, cfg.DB.PoolTimeout = 2, 0, 300*time.Millisecond
		for _, own := range []bool{true, false} {
			t.Run(fmt.Sprintf("own=%t", own), func(t *testing.T) {
				cfg := cfg
				cfg.Outbox.OwnConnection = own
				ctx := context.Background()
				db, client := open(t, cfg)
				uow := ent.NewUnitOfWork(client)
				if err := uow.Do(ctx, func(ctx context.Context, tx *ent.Client) error {
					return outbox.Record(ctx, "Test", "1", testEvent{N: 1})
				}); err != nil {
					t.Fatalf("recording the event: %v", err)
				}

				pub := outbox.NewChannelPublisher(10)
				rc := db.RelayConfig()
				rc.Wake = make(chan struct{})
				relay, err := db.NewRelay(pub, rc)
				if err != nil {
					t.Fatalf("NewRelay: %v", err)
				}
				shared := db.Dialect() == dialect.SQLite || !own
				if got := relay.Pool() == db.Pool(); got != shared {
					t.Fatalf("relay shares the main pool: %t, want %t", got, shared)
				}
				if !shared && relay.Pool().Role() != "relay" {
					t.Fatalf("relay pool role %q, want relay", relay.Pool().Role())
				}
				if db.Dialect() == dialect.Postgres {
					// The relay's own connection starts with the batch
					// settings; the application's keeps the server's.
					want := map[bool]string{true: "on", false: "off"}[shared]
					if got := showSetting(t, relay.Pool().DB(), "synchronous_commit"); got != want {
						t.Fatalf("synchronous_commit on the relay's pool = %q, want %q", got, want)
					}
					if got := showSetting(t, db.Driver().DB(), "synchronous_commit"); got != "on" {
						t.Fatalf("synchronous_commit on the main pool = %q, want on", got)
					}
				}

				// The application takes every connection of the main pool.
				var held []dialect.Tx
				for range 2 {
					tx, err := db.Driver().BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
					if err != nil {
						t.Fatalf("holding the main pool: %v", err)
					}
					held = append(held, tx)
				}
				res, err := relay.RunOnce(ctx)
				for _, tx := range held {
					_ = tx.Rollback()
				}
				if shared {
					if !errors.Is(err, driver.ErrPoolTimeout) {
						t.Fatalf("a relay sharing a full pool: RunOnce = %+v, %v; want a pool timeout", res, err)
					}
					relay.Close()
					return
				}
				if err != nil || res.Published != 1 {
					t.Fatalf("RunOnce with the main pool full = %+v, %v; want 1 published", res, err)
				}
				if n := len(pub.C()); n != 1 {
					t.Fatalf("%d messages published, want 1", n)
				}
				var pending int
				if err := db.Driver().DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM bento_outbox WHERE status = 'pending'").Scan(&pending); err != nil || pending != 0 {
					t.Fatalf("pending rows after the relay: %d, %v", pending, err)
				}
				relay.Close()
				if err := relay.Pool().DB().PingContext(ctx); err == nil || !errors.Is(err, sql.ErrConnDone) && err.Error() != "sql: database is closed" {
					t.Fatalf("the relay's pool after Close: ping = %v, want it closed", err)
				}
			})
		}
	})
}

func showSetting(t *testing.T, db *sql.DB, name string) string {
	t.Helper()
	var v string
	if err := db.QueryRow("SHOW " + name).Scan(&v); err != nil {
		t.Fatalf("SHOW %s: %v", name, err)
	}
	return v
}
