package bento_test

import (
	"context"
	"database/sql"
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
		bad := map[string]string{
			dialect.MySQL:    strings.Repeat("x", 65),
			dialect.SQLite:   "sqlite_master",
			dialect.Postgres: "pg_class",
		}[db.Dialect()]
		err = db.DropAll(ctx, bento.IReallyWantToDropAllTables, &schema.Table{Name: bad})
		if err == nil || !strings.Contains(err.Error(), "DROP TABLE") {
			t.Fatalf("DropAll with table %q = %v, want the DROP's error", bad, err)
		}
		requireForeignKeysOn(t, db, "a failed DropAll")
	})
}

// requireForeignKeysOn fails t unless the next connection db's pool hands
// out has foreign key checks on (MySQL's FOREIGN_KEY_CHECKS, SQLite's
// PRAGMA foreign_keys; PostgreSQL has no such session setting, and only
// the query is checked).
func requireForeignKeysOn(t *testing.T, db *bento.DB, after string) {
	t.Helper()
	check := map[string]string{
		dialect.MySQL: "SELECT @@FOREIGN_KEY_CHECKS", dialect.SQLite: "PRAGMA foreign_keys", dialect.Postgres: "SELECT 1",
	}[db.Dialect()]
	var rows entsql.Rows
	if err := db.Driver().Query(context.Background(), check, []any{}, &rows); err != nil {
		t.Fatalf("%s after %s: %v", check, after, err)
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
		t.Fatalf("%s = %d after %s: the pool handed out a connection with foreign key checks off", check, on, after)
	}
}

// TestDropAllCancelledRestoresForeignKeys: a DropAll whose context ends
// while a DROP waits for a lock (another session holds the table) still
// leaves no connection with foreign key checks off in the pool. On SQLite
// the connection survives the interruption and the checks are turned back
// on over a context the cancellation does not reach; on MariaDB the driver
// closes a connection whose statement was cancelled, so turning the checks
// back on fails and DropAll discards the connection (its error says so).
// Either way the next query, on the pool of one, sees the checks on.
func TestDropAllCancelledRestoresForeignKeys(t *testing.T) {
	for _, d := range []string{testdb.SQLite, testdb.MySQL} {
		t.Run(d, func(t *testing.T) {
			cfg := testdb.Config(t, d)
			cfg.DB.PoolSize, cfg.DB.MaxOverflow, cfg.DB.PoolTimeout = 1, 0, 10*time.Second
			// The session that holds the table: a plain connection on
			// MariaDB; on SQLite another pool on the file, as another
			// process would have.
			var raw *sql.DB
			if d == testdb.SQLite {
				other, err := bento.Open(cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
				raw = other.Pool().DB()
			} else {
				raw = testdb.OpenRaw(t, cfg.DB.URL.Secret())
			}
			ctx := context.Background()
			if _, err := raw.ExecContext(ctx, "CREATE TABLE held (id INT)"); err != nil {
				t.Fatal(err)
			}
			holder, err := raw.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			lock, unlock := "LOCK TABLES held READ", "UNLOCK TABLES"
			if d == testdb.SQLite {
				lock, unlock = "BEGIN IMMEDIATE", "ROLLBACK"
			}
			if _, err := holder.ExecContext(ctx, lock); err != nil {
				t.Fatal(err)
			}
			db, err := bento.Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			err = db.DropAll(dctx, bento.IReallyWantToDropAllTables, &schema.Table{Name: "held"})
			took := time.Since(start)
			if _, uerr := holder.ExecContext(ctx, unlock); uerr != nil {
				t.Fatal(uerr)
			}
			if err == nil {
				t.Fatal("DropAll succeeded while another session held the table")
			}
			if took > 5*time.Second {
				t.Fatalf("DropAll took %s with a 500 ms context", took)
			}
			t.Logf("DropAll after %s: %v", took.Round(time.Millisecond), err)
			requireForeignKeysOn(t, db, "a cancelled DropAll")
		})
	}
}
