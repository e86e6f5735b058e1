package bento_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"entgo.io/ent/dialect/sql/schema"

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

// TestDropAllFailureRestoresForeignKeys: when a DROP fails, DropAll turns
// foreign key checks back on before the connection returns to the pool
// (MySQL's FOREIGN_KEY_CHECKS, SQLite's PRAGMA foreign_keys). The pool has
// one connection, so the query after DropAll runs on the connection
// DropAll used (or on a fresh one, had it been discarded), and it must see
// the checks on. Each dialect gets a table name its server refuses to
// drop: longer than MySQL's 64 characters, SQLite's sqlite_master, a
// PostgreSQL system catalog.
func TestDropAllFailureRestoresForeignKeys(t *testing.T) {
	testdb.Each(t, func(t *testing.T, cfg config.Config) {
		cfg.DB.PoolSize, cfg.DB.MaxOverflow, cfg.DB.PoolTimeout = 1, 0, 5*time.Second
		db, err := bento.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		ctx := context.Background()
		probe := map[string]struct{ bad, check string }{
			dialect.MySQL:    {strings.Repeat("x", 65), "SELECT @@FOREIGN_KEY_CHECKS"},
			dialect.SQLite:   {"sqlite_master", "PRAGMA foreign_keys"},
			dialect.Postgres: {"pg_class", "SELECT 1"}, // no session setting to restore
		}[db.Dialect()]
		bad, check := probe.bad, probe.check
		err = db.DropAll(ctx, bento.IReallyWantToDropAllTables, &schema.Table{Name: bad})
		if err == nil || !strings.Contains(err.Error(), "DROP TABLE") {
			t.Fatalf("DropAll with table %q = %v, want the DROP's error", bad, err)
		}
		var rows entsql.Rows
		if err := db.Driver().Query(ctx, check, []any{}, &rows); err != nil {
			t.Fatalf("%s after the failed DropAll: %v", check, err)
		}
		defer rows.Close()
		var on int
		if !rows.Next() {
			t.Fatalf("%s returned no row", check)
		}
		if err := rows.Scan(&on); err != nil {
			t.Fatal(err)
		}
		if on != 1 {
			t.Fatalf("%s = %d after a failed DropAll: the pool handed out a connection with foreign key checks off", check, on)
		}
	})
}
