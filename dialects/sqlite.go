package dialects

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/ncruces/go-sqlite3/driver"
	_ "github.com/ncruces/go-sqlite3/vfs/memdb" // registers the memdb VFS for :memory:

	"github.com/bento-go/bento/config"
)

// sqliteCapabilities are SQLite's (3.35+ for RETURNING).
var sqliteCapabilities = Capabilities{JSONType: "json", Returning: true, SingleWriter: true}

// SQLiteMaxOpen is the connection limit of a SQLite database. Writers take
// the file's write lock one at a time and the driver queues them in Go
// (Capabilities.SingleWriter), so one connection writes while the other
// serves readers. Measured with 16 concurrent writers (docs/benchmarks/history.md,
// BenchmarkSQLiteWriters): 2 gives the best write throughput with zero
// SQLITE_BUSY, and keeps reads flowing beside the writer.
const SQLiteMaxOpen = 2

// SQLiteDSN turns the configuration into an ncruces DSN: busy_timeout first
// (any _pragma drops the driver's default busy timeout), then
// foreign_keys(1) (ent's migration refuses without it), WAL,
// synchronous(normal), and _txlock=immediate so a write transaction takes
// the write lock when it begins and never fails with BUSY_SNAPSHOT later.
// Pragmas and parameters in the URL come after these and win. An in-memory
// database is a memdb database with a unique name, shared by every
// connection of the pool.
func SQLiteDSN(cfg config.DB) (string, error) {
	u := cfg.URL
	q := u.Query()
	pragmas := []string{fmt.Sprintf("busy_timeout(%d)", cfg.PoolTimeout.Milliseconds()), "foreign_keys(1)"}
	var path string
	if u.Memory() {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		path = "/bento-" + hex.EncodeToString(b[:])
		q.Set("vfs", "memdb")
	} else {
		pragmas = append(pragmas, "journal_mode(wal)", "synchronous(normal)")
		path = u.Path()
		if dir := filepath.Dir(path); dir != "." {
			if _, err := os.Stat(dir); err != nil {
				return "", urlError(cfg, fmt.Sprintf("directory %s does not exist", dir), "a file path in an existing directory")
			}
		}
	}
	q["_pragma"] = append(pragmas, q["_pragma"]...)
	if q.Get("_txlock") == "" {
		q.Set("_txlock", "immediate")
	}
	return "file:" + escapePath(path) + "?" + q.Encode(), nil
}

// escapePath escapes what would end the path part of a file: URI.
func escapePath(p string) string {
	r := strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23")
	return r.Replace(filepath.ToSlash(p))
}

func openSQLite(cfg config.DB, _ Options) (*Database, error) {
	dsn, err := SQLiteDSN(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := url.Parse(dsn); err != nil {
		return nil, urlError(cfg, err.Error(), "sqlite://path.db")
	}
	db, err := driver.Open(dsn)
	if err != nil {
		return nil, urlError(cfg, err.Error(), "sqlite://path.db with ncruces/go-sqlite3 parameters (_pragma, _txlock, _timefmt)")
	}
	// Server pool knobs do not apply to an embedded file. Connections are
	// kept (not closed after use: that made inserts 54x slower) and never
	// recycled.
	db.SetMaxOpenConns(SQLiteMaxOpen)
	db.SetMaxIdleConns(SQLiteMaxOpen)
	db.SetConnMaxLifetime(0)
	return &Database{
		Dialect: config.SQLite, DB: db, MaxOpen: SQLiteMaxOpen, KeepIdle: SQLiteMaxOpen,
		Capabilities: sqliteCapabilities,
		VersionQuery: "SELECT sqlite_version()",
	}, nil
}
