package bento_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"entgo.io/ent/dialect"

	"github.com/bento-go/bento"
	"github.com/bento-go/bento/config"
	"github.com/bento-go/bento/ent/migrate"
	"github.com/bento-go/bento/internal/testdb"
)

// TestMigrateNeedsTwoConnections: on PostgreSQL and MySQL Migrate holds its
// advisory lock on one connection and migrates on another, so a pool of
// one connection gets a clear error at once, not a pool timeout; SQLite
// takes no lock.
func TestMigrateNeedsTwoConnections(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		cfg.DB.PoolSize, cfg.DB.MaxOverflow, cfg.DB.PoolTimeout = 1, 0, 10*time.Second
		db, err := bento.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		start := time.Now()
		err = db.Migrate(context.Background(), migrate.Tables...)
		if db.Dialect() == dialect.SQLite {
			if err != nil {
				t.Fatalf("Migrate on SQLite: %v", err)
			}
			return
		}
		if err == nil || !strings.Contains(err.Error(), "Migrate needs 2") || !strings.Contains(err.Error(), "DB_POOL_SIZE") {
			t.Fatalf("Migrate with a pool of 1 = %v, want the two-connection error", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("the error took %s: it waited for the pool instead of saying so at once", took)
		}
	})
}
